"""Print the issue-19 stage tables of docs/results.md from the reports the stage recipes wrote.

    python recipes/stages/tables.py runs/stages

Reads <run>/eval/classic/{base,retromae,retromae-cls}/<set>/eval.json (domain_adapt.sh),
<run>/eval/unsup/{base,stage}/<set>/eval.json (unsupervised.sh), <run>/eval/longdoc{,-mcls}/*/eval.json
(long_docs.sh) and the training logs
<run>/{retromae-*,unsup-e5}/train_log.jsonl (first and last logged loss).
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


def compare(base_dir: Path, variant_dir: Path, variant: str, loss_of=None) -> str:
    """One row per set of base_dir: BM25, then each mode's base → variant nDCG@10 (and the difference)."""
    head = ["set", "BM25", *(f"{m}: base → {variant}" for m in MODES)] + ([f"{variant} loss"] if loss_of else [])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for base in sorted(base_dir.glob("*/eval.json")):
        name = base.parent.name
        other = variant_dir / name / "eval.json"
        cells = []
        for mode in MODES:
            b, a = ndcg(base, mode), ndcg(other, mode)
            delta = "" if a is None or b is None else f" ({a - b:+.3f})"
            cells.append(f"{fmt(b)} → {fmt(a)}{delta}")
        tail = [losses(loss_of(name))] if loss_of else []
        lines.append("| " + " | ".join([name, fmt(ndcg(base, "bm25")), *cells, *tail]) + " |")
    return "\n".join(lines)


def classic(run: Path) -> str:
    """base → RetroMAE with minilm-m3's mean-pooled bottleneck (the default), then with RetroMAE's [CLS]."""
    tables = []
    for name, label in (("retromae", "RetroMAE"), ("retromae-cls", "RetroMAE [CLS]")):
        tables.append(compare(run / "eval" / "classic" / "base", run / "eval" / "classic" / name, label,
                              lambda s, name=name: run / f"{name}-{s}"))
    return "\n\n".join(tables)


def unsupervised(run: Path) -> str:
    return compare(run / "eval" / "unsup" / "base", run / "eval" / "unsup" / "stage", "stage") + (
        f"\n\nunsupervised stage loss: {losses(run / 'unsup-e5')}")


def longdoc(run: Path) -> str:
    head = ["model", *MODES]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for path in sorted((run / "eval" / "longdoc").glob("*/eval.json")):
        lines.append(f"| {path.parent.name} | " + " | ".join(fmt(ndcg(path, m)) for m in MODES) + " |")
    for name in ("copy", "interpolate"):
        lines.append(f"\nRetroMAE loss, {name}: {losses(run / f'retromae-{name}')}")
    return "\n".join(lines)


def longdoc_mcls(run: Path) -> str:
    """eval_mcls.py's rows: dense and all with MCLS off, on, and on the documents only."""
    variants = ("mcls off", "mcls on", "mcls docs only")
    head = ["model", *(f"{m}, {v}" for m in ("dense", "all") for v in variants)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for path in sorted((run / "eval" / "longdoc-mcls").glob("*/eval.json")):
        cells = [fmt(ndcg(path, f"{m}, {v}")) for m in ("dense", "all") for v in variants]
        lines.append(f"| {path.parent.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    for title, table in (("Domain adaptation (classic)", classic), ("Unsupervised stage (e5-m3-small)", unsupervised),
                         ("Long documents", longdoc), ("Long documents, MCLS", longdoc_mcls)):
        print(f"## {title}\n\n{table(args.run)}\n")


if __name__ == "__main__":
    main()
