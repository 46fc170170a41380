"""Weakly paired train-side texts for the unsupervised contrastive stage (`m3embed train-unsupervised`).

From the XQuAD *train* articles only (article index % 4 != 3; the dev articles, XQuAD-R's dev questions and
every evaluation set stay out), in the 6 shared languages:
  * translation pairs: a paragraph in de/es/zh/ar/ru and the same paragraph in English (XQuAD is parallel);
  * sentence translation pairs: the k-th XQuAD-R sentence of a paragraph in X and in English, where both
    languages cut that paragraph into the same number of sentences (otherwise the k-th need not correspond);
  * (first sentence, rest of the paragraph) in each language, as the paper's title/body-like pairs.
Rows are {"query", "pos": [text]} (no negatives: the stage uses in-batch negatives), deduplicated, shuffled.

    python recipes/stages/unsup_pairs.py --out runs/stages/unsup_pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LANGS = ("en", "de", "es", "zh", "ar", "ru")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def is_train(pid: str) -> bool:
    return int(pid.split("-")[1]) % 4 != 3  # xq-AA-P[-sK]: AA = article


def paragraphs(lang: str) -> dict[str, str]:
    return {d["id"]: d["text"] for d in read_jsonl(DATA / "xquad" / lang / "corpus.jsonl") if is_train(d["id"])}


def sentences(lang: str) -> dict[str, list[str]]:
    """Train paragraph id -> its XQuAD-R sentences in order."""
    by_pid = defaultdict(list)
    for d in read_jsonl(DATA / "xquad_r" / lang / "corpus.jsonl"):
        if is_train(d["pid"]):
            by_pid[d["pid"]].append((int(d["id"].rsplit("-s", 1)[1]), d["text"]))
    return {pid: [t for _, t in sorted(s)] for pid, s in by_pid.items()}


def build() -> tuple[list[dict], Counter]:
    paras = {lang: paragraphs(lang) for lang in LANGS}
    sents = {lang: sentences(lang) for lang in LANGS}
    rows: list[tuple[str, dict]] = []
    kinds: Counter = Counter()

    def add(kind: str, query: str, pos: str) -> None:
        rows.append((kind, {"query": query, "pos": [pos]}))

    for lang in LANGS[1:]:
        for pid, text in paras[lang].items():
            add("paragraph translation", text, paras["en"][pid])
            x, en = sents[lang].get(pid, []), sents["en"].get(pid, [])
            if len(x) == len(en):
                for a, b in zip(x, en):
                    add("sentence translation", a, b)
    for lang in LANGS:
        for text in paras[lang].values():
            first, *rest = re.split(r"(?<=[.!?。！？])\s*", text, maxsplit=1)
            if rest and len(first) >= 10 and len(rest[0]) >= 40:
                add("first sentence, rest", first, rest[0])
    seen, unique = set(), []
    for kind, row in rows:  # a pair twice in one batch would be its own false negative
        key = (row["query"], row["pos"][0])
        if key not in seen and row["query"] != row["pos"][0]:
            seen.add(key)
            unique.append(row)
            kinds[kind] += 1
    return unique, kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows, kinds = build()
    random.Random(args.seed).shuffle(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} pairs to {args.out}: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))


if __name__ == "__main__":
    main()
