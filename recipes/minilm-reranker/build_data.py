"""Training data of the shipped reranker `minilm-reranker`, from public TRAIN splits only.

Writes three files into --out-dir, from the builders of recipes/minilm-m3/build_data.py (English only: the
reranker is all-MiniLM-L6-v2, an English WordPiece model):
  * xquad.jsonl   the XQuAD-en train-split questions (articles with index % 4 != 3), each with its gold
                  paragraph as `pos`; `neg` (other paragraphs of the article) is replaced by `m3embed mine`;
  * pool.jsonl    the train-split English paragraphs: the candidate pool the questions are mined against;
  * other.jsonl   unsupervised (first sentence -> rest of the paragraph) pairs of the same train paragraphs
                  with random train paragraphs as negatives, and FlagEmbedding's toy fine-tuning rows (MIT).
XQuAD dev questions, dev paragraphs and qrels, the classic collections and Tatoeba are never read.

    python recipes/minilm-reranker/build_data.py --out-dir runs/minilm-reranker/data
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

_spec = importlib.util.spec_from_file_location("m3_build", Path(__file__).parents[1] / "minilm-m3/build_data.py")
m3_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(m3_build)


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--neg", type=int, default=7, help="random negatives per unsupervised row")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write(args.out_dir / "xquad.jsonl", m3_build.xquad_rows("en", rng, args.neg))
    corpus = m3_build.read_jsonl(m3_build.DATA / "xquad" / "en" / "corpus.jsonl")
    write(args.out_dir / "pool.jsonl", [{"text": d["text"]} for d in corpus if m3_build.is_train_article(d["id"])])
    other = m3_build.unsupervised_rows("en", rng, args.neg) + m3_build.toy_rows()
    rng.shuffle(other)
    write(args.out_dir / "other.jsonl", other)


if __name__ == "__main__":
    main()
