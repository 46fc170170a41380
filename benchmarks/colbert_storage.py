"""ColBERT storage study (issue 10). One function per part; this file holds the dispatch:

- `--part scale`: `all` latency, resident memory and disk against corpus size (`colbert_scale.part_scale`,
  self-contained in benchmarks/colbert_scale.py, which also runs alone).

    python benchmarks/colbert_storage.py --part scale --storages float16 binary-disk --sizes 10000 30000 60000 \\
        --plot docs/colbert_scale.png
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from colbert_scale import add_scale_args, part_scale, scale_child, scale_table

PARTS: dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], Callable[[list], str]]] = {
    "scale": (part_scale, scale_table),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "scale-child"], required=True)
    parser.add_argument("--tmp", type=Path, default=None, help="where the indexes are built (default: $TMPDIR)")
    parser.add_argument("--out", type=Path, default=Path("runs/colbert_storage"))
    parser.add_argument("--tables", type=Path, default=None, help="print the tables of an earlier run's JSON")
    add_scale_args(parser)
    args = parser.parse_args()
    if args.child_index:  # a measuring child of --part scale
        scale_child(args)
        return
    run, table = PARTS[args.part]
    if args.tables:
        print(table(json.loads(args.tables.read_text())["rows"]))
        return
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.part}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result["rows"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
