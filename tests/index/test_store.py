"""The engine-neutral parts: point ids, the M3 query plan, metadata filters, mode checks."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from m3embed.index.store import (
    MIN_HNSW_EF,
    Nearest,
    QueryVectors,
    WeightedSum,
    parse_filter,
    plan_search,
    point_id,
)
from m3embed.modes import MODES
from m3embed.types import SparseVector

Q = QueryVectors(dense=np.ones(4, np.float32), sparse=SparseVector(np.array([5], np.int32), np.ones(1, np.float32)),
                 colbert=np.ones((8, 4), np.float32))


def test_point_ids_are_deterministic_uuids() -> None:
    assert point_id("doc-1") == point_id("doc-1") != point_id("doc-2")
    assert isinstance(point_id("x"), uuid.UUID) and point_id("x").version == 5


def test_single_modes_search_one_vector() -> None:
    plan = plan_search(Q, "dense", k=10, candidates=100, weights=(0.4, 0.2, 0.4), stored=MODES)
    assert plan == Nearest("dense", Q.dense, 10, ef=MIN_HNSW_EF)
    assert plan_search(Q, "sparse", 10, 100, (0.4, 0.2, 0.4), MODES).ef is None
    assert plan_search(Q, "dense", 100, 100, (0.4, 0.2, 0.4), MODES, hnsw_ef=64).ef == 64


def test_all_rescores_the_candidate_union_with_mean_maxsim_weight() -> None:
    plan = plan_search(Q, "all", k=10, candidates=50, weights=(0.4, 0.2, 0.4), stored=MODES)
    assert isinstance(plan, WeightedSum) and plan.limit == 10
    # Qdrant's MaxSim sums over the 8 query rows; M3 averages them
    assert plan.weights == pytest.approx((0.4, 0.2, 0.4 / 8))
    assert [b.using for b in plan.branches] == ["dense", "sparse", "colbert"]
    for branch in plan.branches:
        assert branch.limit == 100  # the whole union of 2 x 50 candidates is rescored
        assert [(c.using, c.limit) for c in branch.over] == [("dense", 50), ("sparse", 50)]
        assert branch.ef is None and branch.over[0].ef == max(4 * 50, MIN_HNSW_EF) and branch.over[1].ef is None


def test_colbert_top_ranks_the_union_by_dense_and_sparse_first() -> None:
    plan = plan_search(Q, "all", k=10, candidates=50, weights=(0.4, 0.2, 0.4), stored=MODES, colbert_top=30)
    first, colbert = plan.branches
    assert isinstance(first, WeightedSum) and first.weights == (0.4, 0.2) and first.limit == 30
    assert [b.using for b in first.branches] == ["dense", "sparse"] and first.branches[0].limit == 100
    assert colbert.using == "colbert" and colbert.over == (first,) and colbert.limit == 30
    assert plan.weights == pytest.approx((1.0, 0.4 / 8))
    assert plan_search(Q, "dense+sparse", 10, 50, (0.4, 0.2, 0.4), MODES, colbert_top=30) == plan_search(
        Q, "dense+sparse", 10, 50, (0.4, 0.2, 0.4), MODES)  # no ColBERT: nothing to limit


def test_hybrid_variants() -> None:
    ds = plan_search(Q, "dense+sparse", 5, 20, (1.0, 0.3, 0.0), MODES)
    assert [b.using for b in ds.branches] == ["dense", "sparse"] and ds.weights == (1.0, 0.3)
    col = plan_search(Q, "colbert", 5, 20, (0.4, 0.2, 0.4), MODES)
    assert [b.using for b in col.branches] == ["colbert"] and col.weights == pytest.approx((1 / 8,))
    only_dense = plan_search(Q, "colbert", 5, 20, (0.4, 0.2, 0.4), ("dense", "colbert"))
    assert [c.using for c in only_dense.branches[0].over] == ["dense"]  # candidates from what is stored
    with pytest.raises(ValueError, match="no colbert representation"):
        plan_search(QueryVectors(dense=Q.dense, sparse=Q.sparse), "all", 5, 20, (0.4, 0.2, 0.4), MODES)


def test_colbert_without_candidate_routes_scans_every_document() -> None:
    only = plan_search(Q, "colbert", 5, 20, (0.4, 0.2, 0.4), ("colbert",))
    assert only == WeightedSum((1 / 8,), (Nearest("colbert", Q.colbert, 5),), 5)  # no prefetch: exact MaxSim


def test_parse_filter() -> None:
    got = parse_filter({"lang": "en", "tag": ["a", "b"], "year": {"gte": 2000, "lt": 2010}, "ok": True})
    assert [(c.key, c.kind) for c in got] == [("lang", "match"), ("tag", "any"), ("year", "range"), ("ok", "match")]
    assert got[2].value == {"gte": 2000.0, "lt": 2010.0}
    assert parse_filter(None) == [] == parse_filter({})
    for bad, message in [({"a": {"near": 1}}, "range keys"), ({"a": [1, "x"]}, "one type"), ({"a": 1.5}, "got float"),
                         ({"": 1}, "non-empty"), ("lang=en", "must be a dict")]:
        with pytest.raises((ValueError, TypeError), match=message):
            parse_filter(bad)
