"""Long train-side texts for RetroMAE on extended positions: XQuAD train articles, joined.

XQuAD articles are 5 paragraphs (~1k tokens), so each text here joins the paragraphs of consecutive *train*
articles (article index % 4 != 3; the dev articles and every evaluation set stay out) of one language, in order,
until it reaches --chars characters. Languages default to the Latin-script ones a BERT WordPiece vocabulary
reads (en, de, es).

    python recipes/stages/long_texts.py --out runs/stages/long_texts.jsonl
"""

from __future__ import annotations

import argparse
import json
from itertools import groupby
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def article_texts(lang: str) -> list[str]:
    """The train articles of one language, each its paragraphs in order joined by blank lines."""
    rows = [json.loads(line) for line in (DATA / "xquad" / lang / "corpus.jsonl").read_text().splitlines()]
    key = lambda r: int(r["id"].split("-")[1])  # noqa: E731  xq-AA-P: AA = article
    rows.sort(key=lambda r: (key(r), int(r["id"].split("-")[2])))
    return ["\n\n".join(r["text"] for r in group) for article, group in groupby(rows, key) if article % 4 != 3]


def join(texts: list[str], chars: int) -> list[str]:
    out, current = [], ""
    for text in texts:
        current = f"{current}\n\n{text}" if current else text
        if len(current) >= chars:
            out.append(current)
            current = ""
    return out + ([current] if current else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--langs", default="en,de,es")
    ap.add_argument("--chars", type=int, default=24_000, help="characters a text reaches before it ends")
    args = ap.parse_args()
    texts = [t for lang in args.langs.split(",") for t in join(article_texts(lang), args.chars)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    print(f"{len(texts)} texts, {sum(map(len, texts)):,} characters -> {args.out}")


if __name__ == "__main__":
    main()
