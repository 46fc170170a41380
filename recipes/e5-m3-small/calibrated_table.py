"""The before/after tables of issue 21 from the reports eval.sh wrote for several variants of e5-m3-small.

    python recipes/e5-m3-small/calibrated_table.py runs/e5-m3-small/eval
    python recipes/e5-m3-small/calibrated_table.py runs/e5-m3-small/eval --variants next600=raw l1=l1

Per set: BM25, `dense+sparse` and `all` of each variant (NAME=LABEL, NAME an eval.sh run; default calibrated.sh's
three: f32-before, BGE-M3's weights; f32-weights, the fitted weights; f32-fold, those and case folding), and the
last variant's dense, sparse and colbert; then the targets of issue 21 checked on that last one. Tatoeba rows are
top-1 accuracy, every other row nDCG@10.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tables import GROUPS, load, ndcg

VARIANTS = {"f32-before": "BGE-M3 weights", "f32-weights": "fitted weights", "f32-fold": "fitted + capitals"}


def tatoeba(directory: Path) -> dict[str, dict[str, float]]:
    path = directory / "tatoeba" / "tatoeba.json"
    return json.loads(path.read_text())["accuracy"] if path.is_file() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--variants", nargs="+", metavar="NAME=LABEL", help="eval.sh runs (default: calibrated.sh's)")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variants) if args.variants else VARIANTS
    last = list(variants)[-1]
    runs = {v: load(args.eval_dir / v) for v in variants}
    head = ["set", "BM25"] + [f"{variants[v]}: {m}" for v in variants for m in ("dense+sparse", "all")] + [
        f"{variants[last]}: {m}" for m in ("dense", "sparse", "colbert")]
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    shipped = runs[last]
    for sets in GROUPS.values():
        for name in sets:
            if not all(name in r for r in runs.values()):
                continue
            cells = [f"{ndcg(shipped[name], 'bm25'):.3f}"]
            cells += [f"{ndcg(runs[v][name], m):.3f}" for v in variants for m in ("dense+sparse", "all")]
            cells += [f"{ndcg(shipped[name], m):.3f}" for m in ("dense", "sparse", "colbert")]
            print(f"| {name} | " + " | ".join(cells) + " |")
    acc = {v: tatoeba(args.eval_dir / v) for v in variants}
    if all(acc.values()):
        print("\n| Tatoeba pair | " + " | ".join(f"{variants[v]}: all" for v in variants)
              + f" | {variants[last]}: dense |")
        print("|---" * (len(variants) + 2) + "|")
        for pair in acc[last]:
            print(f"| {pair} | " + " | ".join(f"{acc[v][pair]['all']:.3f}" for v in variants)
                  + f" | {acc[last][pair]['dense']:.3f} |")
        mean = {v: sum(a[p]["all"] for p in a) / len(a) for v, a in acc.items()}
        dense = sum(a["dense"] for a in acc[last].values()) / len(acc[last])
        print("| mean | " + " | ".join(f"{mean[v]:.3f}" for v in variants) + f" | {dense:.3f} |")
    print(f"\nTargets on the last variant ({last}):")
    for name, result in sorted(shipped.items()):
        best = max(ndcg(result, m) for m in ("dense", "sparse", "colbert"))
        all_, ds, d, bm25 = (ndcg(result, m) for m in ("all", "dense+sparse", "dense", "bm25"))
        print(f"  {name}: all {all_:.3f} vs best single {best:.3f} ({all_ - best:+.3f}); all vs BM25 "
              f"{all_ - bm25:+.3f}; dense+sparse vs dense {ds - d:+.3f}; sparse vs BM25 "
              f"{ndcg(result, 'sparse') - bm25:+.3f}")


if __name__ == "__main__":
    main()
