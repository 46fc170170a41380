"""Measured size of an index: bytes on disk (allocated blocks) and RAM (resident memory that opening it adds
in a fresh process), per document and per ColBERT token. Measured, never computed from the vector sizes.

`python -m m3embed.index.footprint DIR` prints the RAM measurement of one index as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from m3embed.diskspace import allocated_bytes


def disk_footprint(directory: Path, colbert: dict[str, int], count: int) -> dict[str, Any]:
    """`disk_bytes` of the index directory (write-ahead log included) and, from the engine's colbert figures
    (`Store.colbert_footprint`), `colbert_disk_bytes` and `colbert_tokens`; with per-document and
    per-token ratios where their counts are known."""
    out: dict[str, Any] = {"disk_bytes": allocated_bytes(directory), **colbert}
    return {**out, **per_unit(out, count, colbert.get("colbert_tokens"))}


def per_unit(sizes: dict[str, Any], count: int, tokens: int | None) -> dict[str, float]:
    """`<size>_per_doc` and `<size>_per_token` (per ColBERT token) of each `*_bytes` entry."""
    out = {}
    for key, value in sizes.items():
        if key.endswith("_bytes") and isinstance(value, int):
            if count:
                out[f"{key}_per_doc"] = round(value / count, 1)
            if tokens:
                out[f"{key}_per_token"] = round(value / tokens, 1)
    return out


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError) as e:
        raise OSError(f"measuring RAM reads /proc/self/statm (Linux): {e}") from None
    return pages * os.sysconf("SC_PAGE_SIZE")


def measure_ram(location: str | Path, collection: str | None = None) -> int:
    """Resident memory (bytes) that opening the index adds in a fresh Python process: RSS after
    `Index.open` and a count, minus RSS before it with the engine's modules already imported. The index
    must not be open elsewhere (its directory lock)."""
    cmd = [sys.executable, "-m", "m3embed.index.footprint", str(location)] + ([collection] if collection else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring the RAM of index {location} failed: {last}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["ram_bytes"])


def _main(argv: list[str]) -> None:
    import qdrant_client  # noqa: F401 (imported before the baseline: the engines' code is not the index)
    import qdrant_edge  # noqa: F401

    from m3embed.index import Index
    from m3embed.index.core import DEFAULT_COLLECTION

    before = resident_bytes()
    with Index.open(argv[0], collection=argv[1] if len(argv) > 1 else DEFAULT_COLLECTION) as index:
        index.count()
        grown = resident_bytes() - before
    print(json.dumps({"ram_bytes": grown}))


if __name__ == "__main__":
    _main(sys.argv[1:])
