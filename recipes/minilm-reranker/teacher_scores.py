"""Add teacher scores (pos_scores / neg_scores) from the shipped bi-encoder minilm-m3 to reranker training rows.

The score of a (query, passage) pair is minilm-m3's dense cosine divided by 0.02, the InfoNCE temperature
minilm-m3 was trained with (recipes/minilm-m3), so that the softmax `m3embed train-reranker` takes over a group
(it applies no temperature of its own) is the distribution minilm-m3 itself was fitted to. Only the rows'
own texts are read (train splits; see build_data.py).

    python recipes/minilm-reranker/teacher_scores.py runs/minilm-reranker/data/train.jsonl \
        -o runs/minilm-reranker/data/train_teacher.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from m3embed.model import M3Model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("-m", "--model", default="minilm-m3")
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--query-max-length", type=int, default=64)
    ap.add_argument("--passage-max-length", type=int, default=256)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.open(encoding="utf-8") if line.strip()]
    model = M3Model.from_pretrained(args.model, device="cpu")
    queries = sorted({r["query"] for r in rows})
    passages = sorted({p for r in rows for p in r["pos"] + r["neg"]})
    q = model.encode_queries(queries, max_length=args.query_max_length, progress=False).dense
    p = model.encode_corpus(passages, max_length=args.passage_max_length, progress=False).dense
    qi = {t: i for i, t in enumerate(queries)}
    pi = {t: i for i, t in enumerate(passages)}

    def score(query: str, texts: list[str]) -> list[float]:
        s = np.asarray(p[[pi[t] for t in texts]], dtype=np.float32) @ np.asarray(q[qi[query]], dtype=np.float32)
        return [round(float(x) / args.temperature, 4) for x in s]

    with args.out.open("w", encoding="utf-8") as f:
        for r in rows:
            r = dict(r, pos_scores=score(r["query"], r["pos"]), neg_scores=score(r["query"], r["neg"]))
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows with teacher scores ({len(queries)} queries, {len(passages)} passages) "
          f"to {args.out}")


if __name__ == "__main__":
    main()
