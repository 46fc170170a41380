"""How closely the shipped reranker (quantised deltas, assembled by name) reproduces the trained checkpoint.

Scores the first --rows training groups (query with each of its pos/neg passages; train split only) with both
and prints the largest score difference and how often the two agree on each group's top passage.

    python recipes/minilm-reranker/check_ship.py runs/minilm-reranker/train2 minilm-reranker \
        runs/minilm-reranker/data/train.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from m3embed.rerank import Reranker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trained", type=Path)
    ap.add_argument("shipped")
    ap.add_argument("data", type=Path)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--max-length", type=int, default=320)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.open(encoding="utf-8")][: args.rows]
    groups = [[(r["query"], p) for p in r["pos"][:1] + r["neg"]] for r in rows]
    pairs = [p for g in groups for p in g]
    a, b = (np.asarray(Reranker.from_pretrained(m, device="cpu").compute_score(pairs, max_length=args.max_length))
            for m in (args.trained, args.shipped))
    cuts = np.cumsum([0] + [len(g) for g in groups])
    same_top = np.mean([a[s:e].argmax() == b[s:e].argmax() for s, e in zip(cuts[:-1], cuts[1:])])
    print(f"{len(pairs)} pairs of {len(groups)} train groups: max |score diff| {np.abs(a - b).max():.4f} "
          f"(score std {a.std():.3f}), same top passage in {same_top:.1%} of groups")


if __name__ == "__main__":
    main()
