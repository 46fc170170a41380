from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse as sp

from m3embed.scoring import (
    colbert_score,
    compute_score,
    dense_scores,
    hybrid,
    lexical_score,
    lexical_scores,
    pair_scores,
)
from m3embed.types import M3Output, SparseVector


def _unit(rng, *shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_lexical_sums_products_over_shared_ids_only():
    q = SparseVector(np.array([1, 5, 9], np.int32), np.array([0.5, 0.2, 0.1], np.float32))
    d = SparseVector(np.array([5, 9, 11], np.int32), np.array([0.3, 0.4, 0.9], np.float32))
    assert lexical_score(q, d) == pytest.approx(0.2 * 0.3 + 0.1 * 0.4)
    qm = sp.csr_array((q.weights, (np.zeros(3, int), q.ids)), shape=(1, 20))
    dm = sp.csr_array((d.weights, (np.zeros(3, int), d.ids)), shape=(1, 20))
    assert lexical_scores(qm, dm)[0, 0] == pytest.approx(lexical_score(q, d))


def test_colbert_is_mean_over_query_of_max_over_doc():
    rng = np.random.default_rng(0)
    q, d = _unit(rng, 3, 8), _unit(rng, 5, 8)
    expected = np.mean([max(float(qi @ dj) for dj in d) for qi in q])
    assert colbert_score(q, d) == pytest.approx(expected, abs=1e-6)


def test_compute_score_matches_flagembedding_formulas():
    rng = np.random.default_rng(1)
    n, h, v = 4, 8, 30
    def out():
        dense = _unit(rng, n, h)
        w = np.where(rng.random((n, v)) < 0.3, rng.random((n, v)), 0).astype(np.float32)
        return M3Output(dense=dense, sparse=sp.csr_array(w), colbert=[_unit(rng, k + 2, h) for k in range(n)])
    q, p = out(), out()
    weights = (0.4, 0.2, 0.4)
    r = compute_score(q, p, weights)
    for i in range(n):
        d = float(q.dense[i] @ p.dense[i])
        s = lexical_score(q.sparse_vector(i), p.sparse_vector(i))
        c = colbert_score(q.colbert[i], p.colbert[i])
        assert r["dense"][i] == pytest.approx(d, abs=1e-6)
        assert r["sparse"][i] == pytest.approx(s, abs=1e-6)
        assert r["colbert"][i] == pytest.approx(c, abs=1e-6)
        assert r["sparse+dense"][i] == pytest.approx((0.2 * s + 0.4 * d) / 0.6, abs=1e-6)
        assert r["colbert+sparse+dense"][i] == pytest.approx(0.4 * d + 0.2 * s + 0.4 * c, abs=1e-6)
    assert dense_scores(q.dense, p.dense).shape == (n, n)
    assert set(pair_scores(q, p)) == {"dense", "sparse", "colbert"}
    with pytest.raises(ValueError, match="dense, sparse, colbert"):
        compute_score(q, p, (1, 1))


def test_hybrid_weights_only_the_modes_given():
    scores = {"dense": np.array([1.0, 0.0]), "sparse": np.array([0.5, 2.0])}
    np.testing.assert_allclose(hybrid(scores, (0.4, 0.2, 0.4)), [0.5, 0.4])
    np.testing.assert_allclose(hybrid(scores, (0.4, 0.2, 0.4), normalize=True), [0.5 / 0.6, 0.4 / 0.6])
