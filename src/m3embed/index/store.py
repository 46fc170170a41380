"""The small interface every engine implements, and the engine-neutral query plan it runs.

An engine stores, per document, up to three named vectors ("dense", "sparse", "colbert") and a payload
`{"id": user id, "text": str (optional), "meta": dict}` under a point id derived from the user id.
Search is described once, here, as a plan (`Nearest` leaves, rescoring `Nearest` over candidates, a
`WeightedSum` on top); each engine translates the plan into its own prefetch/formula objects.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from m3embed.errors import ParamError
from m3embed.index.manifest import ColbertStorage
from m3embed.modes import CANDIDATE_ROUTES, scored
from m3embed.types import SparseVector

DEFAULT_CANDIDATES = 100  # per candidate route (dense and sparse); the union is rescored
# dense searches use HNSW ef = max(4 x limit, 256): at 100k bge-m3-shaped documents ef 128 found 0.935 of the
# exact top 10 and ef 256 0.996 (benchmarks/search.py data, m=16, ef_construct=100), for +0.15 ms
MIN_HNSW_EF = 256
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/m3embed/index")


def point_id(doc_id: str) -> uuid.UUID:
    """The engine's point id for a user id: a uuid5, the same on every engine and every run."""
    return uuid.uuid5(_NAMESPACE, doc_id)


# ---- what is stored and what comes back ----


@dataclass
class DocBatch:
    """Documents to upsert: ids, payloads and the vectors of the modes the index stores.

    Attributes:
        ids: user ids (str), unique within the batch.
        payloads: one `{"id", "meta", ["text"]}` dict per document.
        dense: (n, h) float32, or None.
        sparse: n SparseVectors, or None.
        colbert: n arrays (n_tok_i, h) float32 (float16 too for the token store), or None.
    """

    ids: list[str]
    payloads: list[dict[str, Any]]
    dense: np.ndarray | None = None
    sparse: list[SparseVector] | None = None
    colbert: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)


class StoredHit(NamedTuple):
    """One result as an engine returns it: the payload holds the user id, text and metadata."""

    score: float
    payload: dict[str, Any]


class StoredVectors(NamedTuple):
    """A stored document's vectors (None for modes the index does not hold)."""

    dense: np.ndarray | None
    sparse: SparseVector | None
    colbert: np.ndarray | None


def stored_vectors(named: Mapping[str, Any]) -> StoredVectors:
    """An engine's named vectors of one point (dense list, sparse with indices/values, colbert rows) as NumPy."""
    sv = named.get("sparse")
    return StoredVectors(
        dense=np.asarray(named["dense"], dtype=np.float32) if "dense" in named else None,
        sparse=None if sv is None else SparseVector(np.asarray(sv.indices, dtype=np.int32),
                                                    np.asarray(sv.values, dtype=np.float32)),
        colbert=np.asarray(named["colbert"], dtype=np.float32) if "colbert" in named else None)


@dataclass(frozen=True)
class QueryVectors:
    """One query's representations: dense (h,), sparse, colbert (n_q, h); None where not needed."""

    dense: np.ndarray | None = None
    sparse: SparseVector | None = None
    colbert: np.ndarray | None = None


# ---- the query plan ----


@dataclass(frozen=True)
class Nearest:
    """Score by one named vector: a search over the collection, or a rescoring of `over`'s candidates."""

    using: str
    vector: np.ndarray | SparseVector = field(repr=False)
    limit: int
    over: tuple[Plan, ...] = ()
    ef: int | None = None  # HNSW ef for dense searches (None for sparse, colbert and rescoring)
    # a quantized colbert field: True scores with the quantized vectors, False with the originals; None: the
    # engine's default (fields without quantization)
    quantized: bool | None = None


@dataclass(frozen=True)
class WeightedSum:
    """s = Σ weights[i] · score of branches[i]; a candidate a branch did not score counts 0."""

    weights: tuple[float, ...]
    branches: tuple[Plan, ...]
    limit: int


@dataclass(frozen=True)
class Hybrid:
    """M3's ranking of the union of candidate searches, each candidate scored exactly, for an index whose
    ColBERT rows live in the token store (`m3embed.index.tokens`).

    Every candidate's score is w_d·dense + w_s·sparse + w_c·colbert (colbert = the mean over query rows of the
    max similarity), computed from its own vectors whichever route found it; a mode whose weight is 0 is not
    scored. With no routes (the exhaustive colbert scan) every stored document matching the filter is a candidate.

    Attributes:
        routes: one candidate search per route (dense, sparse leaves); () scores every document.
        weights: (dense, sparse, colbert).
        colbert: the query's ColBERT rows (n_q, h) when w_c is not 0.
        limit: results to return.
        colbert_top: score ColBERT only for this many of the union's best by `first` (None: all of them).
        first: (dense, sparse) weights that rank the union for `colbert_top` (the search weights, also in colbert
            mode, whose own ranking weighs only colbert).
        rescore: with originals kept, score the best this many again from them (None: no rescoring).
    """

    routes: tuple[Nearest, ...]
    weights: tuple[float, float, float]
    colbert: np.ndarray | None = field(default=None, repr=False)
    limit: int = 10
    colbert_top: int | None = None
    first: tuple[float, float] = (0.0, 0.0)
    rescore: int | None = None


Plan = Nearest | WeightedSum | Hybrid


def plan_search(q: QueryVectors, mode: str, k: int, candidates: int, weights: Sequence[float],
                stored: Sequence[str], hnsw_ef: int | None = None, colbert_top: int | None = None,
                storage: ColbertStorage = ColbertStorage(), tokens: bool = False, exhaustive: bool = False) -> Plan:
    """The plan that returns exactly M3's ranking for `mode`, or its quantized form for a quantized colbert field.

    The arguments are trusted: `Index.prepare` has checked them (`mode` against `stored`, the sizes >= 1,
    `colbert_top` >= k).

    Hybrid modes take candidates from dense and from sparse (`candidates` each, from the routes stored), then
    rescore their union with each mode in the formula; colbert on an index with neither route, or with
    `exhaustive`, scores every document. Qdrant's MaxSim is a sum over query vectors while M3's ColBERT score
    is the mean, so the colbert weight is divided by the number of query vectors.

    With `colbert_top` = R, the colbert and all modes score ColBERT only for the R best of the union by
    w_d·dense + w_s·sparse (ColBERT is the costly part); the others are ranked by that partial score.

    With a quantized colbert field (`storage.quantization`), the colbert and all modes rank by the same formula
    with ColBERT scored from the quantized vectors. Binary quantization scores a pair of vectors
    Σ sign(q_i)·sign(d_i) (in [-h, h]), so its weight is also divided by the size h. With `storage.rescore`,
    the best `storage.rescore_top(k)` of that ranking are scored again with the original vectors, which
    give their final scores and order.

    Args:
        q: the query's vectors (those the mode needs must be set).
        mode: one of `m3embed.modes.SEARCH_MODES`.
        k: results to return.
        candidates: candidates per route for hybrid modes.
        weights: (dense, sparse, colbert).
        stored: the modes the index holds.
        hnsw_ef: HNSW ef of dense searches (default max(4 x their limit, 256)).
        colbert_top: score ColBERT for this many candidates only (None: the whole union, exact M3).
        storage: the index's colbert storage.
        tokens: the index keeps its ColBERT rows in the token store: hybrid and colbert modes become one
            `Hybrid` node (one search per route, exact fusion in the engine's store).
        exhaustive: colbert mode only (`Index.prepare` checks): MaxSim over every stored document, no routes.
    """
    parts = scored(mode)
    wd, ws, wc = (float(w) for w in weights)
    if tokens and mode not in CANDIDATE_ROUTES:
        return _hybrid(q, mode, k, candidates, (wd, ws, wc), () if exhaustive else stored, hnsw_ef, colbert_top,
                       storage)
    scale = {"dense": wd, "sparse": ws, "colbert": 1.0 if mode == "colbert" else wc}
    if "colbert" in parts:
        scale["colbert"] /= max(len(_query_vector(q, "colbert")), 1)
    if exhaustive:
        stored = ("colbert",)  # no candidate route: the plan scans every document
    if "colbert" not in parts or not storage.quantized:
        return _plan(q, mode, k, candidates, scale, stored, hnsw_ef, colbert_top)
    if not storage.rescore:
        return _plan(q, mode, k, candidates, scale, stored, hnsw_ef, colbert_top, quantized=storage.quantization)
    top = storage.rescore_top(k) if colbert_top is None else min(storage.rescore_top(k), colbert_top)
    first = _plan(q, mode, top, candidates, scale, stored, hnsw_ef, colbert_top, quantized=storage.quantization)
    return WeightedSum(tuple(scale[m] for m in parts),
                       tuple(Nearest(m, _query_vector(q, m), top, over=(first,),
                                     quantized=False if m == "colbert" else None) for m in parts), k)


def _plan(q: QueryVectors, mode: str, k: int, candidates: int, scale: dict[str, float], stored: Sequence[str],
          hnsw_ef: int | None, colbert_top: int | None, quantized: str | None = None) -> WeightedSum | Nearest:
    """`plan_search`'s ranking, its colbert branches scored from the `quantized` vectors when set."""

    def leaf(m: str, limit: int) -> Nearest:
        ef = (hnsw_ef or max(4 * limit, MIN_HNSW_EF)) if m == "dense" else None
        return Nearest(m, _query_vector(q, m), limit, ef=ef)

    def node(m: str, limit: int, over: tuple[Plan, ...] = ()) -> Nearest:
        flag = True if m == "colbert" and quantized else None
        return Nearest(m, _query_vector(q, m), limit, over=over, quantized=flag)

    if mode in CANDIDATE_ROUTES:
        return leaf(mode, k)
    scale = dict(scale)
    if quantized == "binary":
        scale["colbert"] /= _query_vector(q, "colbert").shape[1]
    routes = tuple(leaf(m, candidates) for m in CANDIDATE_ROUTES if m in stored)
    union = candidates * len(routes)
    parts = scored(mode)
    if not routes:  # colbert alone: a MaxSim over every stored document
        return WeightedSum((scale["colbert"],), (node("colbert", k),), k)
    if colbert_top is None or "colbert" not in parts:
        return WeightedSum(tuple(scale[m] for m in parts), tuple(node(m, union, routes) for m in parts), k)
    base = tuple(r.using for r in routes)  # rank the union by w_d·dense + w_s·sparse, keep the best colbert_top
    first = WeightedSum(tuple(scale[m] for m in base), tuple(node(m, union, routes) for m in base), colbert_top)
    colbert = node("colbert", colbert_top, (first,))
    if mode == "colbert":
        return WeightedSum((scale["colbert"],), (colbert,), k)
    return WeightedSum((1.0, scale["colbert"]), (first, colbert), k)


def _hybrid(q: QueryVectors, mode: str, k: int, candidates: int, weights: tuple[float, float, float],
            stored: Sequence[str], hnsw_ef: int | None, colbert_top: int | None, storage: ColbertStorage) -> Hybrid:
    parts = scored(mode)
    w = tuple(weight if m in parts else 0.0 for m, weight in zip(("dense", "sparse", "colbert"), weights))
    if mode == "colbert":
        w = (0.0, 0.0, 1.0)
    routes = tuple(Nearest(m, _query_vector(q, m), candidates,
                           ef=(hnsw_ef or max(4 * candidates, MIN_HNSW_EF)) if m == "dense" else None)
                   for m in CANDIDATE_ROUTES if m in stored)
    colbert = _query_vector(q, "colbert") if w[2] else None
    keeps = storage.quantized and storage.rescore and storage.originals != "none"
    rescore = storage.rescore_top(k) if "colbert" in parts and keeps else None
    return Hybrid(routes, w, colbert, k, colbert_top, weights[:2], rescore)


def _query_vector(q: QueryVectors, mode: str) -> np.ndarray | SparseVector:
    v = getattr(q, mode)
    if v is None:
        raise ValueError(f"the query has no {mode} representation; encode it with modes including {mode!r}")
    return v


# ---- metadata filters ----


class Condition(NamedTuple):
    """One filter condition on a metadata field: kind is "match", "any" or "range"."""

    key: str
    kind: str
    value: Any


RANGE_OPS = ("gt", "gte", "lt", "lte")


def parse_filter(spec: Mapping[str, Any] | None) -> list[Condition]:
    """Turn `{"lang": "en", "tag": ["a", "b"], "year": {"gte": 2000}}` into conditions (all must hold).

    A scalar (str, int, bool) matches equal values, a list matches any of its values, and a dict with
    keys among gt/gte/lt/lte is a numeric range. Keys name metadata fields ("a.b" reaches nested ones).
    Anything else is a ParamError (param "filter").
    """
    if not spec:
        return []
    if not isinstance(spec, Mapping):
        raise ParamError(f"filter must be a dict of metadata field -> value, got {type(spec).__name__}",
                         param="filter")
    out = []
    for key, value in spec.items():
        if not isinstance(key, str) or not key:
            raise ParamError(f"filter keys must be non-empty metadata field names, got {key!r}", param="filter")
        if isinstance(value, Mapping):
            bad = [op for op in value if op not in RANGE_OPS]
            if bad or not value:
                raise ParamError(f"filter on {key!r}: range keys must be among {RANGE_OPS}, got {list(value)}",
                                 param="filter")
            out.append(Condition(key, "range", {op: float(v) for op, v in value.items()}))
        elif isinstance(value, (list, tuple, set)):
            values = list(value)
            if not values or len({type(v) for v in values}) != 1 or not isinstance(values[0], (str, int)):
                raise ParamError(f"filter on {key!r}: a list must hold values of one type, str or int",
                                 param="filter")
            out.append(Condition(key, "any", values))
        elif isinstance(value, (str, int, bool)):
            out.append(Condition(key, "match", value))
        else:
            raise ParamError(f"filter on {key!r}: expected str, int, bool, list or range dict, "
                             f"got {type(value).__name__}", param="filter")
    return out


# ---- the interface ----


class Store(ABC):
    """Where an index keeps its points. Engines implement these few methods and nothing else.

    Attributes:
        thread_safe: whether searches may run while another thread writes without outside locking.
    """

    thread_safe: bool = False

    @abstractmethod
    def upsert(self, batch: DocBatch) -> None:
        """Insert or replace documents by id."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None:
        """Remove documents by id (unknown ids are ignored)."""

    @abstractmethod
    def existing(self, ids: Sequence[str]) -> set[str]:
        """The subset of `ids` that is stored."""

    @abstractmethod
    def count(self, conditions: Sequence[Condition] = ()) -> int:
        """Number of stored documents (matching the conditions)."""

    @abstractmethod
    def search(self, plans: Sequence[Plan], conditions: Sequence[Condition], with_text: bool
               ) -> list[list[StoredHit]]:
        """Run one plan per query; hits best first."""

    @abstractmethod
    def vectors(self, ids: Sequence[str]) -> dict[str, StoredVectors]:
        """The stored vectors of these documents, by user id (missing ids left out)."""

    def flush(self) -> None:  # noqa: B027 (an optional hook: engines that persist every write need none)
        """Make everything upserted so far durable."""

    def optimize(self) -> None:  # noqa: B027 (an optional hook: engines that index as they go need none)
        """Build search structures now (HNSW graphs) rather than search unindexed segments."""

    def colbert_footprint(self) -> dict[str, int]:
        """Measured size of the colbert field where the engine can tell it apart cheaply: "colbert_tokens"
        (vectors stored) and "colbert_disk_bytes" (allocated bytes of its files); {} otherwise."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Release files, locks and connections."""
