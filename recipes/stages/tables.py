"""Print the issue-19 stage tables of docs/results.md from the reports the stage recipes wrote.

    python recipes/stages/tables.py runs/stages

Reads <run>/eval/classic/{base,retromae}/<set>/eval.json (domain_adapt.sh), <run>/eval/longdoc/*/eval.json
(long_docs.sh) and the RetroMAE logs <run>/retromae-*/train_log.jsonl (first and last logged loss).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODES = ("dense", "sparse", "colbert", "dense+sparse", "all")


def ndcg(path: Path, system: str) -> float | None:
    if not path.is_file():
        return None
    row = json.loads(path.read_text())["scores"].get(system)
    return None if row is None else row["nDCG@10"]


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def losses(run: Path) -> str:
    log = run / "train_log.jsonl"
    if not log.is_file():
        return "–"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return f"{rows[0]['loss']:.2f} → {rows[-1]['loss']:.2f} ({rows[-1]['step']} steps)"


def classic(run: Path) -> str:
    head = ["set", "BM25", *(f"{m}: base → RetroMAE" for m in MODES), "RetroMAE loss"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for base in sorted((run / "eval" / "classic" / "base").glob("*/eval.json")):
        name = base.parent.name
        adapted = run / "eval" / "classic" / "retromae" / name / "eval.json"
        cells = []
        for mode in MODES:
            b, a = ndcg(base, mode), ndcg(adapted, mode)
            delta = "" if a is None or b is None else f" ({a - b:+.3f})"
            cells.append(f"{fmt(b)} → {fmt(a)}{delta}")
        lines.append(f"| {name} | {fmt(ndcg(base, 'bm25'))} | " + " | ".join(cells)
                     + f" | {losses(run / f'retromae-{name}')} |")
    return "\n".join(lines)


def longdoc(run: Path) -> str:
    head = ["model", *MODES]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for path in sorted((run / "eval" / "longdoc").glob("*/eval.json")):
        lines.append(f"| {path.parent.name} | " + " | ".join(fmt(ndcg(path, m)) for m in MODES) + " |")
    for name in ("copy", "interpolate"):
        lines.append(f"\nRetroMAE loss, {name}: {losses(run / f'retromae-{name}')}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    print("## Domain adaptation (classic)\n\n" + classic(args.run) + "\n\n## Long documents\n\n" + longdoc(args.run))


if __name__ == "__main__":
    main()
