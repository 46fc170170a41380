"""Free-space checks before writes, so a full disk is one clear line instead of a crash or a partial file.

Qdrant Edge writes through memory-mapped sparse files: when the file system cannot back a page the kernel
sends SIGBUS and the process dies with no message. The only defence is to check free space before each write
(`check_free`) with an estimate of what it needs. Every refusal is a `DiskFullError` (an OSError with errno
ENOSPC) whose message names the path, the bytes needed and the bytes free.

This module imports nothing from the package: every other module may use it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

RESERVE = 8 * 2**20  # headroom kept free beyond every estimate (engine metadata, WAL pages, small files)


class DiskFullError(OSError):
    """Not enough free space for a write; the message names the path, the bytes needed and free."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message
        self.filename = None if path is None else str(path)

    def __str__(self) -> str:
        return self.message


def is_disk_full(error: BaseException) -> bool:
    """True for an OSError meaning no space (ENOSPC) or no quota (EDQUOT) left."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def human(n: float) -> str:
    """A byte count for messages: '812 B', '3.4 MB', '1.2 GB' (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def existing_parent(path: str | os.PathLike) -> Path:
    """`path` itself or its nearest existing ancestor (where a new file or directory would be created)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path` (or where it would go)."""
    return shutil.disk_usage(existing_parent(path)).free


FILE_RESERVE = 256 * 2**10  # headroom for plain files of a known size (directory entries, metadata)


def check_free(path: str | os.PathLike, need: int, what: str, *, hint: str = "", reserve: int = RESERVE) -> None:
    """Raise DiskFullError unless the file system of `path` has `need` bytes plus `reserve` free.

    Args:
        path: the file or directory to be written (need not exist yet).
        need: the estimated bytes the write takes.
        what: the write, for the message ("writing 64 documents", "optimizing").
        hint: an extra clause for the message, e.g. what was already saved.
        reserve: headroom kept free beyond `need` (RESERVE for the engine, FILE_RESERVE for plain files).
    """
    free = free_bytes(path)
    if free < need + reserve:
        raise DiskFullError(
            f"not enough free space for {what} in {path}: needs about {human(need + reserve)} "
            f"({human(need)} plus {human(reserve)} headroom), {human(free)} free on its file system"
            f"{'; ' + hint if hint else ''}; free some space or choose another location", path)


def allocated_bytes(path: str | os.PathLike) -> int:
    """Bytes a file or directory tree really occupies (allocated blocks: sparse files count what they use)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_blocks * 512
    total = 0
    for root, _, files in os.walk(p):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # removed meanwhile (an engine's temporary file)
                continue
    return total


def filesystem_type(path: str | os.PathLike) -> str | None:
    """The type of the file system holding `path` ("ext4", "tmpfs"...) from /proc/self/mounts; None elsewhere."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(existing_parent(path).resolve())
    best, kind = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind
