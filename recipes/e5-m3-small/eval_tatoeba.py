"""Tatoeba bitext retrieval: top-1 accuracy per language pair and per M3 mode (MTEB's bitext-mining metric).

For each `tatoeba/XXX-eng` set, the 1,000 non-English sentences are the queries and the 1,000 English sentences
the candidates; line i translates line i. Every candidate is scored exhaustively (no index):
dense = inner product, sparse = lexical score, colbert = MaxSim, and the hybrids with the model's search weights
(dense, sparse, colbert), or --weights (BGE-M3's 0.4, 0.2, 0.4 for a model without its own): dense+sparse =
wd·d + ws·s, all = wd·d + ws·s + wc·c.
Accuracy = share of queries whose best candidate is their translation.

Both sides are encoded as queries (`encode_queries`): bitext mining is symmetric, and the e5 model card asks
for the "query: " prompt on both sides of symmetric tasks.

    python recipes/e5-m3-small/eval_tatoeba.py --model e5-m3-small --out runs/e5-m3-small/eval/tatoeba/e5-m3-small
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from m3embed.model import M3Model

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tatoeba"
PAIRS = ("deu", "fra", "spa", "rus", "cmn", "jpn", "ara", "kor", "ita", "por")


def read_texts(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    return [r["id"] for r in rows], [r["text"] for r in rows]


def maxsim_matrix(queries: list[np.ndarray], docs: list[np.ndarray], chunk: int = 64) -> np.ndarray:
    """(m, n) ColBERT scores: for every query, the mean over its vectors of the max similarity within each doc."""
    stacked = np.concatenate(docs)  # (N_tok, h)
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    out = np.zeros((len(queries), len(docs)), dtype=np.float32)
    for a in range(0, len(queries), chunk):
        block = queries[a:a + chunk]
        sims = np.concatenate(block) @ stacked.T  # (Σ n_q, N_tok)
        per_doc = np.maximum.reduceat(sims, starts, axis=1)  # (Σ n_q, n)
        bounds = np.cumsum([0] + [len(q) for q in block])
        for i in range(len(block)):
            out[a + i] = per_doc[bounds[i]:bounds[i + 1]].mean(axis=0)
    return out


def mode_scores(q, c, weights: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """(m, n) score matrices of every mode the outputs hold, and the hybrids."""
    scores = {"dense": q.dense @ c.dense.T}
    if q.sparse is not None:
        scores["sparse"] = (q.sparse @ c.sparse.T).toarray()
    if q.colbert is not None:
        scores["colbert"] = maxsim_matrix(q.colbert, c.colbert)
    wd, ws, wc = weights
    if "sparse" in scores:
        scores["dense+sparse"] = wd * scores["dense"] + ws * scores["sparse"]
    if "colbert" in scores and "sparse" in scores:
        scores["all"] = scores["dense+sparse"] + wc * scores["colbert"]
    return scores


def evaluate_pair(model: M3Model, lang: str, modes: tuple[str, ...],
                  weights: tuple[float, float, float]) -> dict[str, float]:
    base = DATA / f"{lang}-eng"
    q_ids, q_texts = read_texts(base / "queries.jsonl")
    c_ids, c_texts = read_texts(base / "corpus.jsonl")
    gold = {}
    for line in (base / "qrels.tsv").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].strip().isdigit() and int(parts[2]) > 0:
            gold[parts[0]] = parts[1]
    target = np.array([c_ids.index(gold[q]) for q in q_ids])
    q = model.encode_queries(q_texts, modes)
    c = model.encode_queries(c_texts, modes)  # symmetric task: the query prompt on both sides
    return {mode: float((s.argmax(axis=1) == target).mean()) for mode, s in mode_scores(q, c, weights).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--langs", default=",".join(PAIRS))
    ap.add_argument("--weights", type=float, nargs=3, help="hybrid weights (default: the model's search_weights)")
    args = ap.parse_args()
    probe = M3Model.from_pretrained(args.model, modes=("dense",), dtype=args.dtype)
    modes = probe.available_modes()
    weights = tuple(args.weights) if args.weights else probe.search_weights
    results, seconds = {}, {}
    for lang in args.langs.split(","):
        start = time.perf_counter()
        results[f"{lang}-eng"] = evaluate_pair(probe, lang, modes, weights)
        seconds[f"{lang}-eng"] = round(time.perf_counter() - start, 1)
        print(lang, {m: round(v, 3) for m, v in results[f"{lang}-eng"].items()}, f"{seconds[f'{lang}-eng']} s",
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "fingerprint": probe.fingerprint, "dtype": args.dtype, "metric": "accuracy@1",
              "weights": list(weights), "accuracy": results, "seconds": seconds}
    (args.out / "tatoeba.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
