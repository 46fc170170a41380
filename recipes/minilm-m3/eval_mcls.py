"""Retrieval on a long-document set with MCLS off and on, through the same index-backed evaluation (dense by
default; --modes dense,all adds the hybrid, whose dense part is the MCLS vector when MCLS is on).

`m3embed eval` encodes with the model's own pooling; MCLS (paper §3.4: a CLS token every 256 tokens, the dense
vector = mean of the CLS states) is an encode option, so this script evaluates three variants of one model:

  * mcls off         queries and documents use the model's pooling (mean pooling for MiniLM);
  * mcls on          queries and documents are encoded with MCLS (a short query has one CLS: CLS pooling);
  * mcls docs only   documents with MCLS, queries with the model's pooling.

    python recipes/minilm-m3/eval_mcls.py --model minilm-m3 --dataset ../shared/data/longdoc_leval \\
        --out runs/minilm-m3/eval/mcls
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from m3embed.evaluate import BM25Config, EvalResult, M3Settings, evaluate_dataset, load_dataset, markdown_table
from m3embed.model import M3Model


class MclsEncoding:
    """An M3Model whose `encode_queries` / `encode_corpus` use MCLS; everything else is the model's."""

    def __init__(self, model: M3Model, every: int, queries: bool = True, corpus: bool = True) -> None:
        self.model, self.every, self.queries, self.corpus = model, every, queries, corpus

    def encode_queries(self, texts: Any, modes: Any = ("dense",), **kwargs: Any) -> Any:
        return self.model.encode_queries(texts, modes, mcls=self.every if self.queries else False, **kwargs)

    def encode_corpus(self, texts: Any, modes: Any = ("dense",), **kwargs: Any) -> Any:
        return self.model.encode_corpus(texts, modes, mcls=self.every if self.corpus else False, **kwargs)

    def __getattr__(self, name: str) -> Any:  # name, fingerprint, max_length, hidden_size... of the model
        return getattr(self.model, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-m3")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--every", type=int, default=256, help="tokens between inserted CLS tokens (paper: 256)")
    ap.add_argument("--max-length", type=int, default=512, help="passage truncation (capped at the model's)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--modes", default="dense", help="comma-separated modes to score, e.g. dense,all")
    args = ap.parse_args()

    modes = tuple(args.modes.split(","))
    model = M3Model.from_pretrained(args.model, dtype=args.dtype)
    data = load_dataset(args.dataset)
    settings = M3Settings(modes=modes, passage_max_length=args.max_length)
    variants = {
        "mcls off": model,
        "mcls on": MclsEncoding(model, args.every),
        "mcls docs only": MclsEncoding(model, args.every, queries=False),
    }
    merged: EvalResult | None = None
    for i, (name, encoder) in enumerate(variants.items()):
        result = evaluate_dataset(data, encoder, m3=settings, bm25=BM25Config() if i == 0 else None)
        if merged is None:  # keeps the dataset fields, settings and the BM25 row of the first run
            merged = EvalResult(result.dataset, result.qrels_file, result.n_queries, result.n_docs, result.k,
                                settings=dict(result.settings))
            merged.scores["bm25"], merged.seconds["bm25"] = result.scores["bm25"], result.seconds["bm25"]
        for mode in modes:
            merged.scores[f"{mode}, {name}"] = result.scores[mode]
            merged.seconds[f"{mode}, {name}"] = result.seconds[mode]
        merged.settings[f"index build s ({name})"] = result.settings["index build s"]
    merged.settings["mcls interval"] = args.every
    merged.settings["model dtype"] = args.dtype
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(merged.to_dict(), indent=1) + "\n")
    (args.out / "eval.md").write_text(markdown_table(merged))
    print(markdown_table(merged))


if __name__ == "__main__":
    main()
