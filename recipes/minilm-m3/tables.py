"""Print the nDCG@10 tables of docs/results.md from the eval.json files that `m3embed eval` wrote.

    python recipes/minilm-m3/tables.py runs/minilm-m3/eval

Expects <eval>/sd-on/<set>/eval.json (every mode + BM25), <eval>/sd-off/<set>/eval.json (the ablation) and
optionally <eval>/mcls/eval.json (eval_mcls.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODES = ("dense", "sparse", "colbert", "dense+sparse", "all")
SINGLE = ("dense", "sparse", "colbert")


def load(directory: Path) -> dict[str, dict]:
    """{dataset name: eval.json contents} for every <directory>/<set>/eval.json."""
    out = {}
    for path in sorted(directory.glob("*/eval.json")):
        result = json.loads(path.read_text())
        out[result["dataset"]] = result
    return out


def ndcg(result: dict, system: str) -> float | None:
    row = result["scores"].get(system)
    return None if row is None else row["nDCG@10"]


def cell(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:.3f}"
    return f"**{text}**" if bold else text


def main_table(results: dict[str, dict]) -> str:
    lines = [
        "| set | queries | docs | BM25 | " + " | ".join(MODES) + " | all ≥ best single | all > BM25 |",
        "|---" * (len(MODES) + 6) + "|",
    ]
    wins = 0
    for name, r in results.items():
        values = {m: ndcg(r, m) for m in MODES}
        bm25 = ndcg(r, "bm25")
        best = max(v for v in values.values() if v is not None)
        best_single = max(values[m] for m in SINGLE if values[m] is not None)
        beats = values["all"] > bm25 if bm25 is not None and values["all"] is not None else None
        wins += bool(beats) and name.startswith("classic/")
        cells = [cell(values[m], values[m] == best) for m in MODES]
        lines.append(
            f"| {name} | {r['n_queries']} | {r['n_docs']} | {cell(bm25)} | " + " | ".join(cells)
            + f" | {'yes' if values['all'] >= best_single else 'no'} | {'yes' if beats else 'no'} |"
        )
    n_classic = sum(name.startswith("classic/") for name in results)
    return "\n".join(lines) + f"\n\n`all` beats BM25 on {wins} of {n_classic} classic collections.\n"


def ablation_table(on: dict[str, dict], off: dict[str, dict]) -> str:
    modes = ("sparse", "colbert", "dense+sparse", "all")
    lines = [
        "| set | " + " | ".join(f"{m} off → on" for m in modes) + " |",
        "|---" * (len(modes) + 1) + "|",
    ]
    for name in off:
        cells = []
        for m in modes:
            a, b = ndcg(off[name], m), ndcg(on[name], m)
            cells.append("–" if a is None or b is None else f"{a:.3f} → {b:.3f} ({b - a:+.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mcls_table(result: dict) -> str:
    lines = ["| system | nDCG@10 | Recall@100 | MRR@10 |", "|---|---|---|---|"]
    for system, row in result["scores"].items():
        lines.append(f"| {system} | {row['nDCG@10']:.3f} | {row['Recall@100']:.3f} | {row['MRR@10']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    args = ap.parse_args()
    on, off = load(args.eval_dir / "sd-on"), load(args.eval_dir / "sd-off")
    print("(a) nDCG@10 per mode vs BM25\n")
    print(main_table(on))
    if off:
        print("(b) self-distillation off → on, nDCG@10\n")
        print(ablation_table(on, off))
    mcls = args.eval_dir / "mcls" / "eval.json"
    if mcls.is_file():
        print("(c) MCLS, dense, longdoc_leval\n")
        print(mcls_table(json.loads(mcls.read_text())))


if __name__ == "__main__":
    main()
