"""Letter case and e5-m3-small (issue 21 item 3), measured on train-side data only.

XLM-R's pieces are cased, so a text in capitals falls apart into rare fragments. On the held-out XQuAD train
questions and train paragraphs of fit_weights.py (languages with letter case: en, de, ru), three conditions of
the *data* (as given; questions in capitals, a search box with caps lock; both in capitals, an old collection as
LISA and TIME are written) are crossed with three *folding rules* the model could apply to every input: none;
`capitals` (a word whose letters are all capitals, two or more of them, is lower-cased); `lower` (the whole
text lower-cased). Reported: nDCG@10 of each mode and of `all` at --weights, mean over the languages.

    python recipes/e5-m3-small/case_study.py --weights 0.65 0.15 0.2 --out runs/e5-m3-small/case_study.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_weights import MODES, held_out_questions, mode_scores, ndcg10  # noqa: E402

from m3embed.model import M3Model  # noqa: E402

WORD = re.compile(r"[^\W\d_]+")
RULES = {"none": lambda t: t, "capitals": lambda t: WORD.sub(lambda m: m[0].lower() if len(m[0]) > 1 and m[0].isupper()
                                                              else m[0], t), "lower": str.lower}
DATA = {"as given": (False, False), "questions in capitals": (True, False), "both in capitals": (True, True)}


def _memo(encode):
    seen: dict[tuple[str, ...], object] = {}

    def cached(texts, **options):
        key = tuple(texts)
        if key not in seen:
            seen[key] = encode(texts, **options)
        return seen[key]

    return cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="e5-m3-small")
    ap.add_argument("--langs", nargs="+", default=["en", "de", "ru"])
    ap.add_argument("--weights", type=float, nargs=3, default=[0.4, 0.2, 0.4])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    start = time.time()
    model = M3Model.from_pretrained(args.model, device="cpu")
    for role in ("encode_queries", "encode_corpus"):  # a text list that two conditions share is encoded once
        setattr(model, role, _memo(getattr(model, role)))
    held = held_out_questions()
    table: dict[str, dict[str, dict[str, float]]] = {}
    for data, (q_up, p_up) in DATA.items():
        for rule, fold in RULES.items():
            q_text = (lambda t, f=fold: f(t.upper())) if q_up else fold
            p_text = (lambda t, f=fold: f(t.upper())) if p_up else fold
            per: dict[str, list[float]] = {m: [] for m in (*MODES, "all")}
            for lang in args.langs:
                scores, gold = mode_scores(model, lang, lang, held, 512, q_text, p_text)["questions"]
                for m in MODES:
                    per[m].append(ndcg10(scores[m], gold))
                per["all"].append(ndcg10(sum(w * scores[m] for w, m in zip(args.weights, MODES)), gold))
            table.setdefault(data, {})[rule] = {m: float(np.mean(v)) for m, v in per.items()}
            row = table[data][rule]
            print(f"{data:>24} | {rule:>8} | " + " ".join(f"{m} {row[m]:.4f}" for m in row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "langs": args.langs, "weights": args.weights,
                                    "held_out_questions": len(held), "table": table,
                                    "seconds": round(time.time() - start)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
