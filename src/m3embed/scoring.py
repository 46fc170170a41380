"""BGE-M3 scores as pure NumPy functions: dense, lexical, ColBERT, and their weighted hybrid (the training
losses' batched torch forms are in `m3embed.train.losses`, which takes `dense_scores` from here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from scipy import sparse as sp

from m3embed.checkpoint import SPARSE_NORMS
from m3embed.modes import MODES, SCORE_WEIGHTS, check_weights
from m3embed.types import M3Output, SparseVector

ArrayT = TypeVar("ArrayT")  # np.ndarray or torch.Tensor


def dense_scores(q: ArrayT, d: ArrayT) -> ArrayT:
    """q (m, h), d (n, h) → (m, n) inner products; NumPy arrays, or torch tensors (differentiable, for the
    training losses)."""
    return q @ d.T


def lexical_scores(q: sp.csr_array, d: sp.csr_array) -> np.ndarray:
    """q (m, V), d (n, V) lexical weights → (m, n): Σ over shared ids of w_q · w_d."""
    return (q @ d.T).toarray()


def normalize_lexical(m: sp.csr_array, norm: str) -> sp.csr_array:
    """Lexical weights (n, V) with each row divided by its `norm` (one of `m3embed.checkpoint.SPARSE_NORMS`): "l1"
    makes each row sum to 1 (an empty row stays empty); "none" returns `m` as it is."""
    if norm not in SPARSE_NORMS:
        raise ValueError(f"norm must be one of {SPARSE_NORMS}, got {norm!r}")
    if norm == "none":
        return m
    sums = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    out = sp.csr_array((m.data * np.repeat(scale, np.diff(m.indptr)).astype(m.dtype), m.indices, m.indptr),
                       shape=m.shape)
    out.has_sorted_indices = m.has_sorted_indices
    return out


def lexical_score(q: SparseVector, d: SparseVector) -> float:
    """Σ over token ids present in both of w_q · w_d (unnormalised, as in the paper)."""
    _, qi, di = np.intersect1d(q.ids, d.ids, assume_unique=True, return_indices=True)
    return float(np.dot(q.weights[qi].astype(np.float64), d.weights[di]))


def colbert_score(q: np.ndarray, d: np.ndarray) -> float:
    """q (n_q, h), d (n_d, h) → mean over query vectors of the max similarity to any document vector."""
    if len(q) == 0 or len(d) == 0:
        return 0.0
    return float((q @ d.T).max(axis=1).mean())


def colbert_scores(q: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
    """One query's ColBERT score against each document: (n,)."""
    return np.array([colbert_score(q, d) for d in docs], dtype=np.float32)


def hybrid(scores: dict[str, np.ndarray | float], weights: Sequence[float], normalize: bool = False
           ) -> np.ndarray | float:
    """s = w1·dense + w2·sparse + w3·colbert over the modes present; / Σw of those modes if normalize."""
    total, wsum = 0.0, 0.0
    for mode, w in zip(MODES, weights):
        if mode in scores and w:
            total = total + w * np.asarray(scores[mode], dtype=np.float64)
            wsum += w
    return total / wsum if normalize and wsum else total


def pair_scores(q: M3Output, p: M3Output) -> dict[str, np.ndarray]:
    """Scores of pair i = (query i, passage i) for every mode both outputs hold: dict of (n,) arrays."""
    if len(q) != len(p):
        raise ValueError(f"{len(q)} queries but {len(p)} passages; pairs need equal counts")
    out: dict[str, np.ndarray] = {}
    if q.dense is not None and p.dense is not None:
        out["dense"] = np.einsum("ih,ih->i", q.dense, p.dense)
    if q.sparse is not None and p.sparse is not None:
        out["sparse"] = np.asarray(q.sparse.multiply(p.sparse).sum(axis=1), dtype=np.float32).ravel()
    if q.colbert is not None and p.colbert is not None:
        out["colbert"] = np.array([colbert_score(a, b) for a, b in zip(q.colbert, p.colbert)], dtype=np.float32)
    return out


def compute_score(q: M3Output, p: M3Output, weights: Sequence[float] = SCORE_WEIGHTS) -> dict[str, list[float]]:
    """FlagEmbedding's `compute_score` result from encoded pairs.

    Keys: dense, sparse, colbert, "sparse+dense" = (w_d·d + w_s·s)/(w_d + w_s) and
    "colbert+sparse+dense" = (w_d·d + w_s·s + w_c·c)/(w_d + w_s + w_c); weights are (dense, sparse, colbert),
    by default `m3embed.modes.SCORE_WEIGHTS` (1, 1, 1) as FlagEmbedding. Outputs without some mode (a model
    lacking a head) give the modes present and "hybrid", their weighted sum divided by its weight sum.
    """
    wd, ws, wc = check_weights(weights, normalized=True)
    s = pair_scores(q, p)
    if len(s) < len(MODES):
        rows = {m: np.asarray(s[m], dtype=np.float32).tolist() for m in MODES if m in s}
        rows["hybrid"] = np.asarray(hybrid(s, (wd, ws, wc), normalize=True), dtype=np.float64).tolist()
        return rows
    d, lx, c = (np.asarray(s[m], dtype=np.float32) for m in ("dense", "sparse", "colbert"))
    return {
        "colbert": c.tolist(),
        "sparse": lx.tolist(),
        "dense": d.tolist(),
        "sparse+dense": ((ws * lx + wd * d) / (wd + ws)).tolist(),
        "colbert+sparse+dense": ((wc * c + ws * lx + wd * d) / (wd + ws + wc)).tolist(),
    }
