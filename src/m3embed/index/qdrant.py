"""The scale-out engine: a Qdrant collection through `qdrant-client`.

`url=` reaches a server or a sharded/replicated cluster; `path=` and ":memory:" run qdrant-client's local
mode, which answers the same API (used in tests as the stand-in for a server, none being installable here).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from m3embed._optional import require
from m3embed.index.manifest import ColbertStorage, Manifest
from m3embed.index.store import (
    Condition,
    DocBatch,
    Nearest,
    Plan,
    Store,
    StoredHit,
    StoredVectors,
    WeightedSum,
    point_id,
    stored_vectors,
)
from m3embed.types import SparseVector

# the [qdrant] extra: without it, importing this module raises MissingExtra with the one-line install hint
QdrantClient = require("qdrant_client", "qdrant").QdrantClient
models = require("qdrant_client.models", "qdrant")
_exceptions = require("qdrant_client.http.exceptions", "qdrant")
ResponseHandlingException, UnexpectedResponse = _exceptions.ResponseHandlingException, _exceptions.UnexpectedResponse

METADATA_KEY = "m3embed"  # the manifest, kept in the collection's metadata
F = TypeVar("F", bound=Callable[..., Any])


def describe_client(client: Any) -> str:
    """Where a client points: its URL, host:port, local path or ":memory:"."""
    opts = getattr(client, "init_options", {}) or {}
    if opts.get("url"):
        return str(opts["url"])
    if opts.get("host"):
        return f"{opts['host']}:{opts.get('port')}"
    return str(opts.get("path") or opts.get("location") or type(client).__name__)


@contextlib.contextmanager
def server_errors(where: str) -> Iterator[None]:
    """An unreachable server becomes a one-line ConnectionError naming it; a refused API key a PermissionError."""
    try:
        yield
    except ResponseHandlingException as e:  # the transport failed: refused, DNS, timeout, TLS
        cause = e.source if getattr(e, "source", None) is not None else e
        raise ConnectionError(f"cannot reach the Qdrant server at {where} ({cause}); start it, or check the URL "
                              "and the network") from None
    except UnexpectedResponse as e:
        if e.status_code in (401, 403):
            raise PermissionError(f"the Qdrant server at {where} refused the request ({e.status_code} "
                                  f"{e.reason_phrase}); pass its API key") from None
        raise
    except Exception as e:
        if type(e).__module__.startswith("grpc") and "UNAVAILABLE" in str(getattr(e, "code", lambda: "")()):
            raise ConnectionError(f"cannot reach the Qdrant server at {where} (gRPC unavailable); start it, "
                                  "or check the URL and the network") from None
        raise


def _remote(method: F) -> F:
    @functools.wraps(method)
    def call(self: QdrantStore, *args: Any, **kwargs: Any) -> Any:
        with server_errors(self.where):
            return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


class QdrantStore(Store):
    """Points in one collection of a Qdrant server or of qdrant-client local mode."""

    def __init__(self, client: QdrantClient, collection: str, owns_client: bool = True) -> None:
        self.client = client
        self.collection = collection
        self.where = describe_client(client)
        self.owns_client = owns_client  # False for a client the caller passed in: left open on close()
        # local mode: exact search (no HNSW parameters to send), plain Python/NumPy without locks
        self.local = is_local(client)
        self.thread_safe = not self.local

    @classmethod
    def create(cls, client: QdrantClient, collection: str, manifest: Manifest,
               collection_options: Mapping[str, Any] | None = None, owns_client: bool = True) -> QdrantStore:
        """Create the collection with named vectors for the manifest's modes.

        Args:
            collection_options: passed to `create_collection` (e.g. shard_number, replication_factor,
                write_consistency_factor), except `on_disk`: True keeps vectors, the sparse index and payloads on
                disk (memory-mapped) instead of in RAM.
        """
        options = dict(collection_options or {})
        on_disk = bool(options.pop("on_disk", False))
        if "colbert" in manifest.modes:
            _check_storage(manifest.colbert_storage, client)
        with server_errors(describe_client(client)):
            exists = client.collection_exists(collection)
        if exists:
            raise ValueError(f"collection {collection!r} already exists; open it instead, or pick "
                                  "another collection name")
        vectors = {}
        if "dense" in manifest.modes:
            vectors["dense"] = models.VectorParams(size=manifest.dim, distance=models.Distance.DOT,
                                                   on_disk=on_disk or None)
        if "colbert" in manifest.modes:
            storage = manifest.colbert_storage
            vectors["colbert"] = models.VectorParams(
                size=manifest.colbert_dim, distance=models.Distance.DOT,
                datatype=models.Datatype.FLOAT16 if storage.dtype == "float16" else None,
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                quantization_config=_quantization(storage),
                hnsw_config=models.HnswConfigDiff(m=0),  # rescoring only: no graph
                on_disk=on_disk or storage.originals == "disk" or None)
        sparse = None
        if "sparse" in manifest.modes:
            sparse = {"sparse": models.SparseVectorParams(
                index=models.SparseIndexParams(on_disk=True) if on_disk else None)}
        if on_disk:
            options.setdefault("on_disk_payload", True)
        with server_errors(describe_client(client)):
            client.create_collection(collection, vectors_config=vectors, sparse_vectors_config=sparse,
                                     metadata={METADATA_KEY: manifest.to_json()}, **options)
        return cls(client, collection, owns_client)

    @_remote
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest stored with the collection, or None when the collection is missing or foreign."""
        if not self.client.collection_exists(self.collection):
            return None
        meta = self.client.get_collection(self.collection).config.metadata or {}
        return meta.get(METADATA_KEY)

    # ---- writes ----

    @_remote
    def upsert(self, batch: DocBatch) -> None:
        points = []
        dense = None if batch.dense is None else batch.dense.tolist()  # one conversion for the whole batch
        for i, doc_id in enumerate(batch.ids):
            vector: dict[str, Any] = {}
            if dense is not None:
                vector["dense"] = dense[i]
            if batch.sparse is not None:
                sv = batch.sparse[i]
                vector["sparse"] = models.SparseVector(indices=sv.ids.tolist(), values=sv.weights.tolist())
            if batch.colbert is not None:
                vector["colbert"] = batch.colbert[i].tolist()
            points.append(models.PointStruct(id=str(point_id(doc_id)), vector=vector, payload=batch.payloads[i]))
        self.client.upsert(self.collection, points=points, wait=True)

    @_remote
    def delete(self, ids: Sequence[str]) -> None:
        selector = models.PointIdsList(points=[str(point_id(i)) for i in ids])
        self.client.delete(self.collection, points_selector=selector, wait=True)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()

    # ---- reads ----

    @_remote
    def existing(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        by_point = {str(point_id(i)): i for i in ids}
        records = self.client.retrieve(self.collection, list(by_point), with_payload=False, with_vectors=False)
        return {by_point[str(r.id)] for r in records}

    @_remote
    def count(self, conditions: Sequence[Condition] = ()) -> int:
        return self.client.count(self.collection, count_filter=_filter(conditions), exact=True).count

    @_remote
    def vectors(self, ids: Sequence[str]) -> dict[str, StoredVectors]:
        records = self.client.retrieve(self.collection, [str(point_id(i)) for i in ids], with_payload=["id"],
                                       with_vectors=True)
        return {r.payload["id"]: stored_vectors(r.vector or {}) for r in records}

    @_remote
    def search(self, plans: Sequence[Plan], conditions: Sequence[Condition], with_text: bool
               ) -> list[list[StoredHit]]:
        flt = _filter(conditions)
        payload = ["id", "meta"] + (["text"] if with_text else [])
        requests = [self._request(p, flt, payload) for p in plans]
        responses = self.client.query_batch_points(self.collection, requests)
        return [[StoredHit(float(p.score), p.payload or {}) for p in r.points] for r in responses]

    def _request(self, plan: Plan, flt: models.Filter | None, payload: list[str]) -> models.QueryRequest:
        if isinstance(plan, Nearest):
            return models.QueryRequest(query=_vector(plan), using=plan.using, limit=plan.limit, filter=flt,
                                       params=_params(plan, self.local), with_payload=payload)
        branches = [_prefetch(b, flt, self.local) for b in plan.branches]
        return models.QueryRequest(query=_formula(plan), prefetch=branches, limit=plan.limit, filter=flt,
                                   with_payload=payload)


def is_local(client: Any) -> bool:
    """Whether a client runs qdrant-client's local mode (a path or ":memory:") rather than a server."""
    opts = getattr(client, "init_options", {}) or {}
    return bool(opts.get("path")) or opts.get("location") == ":memory:"


def _check_storage(storage: ColbertStorage, client: Any) -> None:
    """Refuse colbert storage the target cannot apply: local mode holds float vectors in RAM and scores them
    exactly (it ignores quantization and on-disk storage); no Qdrant drops a quantized field's originals."""
    if storage.originals == "none":
        raise ValueError("colbert originals='none': Qdrant keeps the original vectors of a quantized field; use "
                         "originals='disk' to keep them out of RAM")
    if is_local(client) and storage.quantized:
        raise ValueError(f"colbert quantization={storage.quantization!r}: qdrant-client local mode (a path or "
                         "':memory:') scores float vectors only; use the edge engine or a Qdrant server")
    if is_local(client) and storage.originals == "disk":
        raise ValueError("colbert originals='disk': qdrant-client local mode (a path or ':memory:') holds every "
                         "vector in RAM; use the edge engine or a Qdrant server")


def _quantization(storage: ColbertStorage) -> models.ScalarQuantization | models.BinaryQuantization | None:
    if storage.quantization == "int8":
        return models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8,
                                                                                 always_ram=True))
    if storage.quantization == "binary":
        return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
    return None


def _prefetch(node: Plan, flt: models.Filter | None, local: bool) -> models.Prefetch:
    if isinstance(node, WeightedSum):
        return models.Prefetch(query=_formula(node), limit=node.limit,
                               prefetch=[_prefetch(b, flt, local) for b in node.branches])
    inner = [_prefetch(c, flt, local) for c in node.over]
    return models.Prefetch(query=_vector(node), using=node.using, limit=node.limit, prefetch=inner or None,
                           filter=None if inner else flt, params=_params(node, local))


def _formula(plan: WeightedSum) -> models.FormulaQuery:
    """Σ w_i · $score[i], a candidate missing from a branch scoring 0 there."""
    terms = [models.MultExpression(mult=[w, f"$score[{i}]"]) for i, w in enumerate(plan.weights)]
    return models.FormulaQuery(formula=models.SumExpression(sum=terms),
                               defaults={f"$score[{i}]": 0.0 for i in range(len(terms))})


def _vector(node: Nearest) -> list[float] | list[list[float]] | models.SparseVector:
    v = node.vector
    if isinstance(v, SparseVector):
        return models.SparseVector(indices=v.ids.tolist(), values=v.weights.tolist())
    return np.asarray(v, dtype=np.float32).tolist()


def _params(node: Nearest, local: bool) -> models.SearchParams | None:
    """HNSW ef for dense searches on a server, and which colbert vectors score (quantized, or the originals)
    where quantized; local mode searches exactly (and warns on any parameter)."""
    if local:
        return None
    quantization = None
    if node.quantized is not None:
        quantization = models.QuantizationSearchParams(ignore=not node.quantized, rescore=False)
    return models.SearchParams(hnsw_ef=node.ef, quantization=quantization) if node.ef or quantization else None


def _filter(conditions: Sequence[Condition]) -> models.Filter | None:
    if not conditions:
        return None
    must: list[models.Condition] = []
    for c in conditions:
        key = f"meta.{c.key}"
        if c.kind == "match":
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=c.value)))
        elif c.kind == "any":
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=c.value)))
        else:
            must.append(models.FieldCondition(key=key, range=models.Range(**c.value)))
    return models.Filter(must=must)
