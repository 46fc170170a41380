"""Build the training set of the shipped offline model from public data that no evaluation uses.

Sources (all under ../shared/data, see its MANIFEST.md):
  * XQuAD train split (articles whose index % 4 != 3) in en, de, es: every train question with its gold
    paragraph as `pos` and the other paragraphs of the same article as `neg` (dev articles never appear);
  * unsupervised pairs as in the paper's pre-training data: (first sentence, rest of the paragraph) of the
    same train-article paragraphs, negatives from other train paragraphs;
  * FlagEmbedding's toy fine-tuning examples (MIT).
Evaluation uses XQuAD dev questions (qrels.dev.tsv) and the classic collections, which are not read here.

    python recipes/minilm-m3/build_data.py --out runs/minilm-m3/train.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LANGS = ("en", "de", "es")  # MiniLM's WordPiece vocabulary is English; Latin-script languages share most of it


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def article(pid: str) -> str:
    return pid.rsplit("-", 1)[0]  # xq-AA-P -> xq-AA


def is_train_article(pid: str) -> bool:
    return int(article(pid).split("-")[1]) % 4 != 3


def xquad_rows(lang: str, rng: random.Random, n_neg: int) -> list[dict]:
    base = DATA / "xquad" / lang
    corpus = {d["id"]: d["text"] for d in read_jsonl(base / "corpus.jsonl")}
    queries = {q["id"]: q["text"] for q in read_jsonl(base / "queries.jsonl")}
    by_article = defaultdict(list)
    for pid in corpus:
        by_article[article(pid)].append(pid)
    rows = []
    with (base / "qrels.train.tsv").open() as f:
        for rec in csv.DictReader(f, delimiter="\t"):
            pid = rec["corpus-id"]
            if not is_train_article(pid):
                raise ValueError(f"{base}/qrels.train.tsv names dev paragraph {pid}")
            others = [p for p in by_article[article(pid)] if p != pid]
            rows.append({"query": queries[rec["query-id"]], "pos": [corpus[pid]],
                         "neg": [corpus[p] for p in rng.sample(others, min(n_neg, len(others)))]})
    return rows


def unsupervised_rows(lang: str, rng: random.Random, n_neg: int) -> list[dict]:
    corpus = [d for d in read_jsonl(DATA / "xquad" / lang / "corpus.jsonl") if is_train_article(d["id"])]
    rows = []
    for d in corpus:
        parts = re.split(r"(?<=[.!?。])\s+", d["text"], maxsplit=1)
        if len(parts) < 2 or len(parts[0]) < 20 or len(parts[1]) < 50:
            continue
        negs = [o["text"] for o in rng.sample(corpus, n_neg + 1) if o["id"] != d["id"]][:n_neg]
        rows.append({"query": parts[0], "pos": [parts[1]], "neg": negs})
    return rows


def toy_rows() -> list[dict]:
    rows = []
    for path in sorted((DATA / "flagembedding_toy").glob("*.jsonl")):
        for r in read_jsonl(path):
            rows.append({"query": r["query"], "pos": r["pos"], "neg": r["neg"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--neg", type=int, default=7, help="negatives per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--langs", default=",".join(LANGS), help="XQuAD languages, comma-separated")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = []
    for lang in args.langs.split(","):
        rows += xquad_rows(lang, rng, args.neg)
        rows += unsupervised_rows(lang, rng, args.neg)
    rows += toy_rows()
    rng.shuffle(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
