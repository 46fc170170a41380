"""Synthetic M3 outputs at a model's shapes, for index tests and benchmarks (no model needed).

Documents are drawn around topics so neighbourhoods exist: dense vectors are normalised topic + document
noise, lexical weights follow a power law over the vocabulary, and ColBERT rows are the text's dense
direction plus token noise, so that ColBERT and dense scores agree the way they do when one encoder makes
both (with token rows independent of the dense vector, a dense/sparse candidate union cannot find the
M3 top 10). Queries are noisy copies of documents: half of their lexical ids, a perturbed direction.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import sparse as sp

from m3embed.types import M3Output

BGE_M3 = {"dim": 1024, "vocab": 250_002}
TOKEN_NOISE = 0.8  # ColBERT row = normalise(dense + 0.8 · unit noise): corr(dense, colbert score) ≈ 0.98


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _lexical(rng: np.random.Generator, n: int, n_ids: int | np.ndarray, vocab: int) -> sp.csr_array:
    """n rows with about n_ids distinct power-law token ids each (small ids are the frequent ones)."""
    sizes = np.broadcast_to(np.asarray(n_ids), (n,))
    rows = []
    for size in sizes:
        ids = np.unique((vocab ** rng.random(int(size) * 2)).astype(np.int64) - 1)[: int(size)]
        rows.append(ids[ids > 3])  # ids 0-3 are special tokens, never in lexical weights
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)
    return sp.csr_array((_weights(rng, indices, vocab), indices, indptr), shape=(n, vocab))


def _weights(rng: np.random.Generator, ids: np.ndarray, vocab: int) -> np.ndarray:
    """Lexical weights in (0, 0.35]: frequent (small) ids weigh little, as M3's learned weights do."""
    rarity = np.log1p(ids) / np.log(vocab)
    return ((0.02 + 0.33 * rarity) * rng.uniform(0.5, 1.0, len(ids))).astype(np.float32)


def corpus(n: int, *, dim: int = BGE_M3["dim"], vocab: int = BGE_M3["vocab"], n_ids: int = 100,
           tokens: tuple[int, int] = (40, 160), topics: int = 64, seed: int = 0, colbert: bool = True
           ) -> M3Output:
    """n documents with about `n_ids` lexical ids and `tokens` = (min, max) ColBERT rows each.

    With colbert=False the ColBERT rows are left out (n_tokens still says how many each document has);
    `colbert_of` makes any document's rows on demand, the same ones `corpus` would have made.
    """
    rng = np.random.default_rng(seed)
    centers = _normalise(rng.standard_normal((topics, dim)).astype(np.float32))
    topic = rng.integers(0, topics, n)
    dense = _normalise(centers[topic] + 0.9 * _normalise(rng.standard_normal((n, dim), dtype=np.float32)))
    lexical = _lexical(rng, n, rng.integers(n_ids // 2, n_ids * 3 // 2 + 1, n), vocab)
    n_tok = rng.integers(tokens[0], tokens[1] + 1, n)
    docs = M3Output(dense=dense.astype(np.float32), sparse=lexical, n_tokens=n_tok + 1)
    if colbert:
        docs.colbert = colbert_of(docs, range(n), seed)
    return docs


def colbert_of(docs: M3Output, idx: Iterable[int], seed: int = 0, dtype: type = np.float16) -> list[np.ndarray]:
    """ColBERT rows (n_tokens - 1, dim) of documents `idx`: the document direction plus token noise.

    Each document has its own random stream, so any subset can be made alone, in any order. Rows are kept
    in `dtype` (float16 halves the memory of large corpora).
    """
    out = []
    for i in idx:
        rng = np.random.default_rng([seed, 7, int(i)])
        out.append(_rows(rng, docs.dense[i], int(docs.n_tokens[i]) - 1).astype(dtype))
    return out


def _rows(rng: np.random.Generator, direction: np.ndarray, n: int) -> np.ndarray:
    noise = _normalise(rng.standard_normal((n, len(direction)), dtype=np.float32))
    return _normalise(direction + TOKEN_NOISE * noise)


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
        vals.append(_weights(rng, rows[-1], docs.sparse.shape[1]))
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    lexical = sp.csr_array((np.concatenate(vals), np.concatenate(rows).astype(np.int32), indptr),
                           shape=(n, docs.sparse.shape[1]))
    n_tok = rng.integers(q_tokens[0], q_tokens[1] + 1, n)
    colbert = [_rows(rng, dense[i], int(t)) for i, t in enumerate(n_tok)]
    return M3Output(dense=dense.astype(np.float32), sparse=lexical, colbert=colbert, n_tokens=n_tok + 1), src
