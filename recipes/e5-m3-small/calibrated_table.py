"""The before/after tables of issue 21 items 2-3 from the reports calibrated.sh wrote.

    python recipes/e5-m3-small/calibrated_table.py runs/e5-m3-small/eval

Per set: BM25, and for each variant (f32-before: BGE-M3's weights; f32-weights: the fitted weights; f32-fold:
the fitted weights and case folding) dense, sparse, `dense+sparse` and `all`; then the targets of issue 21
checked on the shipped variant (f32-fold). Tatoeba rows are top-1 accuracy, every other row nDCG@10.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tables import GROUPS, load, ndcg

VARIANTS = {"f32-before": "BGE-M3 weights", "f32-weights": "fitted weights", "f32-fold": "fitted + capitals"}
MODES = ("dense", "sparse", "colbert", "dense+sparse", "all")


def tatoeba(directory: Path) -> dict[str, dict[str, float]]:
    path = directory / "tatoeba" / "tatoeba.json"
    return json.loads(path.read_text())["accuracy"] if path.is_file() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", type=Path)
    args = ap.parse_args()
    runs = {v: load(args.eval_dir / v) for v in VARIANTS}
    head = ["set", "BM25"] + [f"{VARIANTS[v]}: {m}" for v in VARIANTS for m in ("dense+sparse", "all")] + [
        "shipped: dense", "shipped: sparse", "shipped: colbert"]
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    shipped = runs["f32-fold"]
    for sets in GROUPS.values():
        for name in sets:
            if not all(name in r for r in runs.values()):
                continue
            cells = [f"{ndcg(shipped[name], 'bm25'):.3f}"]
            cells += [f"{ndcg(runs[v][name], m):.3f}" for v in VARIANTS for m in ("dense+sparse", "all")]
            cells += [f"{ndcg(shipped[name], m):.3f}" for m in ("dense", "sparse", "colbert")]
            print(f"| {name} | " + " | ".join(cells) + " |")
    acc = {v: tatoeba(args.eval_dir / v) for v in VARIANTS}
    if all(acc.values()):
        print("\n| Tatoeba pair | " + " | ".join(f"{VARIANTS[v]}: all" for v in VARIANTS) + " | shipped: dense |")
        print("|---" * (len(VARIANTS) + 2) + "|")
        for pair in acc["f32-fold"]:
            print(f"| {pair} | " + " | ".join(f"{acc[v][pair]['all']:.3f}" for v in VARIANTS)
                  + f" | {acc['f32-fold'][pair]['dense']:.3f} |")
        mean = {v: sum(a[p]["all"] for p in a) / len(a) for v, a in acc.items()}
        dense = sum(a["dense"] for a in acc["f32-fold"].values()) / len(acc["f32-fold"])
        print("| mean | " + " | ".join(f"{mean[v]:.3f}" for v in VARIANTS) + f" | {dense:.3f} |")
    print("\nTargets on the shipped variant (f32-fold):")
    for name, result in sorted(shipped.items()):
        best = max(ndcg(result, m) for m in ("dense", "sparse", "colbert"))
        all_, ds, d, bm25 = (ndcg(result, m) for m in ("all", "dense+sparse", "dense", "bm25"))
        print(f"  {name}: all {all_:.3f} vs best single {best:.3f} ({all_ - best:+.3f}); all vs BM25 "
              f"{all_ - bm25:+.3f}; dense+sparse vs dense {ds - d:+.3f}; sparse vs BM25 "
              f"{ndcg(result, 'sparse') - bm25:+.3f}")


if __name__ == "__main__":
    main()
