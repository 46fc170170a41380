"""Fit e5-m3-small's hybrid weights on XQuAD *train* questions the heads never saw (issue 21 item 2).

build_data.py samples 450 of the 894 train-article questions (seed 0) for training; the other 444 of each
language are held out here. For each of the 11 train-side sets (6 monolingual, 5 X -> English), the corpus is
every paragraph of the train articles in the paragraph language (~180). Two kinds of query: the held-out
questions as they are, and longer ones, `pairs`: two held-out questions of the same paragraph joined by a space
(consecutive in id order, each question in one pair), whose gold is that paragraph. Every mode's score of every
(query, paragraph) is computed once (float32; the corpus is small enough that the union of the dense and sparse
candidates is the whole of it), then each weight triple on a 0.05 grid of the simplex is scored by mean nDCG@10
of `dense+sparse` and of `all` (one relevant paragraph a query: nDCG@10 = 1 / log2(1 + rank) within the first
10). Score forms: the raw M3 sum (a per-mode affine map changes a ranking only through its scale, so the
weights are the whole calibration); per-query z-scores of each mode over the candidates; and the sparse score
divided by the query's own lexical mass, its L1 norm (Σ of its weights) or L2 norm, so that it no longer grows
with the query's length while dense and ColBERT (cosines, a mean of cosines) do not; `idf` and `l1+idf` weigh
each shared id by its IDF over the set's paragraphs, as a Qdrant sparse field with `Modifier.IDF` would over an
index (`sparse_idf`), without and with the L1 norm. The fit of each form takes
the mean over both kinds of query (`joint`); each kind alone is reported too. No dev question, dev paragraph,
or other evaluation set is read.

    python recipes/e5-m3-small/fit_weights.py --model e5-m3-small --out runs/e5-m3-small/weights.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_data import DATA, LANGS, is_train_article, read_jsonl, train_qrels  # noqa: E402

from m3embed.evaluate.bm25 import bm25_searcher  # noqa: E402
from m3embed.model import M3Model  # noqa: E402
from m3embed.scoring import colbert_scores, dense_scores, lexical_scores  # noqa: E402

MODES = ("dense", "sparse", "colbert")


def held_out_questions(questions: int = 450, seed: int = 0) -> set[str]:
    """The train-article question ids build_data.py did not sample (the same rng call, the same seed)."""
    ids = sorted(qid for qid, _ in train_qrels("en"))
    keep = set(random.Random(seed).sample(ids, min(questions, len(ids))))
    return set(ids) - keep


def question_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(first id, second id, paragraph id): consecutive held-out questions of one paragraph, in id order."""
    by_paragraph: dict[str, list[str]] = {}
    for qid, pid in sorted(pairs):
        by_paragraph.setdefault(pid, []).append(qid)
    return [(ids[i], ids[i + 1], pid) for pid, ids in sorted(by_paragraph.items()) for i in range(0, len(ids) - 1, 2)]


def mode_scores(model: M3Model, q_lang: str, p_lang: str, held: set[str], max_length: int,
                q_text=lambda t: t, p_text=lambda t: t) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """{kind: (scores {mode: (Q, D)} + the query norms, gold column per query)} of one train-side set for the
    two kinds of query (`questions`, `pairs`), questions and paragraphs passed through `q_text` and `p_text`."""
    docs = [d for d in read_jsonl(DATA / "xquad" / p_lang / "corpus.jsonl") if is_train_article(d["id"])]
    col = {d["id"]: j for j, d in enumerate(docs)}
    texts = {q["id"]: q_text(q["text"]) for q in read_jsonl(DATA / "xquad" / q_lang / "queries.jsonl")}
    pairs = [(qid, pid) for qid, pid in train_qrels(q_lang) if qid in held]
    # xquad ids are shared across languages: question qid's paragraph pid has the same id in every language
    joined = question_pairs(pairs)
    kinds = {"questions": ([texts[qid] for qid, _ in pairs], [pid for _, pid in pairs]),
             "pairs": ([f"{texts[a]} {texts[b]}" for a, b, _ in joined], [pid for _, _, pid in joined])}
    passages = [p_text(d["text"]) for d in docs]
    p = model.encode_corpus(passages, modes=MODES, max_length=max_length)
    idf = sparse_idf(p.sparse)
    bm25_search = bm25_searcher([d["id"] for d in docs], passages, k=len(docs))  # one BM25 index for both kinds
    out = {}
    for kind, (queries, gold) in kinds.items():
        q = model.encode_queries(queries, modes=MODES, max_length=max_length)
        scores = {"dense": dense_scores(q.dense, p.dense), "sparse": lexical_scores(q.sparse, p.sparse),
                  "sparse_idf": lexical_scores(q.sparse @ sp.diags(idf), p.sparse),
                  "colbert": np.stack([colbert_scores(c, p.colbert) for c in q.colbert]),
                  "l1": np.asarray(q.sparse.sum(axis=1)).ravel(),
                  "l2": np.sqrt(np.asarray(q.sparse.multiply(q.sparse).sum(axis=1)).ravel())}
        bm25 = np.full((len(queries), len(docs)), -1.0)  # the reference for the sparse head; unretrieved: below all
        for i, row in enumerate(bm25_search(queries)):
            for pid, s in row.items():
                bm25[i, col[pid]] = s
        scores["bm25"] = bm25
        out[kind] = (scores, np.array([col[pid] for pid in gold]))
    return out


def sparse_idf(docs: sp.csr_array) -> np.ndarray:
    """Per token id, the IDF a Qdrant sparse field with `Modifier.IDF` applies over these documents:
    ln((N - n + 0.5) / (n + 0.5) + 1), N documents, n of them holding the id."""
    n = np.bincount(docs.indices, minlength=docs.shape[1])
    return np.log((docs.shape[0] - n + 0.5) / (n + 0.5) + 1)


def ndcg10(total: np.ndarray, gold: np.ndarray) -> float:
    g = total[np.arange(len(gold)), gold]
    rank = (total >= g[:, None]).sum(1)  # ties count against the gold (no shared term: every score 0)
    return float(np.where(rank <= 10, 1 / np.log2(1 + rank), 0.0).mean())


def zscores(s: np.ndarray) -> np.ndarray:
    return (s - s.mean(1, keepdims=True)) / np.maximum(s.std(1, keepdims=True), 1e-6)


def per_norm(norm: str, sparse: str = "sparse"):
    """The sparse score (`sparse`: "sparse", or "sparse_idf" with the corpus IDF) divided by the query's lexical
    norm (None: as it is); the other modes as they are."""
    def form(s: dict[str, np.ndarray], m: str) -> np.ndarray:
        if m != "sparse":
            return s[m]
        return s[sparse] if norm is None else s[sparse] / np.maximum(s[norm], 1e-6)[:, None]

    return form


FORMS = {"raw": lambda s, m: s[m], "z": lambda s, m: zscores(s[m]), "l1": per_norm("l1"), "l2": per_norm("l2"),
         "idf": per_norm(None, "sparse_idf"), "l1+idf": per_norm("l1", "sparse_idf")}
KINDS = ("questions", "pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="e5-m3-small")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    start = time.time()
    model = M3Model.from_pretrained(args.model, device="cpu")
    model.query_sparse_norm = "none"  # the raw lexical weights: the score forms below divide them themselves
    held = held_out_questions()
    sets = {f"{lang}": (lang, lang) for lang in LANGS} | {f"{lang}-en": (lang, "en") for lang in LANGS if lang != "en"}
    data = {name: mode_scores(model, ql, pl, held, args.max_length) for name, (ql, pl) in sets.items()}
    sizes = {kind: len(data["en"][kind][1]) for kind in KINDS}
    print(f"encoded {sizes} held-out queries x {len(sets)} sets in {time.time() - start:.0f} s", flush=True)
    grid = [tuple(float(x) for x in w) for w in itertools.product(np.round(np.arange(0, 1.0001, 0.05), 2), repeat=3)
            if abs(sum(w) - 1) < 1e-6]
    result: dict[str, object] = {"model": args.model, "queries": sizes, "sets": list(sets)}
    # BM25's nDCG is the same in every score form
    bm25 = {kind: {name: ndcg10(d[kind][0]["bm25"], d[kind][1]) for name, d in data.items()} for kind in KINDS}
    bm25 = {kind: {"mean": float(np.mean(list(v.values()))), **v} for kind, v in bm25.items()}
    for form, prep in FORMS.items():
        ready = {kind: {name: ({m: prep(d[kind][0], m) for m in MODES}, d[kind][1]) for name, d in data.items()}
                 for kind in KINDS}

        def score(w, ready=ready) -> dict[str, dict[str, float]]:
            res = {}
            for kind, sets_ in ready.items():
                per = {name: ndcg10(sum(wi * s[m] for wi, m in zip(w, MODES)), gold)
                       for name, (s, gold) in sets_.items()}
                res[kind] = {"mean": float(np.mean(list(per.values()))), **per}
            res["joint"] = {"mean": float(np.mean([res[kind]["mean"] for kind in KINDS]))}
            return res

        single = {m: score(tuple(float(m == x) for x in MODES)) for m in MODES}
        single = single | {"bm25": bm25 | {"joint": {"mean": float(np.mean([bm25[k]["mean"] for k in KINDS]))}}}
        # one triple serves both hybrids: `all` uses the three, `dense+sparse` the first two
        both = {w: (score(w), score((w[0], w[1], 0.0))) for w in grid if w[2] > 0 and w[0] + w[1] > 0}
        result[form] = {"single_modes": single}

        def show(w, both=both) -> str:
            return ", ".join(f"{kind} all {both[w][0][kind]['mean']:.4f} d+s {both[w][1][kind]['mean']:.4f}"
                             for kind in (*KINDS, "joint"))

        default = (0.4, 0.2, 0.4)
        print(f"[{form}] single modes " + json.dumps({m: {k: round(v[k]["mean"], 4) for k in (*KINDS, "joint")}
                                                       for m, v in single.items()}))
        print(f"[{form}] default {default}: {show(default)}")
        fits = {"all": (1, 0), "dense+sparse": (0, 1), "joint": (1, 1)}  # goal: weights of the two means
        for goal, (a, b) in fits.items():
            w = max(both, key=lambda w, a=a, b=b: a * both[w][0]["joint"]["mean"] + b * both[w][1]["joint"]["mean"])
            result[form][f"best_{goal}"] = {"weights": list(w), "all": both[w][0], "dense+sparse": both[w][1]}
            print(f"[{form}] best for {goal}: {w}: {show(w)}", flush=True)
        result[form]["default"] = {"weights": list(default), "all": both[default][0],
                                   "dense+sparse": both[default][1]}
    result["seconds"] = round(time.time() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
