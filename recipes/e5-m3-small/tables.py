"""Print the e5-m3-small tables of docs/results.md from the reports that eval.sh wrote.

    python recipes/e5-m3-small/tables.py runs/e5-m3-small/eval

Expects <eval>/e5-m3-small/<set>/eval.json (every mode + BM25), <eval>/minilm-m3/<set>/eval.json (for its `all`
column, and for the table of both models' every mode side by side), <eval>/<model>/tatoeba/tatoeba.json and
optionally <eval>/<model>/mcls/eval.json. The "e5-small dense" column is the dense mode of the run named by
--base: a run of a model whose encoder is multilingual-e5-small unchanged (heads only; by default the run itself).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODES = ("dense", "sparse", "colbert", "dense+sparse", "all")
SINGLE = ("dense", "sparse", "colbert")
NEW, OLD = "e5-m3-small", "minilm-m3"
GROUPS = {
    "XQuAD, monolingual (dev)": [f"xquad/{lang}" for lang in ("en", "de", "es", "zh", "ar", "ru")],
    "XQuAD cross-lingual: query in X, English paragraphs (dev)": [f"xquad_xling/{lang}-en"
                                                                  for lang in ("de", "es", "zh", "ar", "ru")],
    "XQuAD-R, sentence level (dev)": [f"xquad_r/{lang}" for lang in ("en", "de", "es", "zh", "ar", "ru")],
    "classic English collections": [f"classic/{s}" for s in ("adi", "cacm", "cranfield", "lisa", "medline", "time")],
    "long documents": ["longdoc_leval"],
}


def load(directory: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(directory.glob("*/eval.json")):
        result = json.loads(path.read_text())
        out[result["dataset"].removeprefix("data/")] = result  # eval names a set by its last two path parts
    return out


def ndcg(result: dict | None, system: str) -> float | None:
    row = None if result is None else result["scores"].get(system)
    return None if row is None else row["nDCG@10"]


def cell(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "–"
    return f"**{value:.3f}**" if bold else f"{value:.3f}"


def ndcg_table(new: dict[str, dict], old: dict[str, dict], base: dict[str, dict]) -> str:
    head = ["set", "BM25", "e5-small dense", *(f"{NEW} {m}" for m in MODES), f"{OLD} all"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for group, sets in GROUPS.items():
        present = [s for s in sets if s in new]
        if not present:
            continue
        lines.append(f"| *{group}* |" + " |" * (len(head) - 1))
        for name in present:
            values = {m: ndcg(new.get(name), m) for m in MODES}
            best = max((v for v in values.values() if v is not None), default=None)
            bm25 = ndcg(new.get(name), "bm25") or ndcg(old.get(name), "bm25")
            cells = [cell(bm25), cell(ndcg(base.get(name), "dense"))] + [cell(values[m], values[m] == best)
                                                                          for m in MODES]
            lines.append(f"| {name} | " + " | ".join(cells + [cell(ndcg(old.get(name), 'all'))]) + " |")
    return "\n".join(lines) + "\n"


def both_table(new: dict[str, dict], old: dict[str, dict]) -> str:
    """Every mode of both models on every set either was run on; the better model's figure of each mode in bold."""
    head = ["set", "BM25", *(f"{model} {m}" for model in (NEW, OLD) for m in MODES)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for group, sets in GROUPS.items():
        present = [s for s in sets if s in new or s in old]
        if not present:
            continue
        lines.append(f"| *{group}* |" + " |" * (len(head) - 1))
        for name in present:
            a, b = new.get(name), old.get(name)
            pairs = [(ndcg(a, m), ndcg(b, m)) for m in MODES]
            beats = lambda x, y: x is not None and y is not None and x > y  # noqa: E731
            cells = [cell(x, beats(x, y)) for x, y in pairs] + [cell(y, beats(y, x)) for x, y in pairs]
            bm25 = ndcg(a, "bm25") or ndcg(b, "bm25")
            lines.append(f"| {name} | {cell(bm25)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def goals(new: dict[str, dict]) -> str:
    langs = [s for s in GROUPS["XQuAD, monolingual (dev)"] if s in new]
    xling = [s for s in GROUPS["XQuAD cross-lingual: query in X, English paragraphs (dev)"] if s in new]
    beats = [s for s in langs if ndcg(new[s], "all") > ndcg(new[s], "bm25")]
    best = [s for s in langs if ndcg(new[s], "all") >= max(ndcg(new[s], m) for m in SINGLE)]
    sparse = [s for s in langs if ndcg(new[s], "sparse") > ndcg(new[s], "bm25")]
    margins = [ndcg(new[s], "all") - ndcg(new[s], "bm25") for s in xling]
    lines = [f"* `all` > BM25 on {len(beats)} of {len(langs)} XQuAD languages (missing: "
             f"{', '.join(sorted(set(langs) - set(beats))) or 'none'})",
             f"* `all` ≥ best single mode on {len(best)} of {len(langs)} (missing: "
             f"{', '.join(sorted(set(langs) - set(best))) or 'none'})",
             f"* sparse > BM25 on {len(sparse)} of {len(langs)} ({', '.join(sparse) or 'none'})"]
    if margins:
        lines.append(f"* cross-lingual: `all` − BM25 from {min(margins):+.3f} to {max(margins):+.3f}")
    return "\n".join(lines) + "\n"


def tatoeba_table(reports: dict[str, dict]) -> str:
    pairs = sorted({p for r in reports.values() for p in r["accuracy"]})
    columns = [(model, mode) for model, r in reports.items() for mode in next(iter(r["accuracy"].values()))]
    head = ["pair"] + [f"{model} {mode}" for model, mode in columns]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    means = {c: [] for c in columns}
    for pair in pairs:
        row = []
        for model, mode in columns:
            value = reports[model]["accuracy"].get(pair, {}).get(mode)
            row.append(cell(value))
            if value is not None:
                means[(model, mode)].append(value)
        lines.append(f"| {pair} | " + " | ".join(row) + " |")
    lines.append("| mean | " + " | ".join(cell(sum(v) / len(v) if v else None) for v in means.values()) + " |")
    return "\n".join(lines) + "\n"


def mcls_table(result: dict) -> str:
    lines = ["| system | nDCG@10 | Recall@100 | MRR@10 |", "|---|---|---|---|"]
    for system, row in result["scores"].items():
        lines.append(f"| {system} | {row['nDCG@10']:.3f} | {row['Recall@100']:.3f} | {row['MRR@10']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--name", default=NEW, help=f"eval.sh's NAME of the {NEW} run (default: %(default)s)")
    ap.add_argument("--base", help="the run whose dense mode is e5-small's own (default: --name)")
    args = ap.parse_args()
    new, old = load(args.eval_dir / args.name), load(args.eval_dir / OLD)
    print("nDCG@10\n")
    print(ndcg_table(new, old, load(args.eval_dir / args.base) if args.base else new))
    print(goals(new))
    if old:
        print("nDCG@10, every mode of both models\n")
        print(both_table(new, old))
    reports = {m: json.loads(p.read_text()) for m in (args.name, OLD)
               if (p := args.eval_dir / m / "tatoeba" / "tatoeba.json").is_file()}
    if reports:
        print("Tatoeba accuracy@1\n")
        print(tatoeba_table(reports))
    for model in (args.name, OLD):
        path = args.eval_dir / model / "mcls" / "eval.json"
        if path.is_file():
            print(f"MCLS, {model}, longdoc_leval\n")
            print(mcls_table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
