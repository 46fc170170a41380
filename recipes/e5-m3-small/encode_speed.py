"""Encode speed of e5-m3-small next to minilm-m3, in the same process, alternating the models.

Texts: the 240 XQuAD paragraphs and the 296 dev questions of one language, encoded as passages / queries with
all three modes (one forward pass each). Each model's tokens are its own (XLM-R vs BERT WordPiece), so texts/s
is the comparable figure. Passages are cut at the length each model is evaluated with (512 / 256).

    python recipes/e5-m3-small/encode_speed.py --lang en --dtype bfloat16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from m3embed.model import M3Model

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "xquad"
MODELS = {"e5-m3-small": 512, "minilm-m3": 256}  # passage max length used in docs/results.md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lang", default="en")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    read = [json.loads(line)["text"] for line in (DATA / args.lang / "corpus.jsonl").open(encoding="utf-8")]
    dev = {line.split("\t")[0] for line in (DATA / args.lang / "qrels.dev.tsv").read_text().splitlines()[1:]}
    questions = [q["text"] for line in (DATA / args.lang / "queries.jsonl").open(encoding="utf-8")
                 if (q := json.loads(line))["id"] in dev]
    models = {name: M3Model.from_pretrained(name, dtype=args.dtype, device="cpu") for name in MODELS}
    timings: dict[str, dict[str, list[float]]] = {name: {"passages": [], "queries": []} for name in MODELS}
    tokens = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            modes = model.available_modes()
            start = time.perf_counter()
            out = model.encode_corpus(read, modes, max_length=MODELS[name], progress=False)
            timings[name]["passages"].append(time.perf_counter() - start)
            start = time.perf_counter()
            q = model.encode_queries(questions, modes, progress=False)
            timings[name]["queries"].append(time.perf_counter() - start)
            tokens[name] = (int(out.n_tokens.sum()), int(q.n_tokens.sum()))
    print("| model | dtype | passages/s | queries/s | passage tokens | query tokens |\n|---|---|---|---|---|---|")
    for name, t in timings.items():
        p, q = statistics.median(t["passages"]), statistics.median(t["queries"])
        print(f"| {name} | {args.dtype} | {len(read) / p:.1f} | {len(questions) / q:.1f} | {tokens[name][0]} | "
              f"{tokens[name][1]} |")


if __name__ == "__main__":
    main()
