"""Synthetic M3 outputs at a model's shapes, for index tests and benchmarks (no model needed).

Documents are drawn around topics so neighbourhoods exist: dense vectors are normalised topic + document
noise, lexical weights follow a power law over the vocabulary, and ColBERT rows are the document direction
plus token noise. Queries are noisy copies of documents (a few of their tokens, a perturbed direction).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse as sp

from m3embed.types import M3Output

BGE_M3 = {"dim": 1024, "vocab": 250_002}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _lexical(rng: np.random.Generator, n: int, n_ids: int | np.ndarray, vocab: int) -> sp.csr_array:
    """n rows with about n_ids distinct power-law token ids each, weights in (0, 0.35]."""
    sizes = np.broadcast_to(np.asarray(n_ids), (n,))
    rows = []
    for size in sizes:
        ids = np.unique((vocab ** rng.random(int(size) * 2)).astype(np.int64) - 1)[: int(size)]
        rows.append(ids[ids > 3])  # ids 0-3 are special tokens, never in lexical weights
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)
    data = (0.35 * rng.random(len(indices)) + 1e-3).astype(np.float32)
    return sp.csr_array((data, indices, indptr), shape=(n, vocab))


def corpus(n: int, *, dim: int = BGE_M3["dim"], vocab: int = BGE_M3["vocab"], n_ids: int = 100,
           tokens: tuple[int, int] | None = (40, 160), topics: int = 64, seed: int = 0,
           colbert_dtype: type = np.float16) -> M3Output:
    """n documents; `tokens` = (min, max) ColBERT rows per document, None for no ColBERT output.

    ColBERT rows are kept in `colbert_dtype` (float16 halves the memory of large corpora).
    """
    rng = np.random.default_rng(seed)
    centers = _normalise(rng.standard_normal((topics, dim)).astype(np.float32))
    topic = rng.integers(0, topics, n)
    dense = _normalise(centers[topic] + 0.9 * _normalise(rng.standard_normal((n, dim), dtype=np.float32)))
    lexical = _lexical(rng, n, rng.integers(n_ids // 2, n_ids * 3 // 2 + 1, n), vocab)
    colbert = None
    n_tok = rng.integers(tokens[0], tokens[1] + 1, n) if tokens else rng.integers(40, 161, n)
    if tokens:
        colbert = []
        for i in range(n):
            rows = dense[i] + 1.2 * _normalise(rng.standard_normal((n_tok[i], dim), dtype=np.float32))
            colbert.append(_normalise(rows).astype(colbert_dtype))
    return M3Output(dense=dense.astype(np.float32), sparse=lexical, colbert=colbert, n_tokens=n_tok + 1)


def queries(docs: M3Output, n: int, *, q_ids: int = 12, q_tokens: tuple[int, int] = (8, 32), seed: int = 1
            ) -> tuple[M3Output, np.ndarray]:
    """n queries, each a noisy view of a random document; returns (outputs, source document indices)."""
    rng = np.random.default_rng(seed)
    src = rng.choice(len(docs), n, replace=False)
    dim = docs.dense.shape[1]
    dense = _normalise(docs.dense[src] + 1.0 * _normalise(rng.standard_normal((n, dim), dtype=np.float32)))
    rows, vals = [], []
    for d in src:
        lo, hi = docs.sparse.indptr[d], docs.sparse.indptr[d + 1]
        own = rng.choice(docs.sparse.indices[lo:hi], min(q_ids // 2, hi - lo), replace=False)
        rows.append(np.unique(np.concatenate([own, _lexical(rng, 1, q_ids // 2, docs.sparse.shape[1]).indices])))
        vals.append((0.3 * rng.random(len(rows[-1])) + 0.02).astype(np.float32))
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    lexical = sp.csr_array((np.concatenate(vals), np.concatenate(rows).astype(np.int32), indptr),
                           shape=(n, docs.sparse.shape[1]))
    colbert = None
    n_tok = rng.integers(q_tokens[0], q_tokens[1] + 1, n)
    if docs.colbert is not None:
        colbert = []
        for d, t in zip(src, n_tok):
            base = docs.colbert[d][rng.integers(0, len(docs.colbert[d]), t)].astype(np.float32)
            colbert.append(_normalise(base + 1.0 * _normalise(rng.standard_normal((t, dim), dtype=np.float32))))
    return M3Output(dense=dense.astype(np.float32), sparse=lexical, colbert=colbert, n_tokens=n_tok + 1), src
