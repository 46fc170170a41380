"""The process `m3embed.index.footprint.measure_ram` starts: open one index and print what it took in RAM.

    python -m m3embed.index.ram_probe DIR [COLLECTION]    # {"ram_bytes": ..., "open_s": ..., ...}
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from m3embed.index.footprint import mapped_resident_bytes, memory_status


def main(argv: list[str]) -> None:
    import ctypes
    import ctypes.util

    import qdrant_edge  # noqa: F401 (imported before the baseline: the engines' code is not the index)

    with contextlib.suppress(ImportError):  # the [qdrant] extra: a core install opens Qdrant Edge indexes only
        import qdrant_client  # noqa: F401

    from m3embed.index.core import Index
    from m3embed.index.directory import DEFAULT_COLLECTION

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    before = memory_status()
    started = time.perf_counter()
    with Index.open(argv[0], collection=argv[1] if len(argv) > 1 else DEFAULT_COLLECTION) as index:
        index.count()
        open_s = time.perf_counter() - started
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
        after = memory_status()
        wal = mapped_resident_bytes(Path(argv[0]) / "shard" / "wal")
    print(json.dumps({"ram_bytes": after["VmRSS"] - before["VmRSS"],
                      "ram_peak_bytes": max(after["VmHWM"] - before["VmRSS"], 0), "wal_ram_bytes": wal,
                      "open_s": round(open_s, 3)}))


if __name__ == "__main__":
    main(sys.argv[1:])
