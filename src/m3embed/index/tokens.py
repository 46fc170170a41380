"""The ColBERT token store of an index directory: fixed-width codes per token, append-only, memory-mapped.

Layout under `<index>/colbert/`:

    CURRENT                the name of the live generation ("g000000"), replaced atomically by compaction
    g000000/codes.bin      one code per token (`m3embed.index.maxsim.code_bytes`), documents back to back
    g000000/scales.bin     one float32 per token (int8 and binary encodings)
    g000000/originals.bin  float16 rows per token, when kept beside int8 / binary codes for rescoring
    g000000/rows.bin       int64 (start token, token count) per row; row r is one stored document version

A document's row number lives in its engine payload (`ROW_KEY`), so the engine's write-ahead log stays the
single commit point: `append` writes the tokens, then their rows, and only then does the engine upsert the
points that name them. A row no point names (a replaced or deleted document, or one whose upsert never
happened) is never read; `compact` copies the named rows into a new generation and drops the rest. Opening
cuts a torn tail (a row whose tokens are not all there, a partial record) left by a crash mid-append.
Searches read through memory maps and never block on writers: each append maps the grown files anew and
publishes the new maps in one assignment.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from m3embed.diskspace import allocated_bytes
from m3embed.index.maxsim import QueryCode, code_bytes, decode_tokens, encode_documents, maxsim

ROW_KEY = "cb"  # the payload key holding a point's row number
_CURRENT = "CURRENT"
_FILES = ("codes.bin", "scales.bin", "originals.bin", "rows.bin")
_DEAD = -1  # the start of a row compaction dropped


class _Maps(NamedTuple):
    codes: np.ndarray  # (tokens, code_bytes) uint8
    scales: np.ndarray  # (tokens,) float32
    originals: np.ndarray  # (tokens, 2 * dim) uint8: float16 rows, or (0, 2 * dim)
    rows: np.ndarray  # (rows, 2) int64: start, count


class TokenStore:
    """ColBERT token rows of one index directory in one encoding (`m3embed.index.maxsim.ENCODINGS`).

    Attributes:
        directory: `<index>/colbert`.
        encoding: one of `m3embed.index.maxsim.ENCODINGS`.
        dim: the size of a token row.
        originals: whether float16 rows are kept beside int8 / binary codes (for rescoring).
    """

    def __init__(self, directory: Path, encoding: str, dim: int, originals: bool) -> None:
        self.directory = directory
        self.encoding = encoding
        self.dim = dim
        self.originals = originals and encoding in ("int8", "binary")
        self.code_bytes = code_bytes(encoding, dim)
        self._scaled = encoding in ("int8", "binary")
        self._gen = (directory / _CURRENT).read_text().strip()
        self._files: list = []
        self._maps = _Maps(*_empty(self.code_bytes, 2 * dim))

    @classmethod
    def create(cls, directory: Path, encoding: str, dim: int, originals: bool = False) -> TokenStore:
        """A new, empty store at `directory` (created)."""
        code_bytes(encoding, dim)  # refuse a bad encoding before writing anything
        (directory / "g000000").mkdir(parents=True)
        for name in _FILES:
            (directory / "g000000" / name).touch()
        _write_current(directory, "g000000")
        return cls.open(directory, encoding, dim, originals)

    @classmethod
    def open(cls, directory: Path, encoding: str, dim: int, originals: bool = False) -> TokenStore:
        """Open for reading and appending; drops a torn tail and generations a crashed compaction left."""
        if not (directory / _CURRENT).is_file():
            raise ValueError(f"index {directory.parent} is damaged: its ColBERT token store ({directory}) is "
                             "missing; rebuild the index")
        store = cls(directory, encoding, dim, originals)
        for p in directory.iterdir():
            if p.is_dir() and p.name != store._gen:
                shutil.rmtree(p, ignore_errors=True)
        store._repair()
        store._files = [open(store._path(name), "ab") for name in _FILES]  # noqa: SIM115 (held until close)
        store._remap()
        return store

    # ---- writing ----

    def append(self, docs: Sequence[np.ndarray]) -> np.ndarray:
        """Store each document's token rows (n_i, dim); returns their row numbers (int64). Durable (fsync) on
        return, before the caller commits the points that name them."""
        codes_f, scales_f, originals_f, rows_f = self._files
        start = self._maps.codes.shape[0]
        first_row = self._maps.rows.shape[0]
        rows = np.empty((len(docs), 2), dtype=np.int64)
        for i, x in enumerate(docs):
            if np.ndim(x) != 2 or np.shape(x)[1] != self.dim:
                raise ValueError(f"colbert vectors of shape {np.shape(x)}, but the token store holds rows of size "
                                 f"{self.dim}")
            rows[i] = start, len(x)
            start += len(x)
        written = []
        if len(docs):
            codes, scales, halves = encode_documents(docs, self.encoding, self.dim, self.originals)
            codes_f.write(codes.data)
            written.append(codes_f)
            if self._scaled:
                scales_f.write(scales.data)
                written.append(scales_f)
            if self.originals:
                originals_f.write(halves.data)
                written.append(originals_f)
        for f in written:
            f.flush()
            os.fdatasync(f.fileno())
        rows_f.write(rows.tobytes())  # rows last: a row is only ever written after all its tokens
        rows_f.flush()
        os.fdatasync(rows_f.fileno())
        self._remap()
        return np.arange(first_row, first_row + len(docs), dtype=np.int64)

    def compact(self, live: Iterable[int]) -> int:
        """Copy the rows in `live` (every row a stored point names) into a new generation, drop the others;
        returns the bytes freed. Row numbers stay as they are; the switch is one atomic rename of CURRENT, so a
        crash leaves either generation whole."""
        maps = self._maps
        keep = np.unique(np.fromiter(live, dtype=np.int64))
        if len(keep) and (keep[0] < 0 or keep[-1] >= len(maps.rows) or (maps.rows[keep, 0] == _DEAD).any()):
            raise ValueError("compaction was given rows the token store does not hold")
        before = allocated_bytes(self.directory)
        gen = f"g{int(self._gen[1:]) + 1:06d}"
        new = self.directory / gen
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
        rows = np.zeros_like(maps.rows)
        rows[:, 0] = _DEAD
        columns = [("codes.bin", maps.codes), ("scales.bin", maps.scales), ("originals.bin", maps.originals)]
        files = [open(new / name, "wb") for name, _ in columns]  # noqa: SIM115 (closed below)
        try:
            at = 0
            for part in np.array_split(keep, max(1, len(keep) // 4096)):
                counts = maps.rows[part, 1]
                take = np.concatenate([np.arange(s, s + c) for s, c in maps.rows[part]] + [np.zeros(0, np.int64)])
                for f, (_, data) in zip(files, columns):
                    if len(data):
                        f.write(data[take].tobytes())
                rows[part, 0] = at + np.cumsum(counts) - counts
                rows[part, 1] = counts
                at += int(counts.sum())
            for f in files:
                f.flush()
                os.fsync(f.fileno())
        finally:
            for f in files:
                f.close()
        with open(new / "rows.bin", "wb") as f:
            f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())
        old = self.directory / self._gen
        for f in self._files:
            f.close()
        _write_current(self.directory, gen)
        self._gen = gen
        self._files = [open(self._path(name), "ab") for name in _FILES]  # noqa: SIM115 (held until close)
        self._remap()
        shutil.rmtree(old, ignore_errors=True)
        return before - allocated_bytes(self.directory)

    # ---- reading ----

    def score(self, query: QueryCode, rows: np.ndarray, originals: bool = False) -> np.ndarray:
        """Σ over query rows of the max dot with each of these documents' tokens (`maxsim`), (len(rows),); from
        the float16 originals with `originals` (`query` then encoded for float16)."""
        maps = self._maps
        starts, counts = self._locate(maps, rows)
        if originals:
            return maxsim(query, maps.originals, maps.scales, starts, counts)
        return maxsim(query, maps.codes, maps.scales, starts, counts)

    def tokens(self, row: int) -> np.ndarray:
        """The float32 token rows (n, dim) of a document: its float16 originals where kept, else what its codes
        stand for."""
        maps = self._maps
        (start,), (count,) = self._locate(maps, np.asarray([row]))
        if self.originals:
            return decode_tokens(maps.originals[start:start + count], maps.scales, "float16", self.dim)
        scales = maps.scales[start:start + count] if self._scaled else maps.scales
        return decode_tokens(maps.codes[start:start + count], scales, self.encoding, self.dim)

    def footprint(self) -> dict[str, int]:
        """Tokens held (rows of replaced documents included until `compact`) and allocated bytes on disk."""
        return {"colbert_tokens": int(self._maps.codes.shape[0]),
                "colbert_disk_bytes": allocated_bytes(self.directory)}

    @property
    def stored_rows(self) -> int:
        """Rows compaction has not dropped (live ones and those awaiting compaction)."""
        return int((self._maps.rows[:, 0] != _DEAD).sum())

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []
        self._maps = _Maps(*_empty(self.code_bytes, 2 * self.dim))

    # ---- helpers ----

    def _path(self, name: str) -> Path:
        return self.directory / self._gen / name

    def _locate(self, maps: _Maps, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(maps.rows)):
            raise ValueError(f"the ColBERT token store of {self.directory.parent} holds {len(maps.rows)} rows, "
                             f"and a document names row {int(rows.max())}; the index is damaged, rebuild it")
        found = maps.rows[rows]
        if (found[:, 0] == _DEAD).any():
            raise ValueError(f"a document of {self.directory.parent} names a ColBERT row that compaction dropped; "
                             "the index is damaged, rebuild it")
        return found[:, 0], found[:, 1]

    def _repair(self) -> None:
        """Cut what a crash mid-append left: a partial row record, rows whose tokens are not all written,
        tokens (scales, originals) no row covers."""
        sizes = {name: self._path(name).stat().st_size for name in _FILES}
        n_rows = sizes["rows.bin"] // 16
        tokens = sizes["codes.bin"] // self.code_bytes
        if self._scaled:
            tokens = min(tokens, sizes["scales.bin"] // 4)
        if self.originals:
            tokens = min(tokens, sizes["originals.bin"] // (2 * self.dim))
        rows = np.fromfile(self._path("rows.bin"), dtype=np.int64, count=2 * n_rows).reshape(-1, 2)
        ends = np.where(rows[:, 0] == _DEAD, 0, rows[:, 0] + rows[:, 1])
        while n_rows and ends[n_rows - 1] > tokens:
            n_rows -= 1
        end = int(ends[:n_rows].max()) if n_rows else 0
        want = {"rows.bin": 16 * n_rows, "codes.bin": end * self.code_bytes,
                "scales.bin": 4 * end if self._scaled else 0,
                "originals.bin": 2 * self.dim * end if self.originals else 0}
        for name, size in want.items():
            if sizes[name] != size:
                os.truncate(self._path(name), size)

    def _remap(self) -> None:
        codes = _map(self._path("codes.bin"), np.uint8, self.code_bytes)
        scales = _map(self._path("scales.bin"), np.float32, 1).reshape(-1)
        originals = _map(self._path("originals.bin"), np.uint8, 2 * self.dim)
        rows = _map(self._path("rows.bin"), np.int64, 2)
        self._maps = _Maps(codes, scales, originals, rows)  # one assignment: readers see old maps or new ones


def _map(path: Path, dtype: type, width: int) -> np.ndarray:
    size = path.stat().st_size
    item = np.dtype(dtype).itemsize * width
    if size < item:
        return np.zeros((0, width), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(size // item, width))


def _empty(width: int, originals: int) -> tuple[np.ndarray, ...]:
    return (np.zeros((0, width), np.uint8), np.zeros(0, np.float32), np.zeros((0, originals), np.uint8),
            np.zeros((0, 2), np.int64))


def _write_current(directory: Path, gen: str) -> None:
    tmp = directory / (_CURRENT + ".tmp")
    with open(tmp, "w") as f:
        f.write(gen + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / _CURRENT)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
