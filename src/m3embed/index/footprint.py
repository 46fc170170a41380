"""Measured size of an index: bytes on disk (allocated blocks) and RAM (resident memory that opening it adds
in a fresh process), per document and per ColBERT token. Measured, never computed from the vector sizes.

`python -m m3embed.index.ram_probe DIR` prints the RAM measurement of one index as JSON (`measure_ram` runs it).
"""

from __future__ import annotations

import json
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


def memory_status() -> dict[str, int]:
    """This process's resident set and its peak, in bytes (Linux /proc/self/status: VmRSS, VmHWM)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError as e:
        raise OSError(f"measuring RAM reads /proc/self/status (Linux): {e}") from None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def mapped_resident_bytes(under: Path) -> int:
    """Resident bytes of this process's file mappings under a directory (/proc/self/smaps)."""
    prefix, total, inside = str(under.resolve()), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header line
            inside = len(head) >= 6 and head[5].startswith(prefix)
        elif inside and head and head[0] == "Rss:":
            total += int(head[1]) * 1024
    return total


def measure_ram(location: str | Path, collection: str | None = None) -> dict[str, int]:
    """What opening the index costs in RAM, measured in a fresh Python process (the index must not be open
    elsewhere: its directory lock):

    - `ram_bytes`: resident memory added by `Index.open` and a count, once the C allocator has returned
      freed memory (glibc `malloc_trim`), over the process with the engines' modules imported;
    - `ram_peak_bytes`: the peak while opening (Qdrant Edge replays its write-ahead log then);
    - `wal_ram_bytes`: the part of `ram_bytes` that is the engine's write-ahead log mapped in (page cache
      the system can reclaim), Qdrant Edge only;
    - `open_s`: seconds `Index.open` and the count took.
    """
    cmd = [sys.executable, "-m", "m3embed.index.ram_probe", str(location)] + ([collection] if collection else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring the RAM of index {location} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])
