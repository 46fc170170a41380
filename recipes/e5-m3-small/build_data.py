"""Build the multilingual training set of `e5-m3-small` from public data that no evaluation reads.

Sources (all under ../shared/data, see its MANIFEST.md), train split only (XQuAD articles whose index % 4 != 3):
  * monolingual: XQuAD train questions in en, de, es, zh, ar, ru (`--questions` of the 894, the same seeded
    sample in every language) with the gold paragraph as `pos` and other paragraphs of the same article as `neg`;
  * cross-lingual: the same questions in de, es, zh, ar, ru with the *English* paragraph as `pos` and English
    paragraphs of the same article as `neg` (XQuAD is 12-way parallel, so the ids line up);
  * unsupervised pairs as in the paper's pre-training data: (first sentence, rest of the paragraph) of the same
    train paragraphs in the 6 languages, negatives from other train paragraphs of that language (`--unsupervised`
    per language; 0 by default: on the shared 2-core build machine they cost more encoder time than we had);
  * FlagEmbedding's toy fine-tuning examples (MIT, English).
Never read: XQuAD dev questions, paragraphs or qrels, xquad_r, Tatoeba, the classic collections, longdoc_leval.

    python recipes/e5-m3-small/build_data.py --out runs/e5-m3-small/train.jsonl
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
LANGS = ("en", "de", "es", "zh", "ar", "ru")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？؟])\s*")  # Latin/Cyrillic/Arabic need a space after; CJK not


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def article(pid: str) -> str:
    return pid.rsplit("-", 1)[0]  # xq-AA-P -> xq-AA


def is_train_article(pid: str) -> bool:
    return int(article(pid).split("-")[1]) % 4 != 3


def train_qrels(lang: str) -> list[tuple[str, str]]:
    """(question id, paragraph id) of the train split, refusing any dev paragraph."""
    path = DATA / "xquad" / lang / "qrels.train.tsv"
    with path.open() as f:
        pairs = [(r["query-id"], r["corpus-id"]) for r in csv.DictReader(f, delimiter="\t")]
    dev = [pid for _, pid in pairs if not is_train_article(pid)]
    if dev:
        raise ValueError(f"{path} names dev paragraph {dev[0]}")
    return pairs


def question_rows(q_lang: str, p_lang: str, keep: set[str], rng: random.Random, n_neg: int) -> list[dict]:
    """Questions `keep` in q_lang → gold paragraph in p_lang; negatives: other paragraphs of the same article."""
    corpus = {d["id"]: d["text"] for d in read_jsonl(DATA / "xquad" / p_lang / "corpus.jsonl")}
    queries = {q["id"]: q["text"] for q in read_jsonl(DATA / "xquad" / q_lang / "queries.jsonl")}
    by_article = defaultdict(list)
    for pid in corpus:
        by_article[article(pid)].append(pid)
    rows = []
    for qid, pid in train_qrels(q_lang):
        if qid not in keep:
            continue
        others = [p for p in by_article[article(pid)] if p != pid]
        rows.append({"query": queries[qid], "pos": [corpus[pid]],
                     "neg": [corpus[p] for p in rng.sample(others, min(n_neg, len(others)))]})
    return rows


def unsupervised_rows(lang: str, rng: random.Random, n_neg: int, limit: int) -> list[dict]:
    corpus = [d for d in read_jsonl(DATA / "xquad" / lang / "corpus.jsonl") if is_train_article(d["id"])]
    min_first = 8 if lang == "zh" else 20  # characters: a Chinese sentence is short in characters
    rows = []
    for d in corpus:
        parts = SENTENCE_END.split(d["text"].strip(), maxsplit=1)
        if len(parts) < 2 or len(parts[0]) < min_first or len(parts[1]) < 2 * min_first:
            continue
        negs = [o["text"] for o in rng.sample(corpus, n_neg + 1) if o["id"] != d["id"]][:n_neg]
        rows.append({"query": parts[0], "pos": [parts[1]], "neg": negs})
    return rng.sample(rows, min(limit, len(rows)))


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
    ap.add_argument("--questions", type=int, default=450, help="train questions per language (of 894)")
    ap.add_argument("--unsupervised", type=int, default=0, help="unsupervised pairs per language (at most ~178)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    ids = sorted(qid for qid, _ in train_qrels("en"))
    keep = set(rng.sample(ids, min(args.questions, len(ids))))  # ids are shared by the 6 parallel languages
    parts: dict[str, list[dict]] = {}
    for lang in LANGS:
        parts[f"xquad {lang}"] = question_rows(lang, lang, keep, rng, args.neg)
        if lang != "en":
            parts[f"xquad {lang}->en"] = question_rows(lang, "en", keep, rng, args.neg)
        if args.unsupervised:
            parts[f"unsupervised {lang}"] = unsupervised_rows(lang, rng, args.neg, args.unsupervised)
    parts["flagembedding toy"] = toy_rows()
    rows = [r for part in parts.values() for r in part]
    rng.shuffle(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for name, part in parts.items():
        print(f"{name:>20}: {len(part)} rows")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
