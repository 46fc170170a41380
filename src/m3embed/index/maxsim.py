"""ColBERT token codes and the one MaxSim kernel over them.

A token row x (unit norm, `dim` values) is stored as a fixed-width code in one of three encodings:

| encoding | code                                   | decoded                 | bytes per token (dim 1024) |
|----------|----------------------------------------|-------------------------|----------------------------|
| float32  | the floats                             | x                       | 4 * dim (4,096)            |
| float16  | the halves                             | x rounded to float16    | 2 * dim (2,048)            |
| int8     | round(x / s), s = max abs(x) / 127     | s * code                | dim + 4 (1,028)            |
| binary   | one bit per dimension, 1 where x > 0   | s * (±1), s = |x|² / Σ|x_i| | dim / 8 + 4 (132)      |

`maxsim` scores one query against many documents in one call of the compiled kernel (`_maxsim.c`): each
document's tokens are decoded once, in cache, and dotted with every query row; nothing is decoded into memory.
Large candidate sets are split over the CPU's cores (the kernel releases the GIL).
The query stays in higher precision than the documents (asymmetric scoring): float32 against float codes,
int16 against int8 codes and int8 against bits, using q·(±1) = 2·(sum of q over the set bits) − sum(q).
`decode_tokens` gives the float rows a code stands for, so a NumPy reference computes the same scores. The
binary scale makes a code's dot with its own row exact (x·x̂ = |x|²): MaxSim is decided by the document tokens
closest to a query row, and their scores stay on the float scale that the hybrid weights expect.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from m3embed.index import _maxsim

ENCODINGS = ("float32", "float16", "int8", "binary")
_KERNEL_ID = {"float16": 0, "int8": 1, "binary": 2, "float32": 3}
_FLOATS = ("float32", "float16")
_EMPTY = np.zeros(0, dtype=np.float32)


def code_bytes(encoding: str, dim: int) -> int:
    """Bytes of one token's code (its scale, for the integer encodings, is stored apart as a float32)."""
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "binary": dim // 8}[check_encoding(encoding, dim)]


def check_encoding(encoding: str, dim: int) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"colbert encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if dim < 8 or dim % 8:
        raise ValueError(f"colbert vectors of size {dim}: the token store needs a size that is a multiple of 8")
    return encoding


def encode_tokens(x: np.ndarray, encoding: str, originals: bool = False
                  ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token rows (n, dim), float32 or float16 -> codes (n, code_bytes) uint8 and per-token scales (n,) float32
    (empty for floats), in one pass of the compiled encoder; with `originals`, also the rows as float16."""
    codes, scales, halves = encode_documents([x], encoding, np.shape(x)[1], originals)
    return (codes, scales, halves) if originals else (codes, scales)


def encode_documents(docs: Sequence[np.ndarray], encoding: str, dim: int, originals: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`encode_tokens` of several documents' rows, stacked: codes, scales and (with `originals`, else empty)
    float16 rows of all their tokens in order, each document encoded straight into its place."""
    check_encoding(encoding, dim)
    n = sum(len(x) for x in docs)
    codes = np.empty((n, code_bytes(encoding, dim)), dtype=np.uint8)
    scales = np.empty(n if encoding in ("int8", "binary") else 0, dtype=np.float32)
    halves = np.empty((n, dim) if originals else 0, dtype=np.float16)
    start = 0
    for x in docs:
        half = np.asarray(x).dtype == np.float16
        x = np.ascontiguousarray(x, dtype=np.float16 if half else np.float32)
        end = start + len(x)
        _maxsim.encode(_KERNEL_ID[encoding], x, half, dim, codes[start:end], scales[start:end] if len(scales) else
                       scales, halves[start:end] if originals else halves)
        start = end
    return codes, scales, halves


def decode_tokens(codes: np.ndarray, scales: np.ndarray, encoding: str, dim: int) -> np.ndarray:
    """The float32 rows (n, dim) that codes stand for (what `maxsim` scores against)."""
    codes = np.asarray(codes, dtype=np.uint8).reshape(-1, code_bytes(encoding, dim))
    if encoding == "float32":
        return codes.view(np.float32).copy()
    if encoding == "float16":
        return codes.view(np.float16).astype(np.float32)
    if encoding == "int8":
        return codes.view(np.int8).astype(np.float32) * np.asarray(scales, np.float32)[:, None]
    signs = np.unpackbits(codes, axis=1)[:, :dim].astype(np.float32) * 2 - 1
    return signs * np.asarray(scales, np.float32)[:, None]


@dataclass(frozen=True)
class QueryCode:
    """A query's rows in the precision the kernel scores `encoding` codes with.

    Attributes:
        encoding: the documents' encoding.
        rows: float32 (float codes), int16 (int8 codes) or int8 (binary codes), (n_q, dim), C-contiguous.
        scale: (n_q,) float32, a row's value = scale * integer row (integer encodings; empty otherwise).
        total: (n_q,) float32, the sum of each integer row (binary; empty otherwise).
    """

    encoding: str
    rows: np.ndarray
    scale: np.ndarray
    total: np.ndarray

    def values(self) -> np.ndarray:
        """The float32 query rows the kernel effectively scores with."""
        if self.encoding in _FLOATS:
            return self.rows
        return self.rows.astype(np.float32) * self.scale[:, None]


def encode_query(q: np.ndarray, encoding: str) -> QueryCode:
    """Quantize a query's rows (n_q, dim) once for scoring documents stored in `encoding`.

    int16 rows for int8 codes are bounded so that a dot of `dim` products cannot overflow int32.
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.ndim != 2 or len(q) == 0:
        raise ValueError(f"a ColBERT query needs at least one row of size dim, got shape {q.shape}")
    dim = q.shape[1]
    check_encoding(encoding, dim)
    if encoding in _FLOATS:
        return QueryCode(encoding, q, _EMPTY, _EMPTY)
    top, dtype = (127, np.int8) if encoding == "binary" else (min(32767, (2**31 - 1) // (dim * 127)), np.int16)
    scale = np.abs(q).max(axis=1) / top
    ints = np.rint(q / np.where(scale > 0, scale, 1)[:, None]).astype(dtype)
    total = ints.sum(axis=1, dtype=np.int64).astype(np.float32) if encoding == "binary" else _EMPTY
    return QueryCode(encoding, ints, scale.astype(np.float32), total)


def maxsim(query: QueryCode, codes: np.ndarray, scales: np.ndarray, starts: np.ndarray, counts: np.ndarray
           ) -> np.ndarray:
    """Σ over query rows of the max dot with each document's tokens: (n_docs,) float32 (0 for a document with
    no tokens). Document c owns token rows starts[c] : starts[c] + counts[c] of `codes` (uint8, one row per
    token, any array or memory map) and `scales` (float32, one per token; unused for the float encodings).

    M3's ColBERT score is this divided by the number of query rows.
    """
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if starts.shape != counts.shape:
        raise ValueError(f"{len(starts)} starts but {len(counts)} counts; give one of each per document")
    out = np.empty(len(starts), dtype=np.float32)
    if not len(starts):
        return out
    n_q, dim = query.rows.shape
    codes, scales = _c_bytes(codes), _c_bytes(scales)

    def run(part: slice) -> None:
        _maxsim.maxsim(_KERNEL_ID[query.encoding], query.rows, query.scale, query.total, n_q, dim, codes, scales,
                       starts[part], counts[part], out[part])

    threads = min(_THREADS, int(counts.sum()) // SPLIT_TOKENS)
    if threads < 2:
        run(slice(None))
        return out
    # documents in `threads` runs of about equal tokens, scored at once (the kernel releases the GIL)
    cuts = np.searchsorted(np.cumsum(counts), np.linspace(0, counts.sum(), threads + 1)[1:-1])
    bounds = [0, *cuts.tolist(), len(starts)]
    list(_pool().map(run, [slice(a, b) for a, b in zip(bounds, bounds[1:])]))
    return out


SPLIT_TOKENS = 4096  # a search scores its candidates in one thread per this many tokens, up to the CPU count
_THREADS = os.cpu_count() or 1


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_THREADS, thread_name_prefix="m3embed-maxsim")


ISAS = ("portable", "avx2", "avx512-vnni", "amx")  # the kernels, each level using those before it where it has none


def kernel_isa() -> str:
    """The best kernels this CPU runs (within `limit_isa`): "amx" or "avx512-vnni" (binary codes; AVX2 for the
    others), "avx2" or "portable"."""
    return _maxsim.simd()


def limit_isa(isa: str) -> None:
    """Use at most the kernels of `isa` (one of ISAS), e.g. to compare them or test each on one CPU."""
    _maxsim.limit(ISAS.index(isa))


def _c_bytes(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if not a.flags.c_contiguous:
        raise ValueError("token codes and scales must be contiguous arrays")
    return a.reshape(-1).view(np.uint8)
