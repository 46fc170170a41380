"""Replace the same-article negatives of build_data.py's file with negatives mined by a model (issue 21 item 1).

Each XQuAD row is mined against the train-article paragraphs of its positive's language only (`m3embed.train.mine`,
dense retrieval): a pool of every language would hand a monolingual German question the English translation of
its own paragraph as a "negative". The FlagEmbedding toy rows keep their negatives. Row order is kept. No dev
question, dev paragraph or evaluation set is read.

    python recipes/e5-m3-small/mine_negatives.py runs/e5-m3-small/train.jsonl --out runs/e5-m3-small/train_mined.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_data import DATA, LANGS, is_train_article, read_jsonl  # noqa: E402

from m3embed.model import M3Model  # noqa: E402
from m3embed.train.mine import mine_hard_negatives  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="build_data.py's jsonl")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="e5-m3-small")
    ap.add_argument("--range", default="1-30", help="ranks START-END to sample from (0-based, END excluded)")
    ap.add_argument("--negatives", type=int, default=7)
    ap.add_argument("--passage-max-length", type=int, default=256)
    args = ap.parse_args()
    paragraphs = {lang: [d["text"] for d in read_jsonl(DATA / "xquad" / lang / "corpus.jsonl")
                         if is_train_article(d["id"])] for lang in LANGS}
    language = {text: lang for lang, texts in paragraphs.items() for text in texts}
    rows = read_jsonl(args.input)
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        lang = language.get(row["pos"][0])
        if lang is not None:
            groups.setdefault(lang, []).append(i)
    model = M3Model.from_pretrained(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        for lang, at in groups.items():
            src, pool, dst = (Path(tmp) / f"{lang}.{kind}.jsonl" for kind in ("in", "pool", "out"))
            src.write_text("".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in at), encoding="utf-8")
            pool.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in paragraphs[lang]),
                            encoding="utf-8")
            stats = mine_hard_negatives(model, src, dst, candidate_pool=pool, sample_range=args.range,
                                        negative_number=args.negatives, passage_max_length=args.passage_max_length,
                                        progress=False)
            for i, row in zip(at, read_jsonl(dst)):
                rows[i] = row
            print(f"{lang}: {stats.lines} rows mined from {stats.candidates} paragraphs, "
                  f"{stats.topped_up} topped up", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"wrote {len(rows)} rows ({sum(map(len, groups.values()))} mined) to {args.out}")


if __name__ == "__main__":
    main()
