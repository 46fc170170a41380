"""The docs/results.md table of the reranker: nDCG@10 of `all` and `all+rerank` per set, and the added time.

    python recipes/minilm-reranker/tables.py runs/minilm-reranker/eval/rerank
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ("xquad_en", "classic_adi", "classic_cacm", "classic_cranfield", "classic_lisa", "classic_medline",
         "classic_time")


def main(root: Path) -> None:
    print("| set | queries | all | all + rerank top-100 | Δ | rerank ms / query (wall) | rerank CPU ms / query |")
    print("|---|---|---|---|---|---|---|")
    deltas = []
    for name in ORDER:
        path = root / name / "eval.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        base, reranked = r["scores"]["all"]["nDCG@10"], r["scores"]["all+rerank"]["nDCG@10"]
        deltas.append(reranked - base)
        ms, cpu = r["settings"]["rerank ms per query"]["all"], r["settings"]["rerank CPU ms per query"]["all"]
        delta = reranked - base
        cells = [r["dataset"], r["n_queries"], f"{base:.4f}", f"{reranked:.4f}", f"{delta:+.4f}", f"{ms:.0f}",
                 f"{cpu:.0f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    if deltas:
        print(f"| mean | | | | {sum(deltas) / len(deltas):+.4f} | | |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
