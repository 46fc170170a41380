"""Reranking throughput: m3embed's Reranker against FlagEmbedding 1.4.2's FlagReranker, same run, same checkpoint.

The checkpoint is a random-weight cross-encoder built offline by m3testkit at the bge-reranker-v2-m3 shape
(XLMRobertaForSequenceClassification, 24 layers, hidden 1024, vocab 250002), or "small" (6 x 384) to try the
script quickly. The workload is reranking: one query with N candidate passages of about T tokens (XQuAD-en
paragraphs when the shared data is there, else the built-in sample), scored at FlagReranker's defaults
(max_length 512, query cut at 384). Engines run interleaved, `--repeat` rounds, best round kept: FlagReranker
fp32 (its CPU path; it refuses fp16 there), m3embed fp32 (the same model object, so the same weights) and
m3embed bf16. Each row reports pairs/s, wall and process CPU seconds, the ratio to FlagReranker, and the
largest score difference to FlagReranker; the 1-minute load average is printed, the machine being shared.

    python benchmarks/rerank.py                          # bge-reranker-v2-m3 shape, 16 pairs of ~128 tokens
    python benchmarks/rerank.py --shape small --pairs 64 --tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed

from m3embed.rerank import Reranker  # noqa: E402
from m3testkit.checkpoints import BGE_RERANKER_V2_M3_SHAPE, sample_texts, write_random_reranker  # noqa: E402

SHAPES = {"bge-reranker-v2-m3": BGE_RERANKER_V2_M3_SHAPE,
          "small": dict(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536, vocab_size=250002,
                        max_position_embeddings=8194)}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def workload(tokenizer, n: int, tokens: int, seed: int = 0) -> list[tuple[str, str]]:
    """One question and n passages cut to about `tokens` tokens each."""
    path = DATA / "xquad" / "en" / "corpus.jsonl"
    pool = [json.loads(line)["text"] for line in path.open()] if path.is_file() else sample_texts(480)
    rng = np.random.default_rng(seed)
    ids = tokenizer(pool, add_special_tokens=False)["input_ids"]
    passages = []
    for _ in range(n):
        out: list[int] = []
        while len(out) < tokens:
            out += ids[rng.integers(len(pool))]
        passages.append(tokenizer.decode(out[:tokens]))
    return [("Which river flows through the city that hosted the first modern Olympic Games?", p) for p in passages]


def timed(fn) -> tuple[list[float], float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    scores = fn()
    return scores, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="bge-reranker-v2-m3")
    ap.add_argument("--pairs", type=int, default=16, help="candidate passages of the one query")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per passage")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved rounds per engine; the best is kept")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    from FlagEmbedding import FlagReranker

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ckpt = write_random_reranker(Path(tmp) / args.shape, arch="xlmr", **SHAPES[args.shape])
        print(f"built {args.shape} in {time.perf_counter() - t:.0f}s; torch threads {torch.get_num_threads()}",
              file=sys.stderr, flush=True)
        flag = FlagReranker(str(ckpt), use_fp16=False, devices="cpu")
        engines = {
            "FlagReranker fp32": lambda pairs: flag.compute_score(pairs),
            "m3embed fp32": lambda pairs, ours=Reranker(flag.model, flag.tokenizer): ours.compute_score(pairs),
            "m3embed bf16": lambda pairs, ours=Reranker.from_pretrained(ckpt, device="cpu", dtype="bfloat16"):
                ours.compute_score(pairs),
        }
        pairs = workload(flag.tokenizer, args.pairs, args.tokens)
        best: dict[str, tuple[float, float]] = {}
        scores: dict[str, list[float]] = {}
        loads = []
        for _ in range(args.repeat):
            for name, run in engines.items():
                loads.append(os.getloadavg()[0])
                scores[name], wall, cpu = timed(lambda run=run: run(pairs))
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu)
    ref_wall = best["FlagReranker fp32"][0]
    rows = []
    for name, (wall, cpu) in best.items():
        diff = float(np.abs(np.array(scores[name]) - np.array(scores["FlagReranker fp32"])).max())
        rows.append({"shape": args.shape, "pairs": args.pairs, "tokens/passage": args.tokens, "engine": name,
                     "wall s": round(wall, 2), "CPU s": round(cpu, 2), "pairs/s": round(args.pairs / wall, 2),
                     "x FlagReranker": round(ref_wall / wall, 2), "max |score diff|": float(f"{diff:.3g}")})
        print(json.dumps(rows[-1]), flush=True)
    print(f"1-min load average during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "load_avg_1m": loads}, indent=2))


if __name__ == "__main__":
    main()
