"""The default engine: Qdrant Edge (PyPI `qdrant-edge-py`), an embedded on-disk shard with no server.

Qdrant Edge writes through memory-mapped sparse files (32 MB chunks allocated as they fill); a page the file
system cannot back kills the process with SIGBUS. So free space is checked before the engine writes (batches:
`Index.add_outputs`; optimizing: `EdgeStore.optimize`) and a refusal is a one-line DiskFullError.

Qdrant Edge has no read-only mode: `EdgeShard.load` opens the write-ahead log and maps the segment files
writable, even to count or search. On ext4 (tested) that allocates nothing, so an index on a full disk still
opens, counts and searches. On tmpfs, loading and optimizing touch every page of the vector files, which then
take their full size: `EdgeStore.load` and `optimize` check for that much space there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from m3embed.diskspace import DiskFullError, allocated_bytes, check_free, filesystem_type, human
from m3embed.index.manifest import ColbertStorage, Manifest
from m3embed.index.maxsim import encode_query
from m3embed.index.store import (
    Condition,
    DocBatch,
    Hybrid,
    Nearest,
    Plan,
    Store,
    StoredHit,
    StoredVectors,
    WeightedSum,
    point_id,
    stored_vectors,
)
from m3embed.index.tokens import ROW_KEY, TokenStore
from m3embed.types import SparseVector

SHARD_DIR = "shard"
TOKENS_DIR = "colbert"  # the token store (`m3embed.index.tokens`)
SCAN_PAGE = 4096  # points per scroll page, as scored by the exhaustive colbert scan


class EdgeStore(Store):
    """Points in one Qdrant Edge shard at `<index dir>/shard`.

    Dense vectors get an HNSW graph (built by `optimize`), sparse vectors an inverted index. ColBERT rows live
    in the index's token store (`Manifest.colbert_store` "tokens", `m3embed.index.tokens`): each point's payload
    names its row, and a `Hybrid` plan runs one search per route, scores the missing dense / sparse scores of the
    union exactly (a search restricted to those ids) and the ColBERT scores with the MaxSim kernel. Indexes
    built before the token store (format <= 3) keep ColBERT as a multivector field with no graph (m=0) and run
    the engine's prefetch plans, as they were built.

    A quantized colbert field (`ColbertStorage.quantization`) keeps its quantized vectors in RAM and its
    originals in RAM or memory-mapped on disk. Binary vectors are quantized as they are added; int8 ones when
    `optimize` rebuilds a segment (before that they are scored from the originals), so a quantized index
    optimizes every segment, however small.
    """

    thread_safe = True

    def __init__(self, shard: qe.EdgeShard, manifest: Manifest, directory: Path | None = None,
                 tokens: TokenStore | None = None) -> None:
        self.shard = shard
        self.manifest = manifest
        self.directory = directory
        self.tokens = tokens

    @classmethod
    def create(cls, directory: Path, manifest: Manifest) -> EdgeStore:
        vectors: dict[str, qe.EdgeVectorParams] = {}
        if "dense" in manifest.modes:
            vectors["dense"] = qe.EdgeVectorParams(size=manifest.dim, distance=qe.Distance.Dot)
        storage = manifest.colbert_storage
        optimizers = None
        in_tokens = "colbert" in manifest.modes and manifest.colbert_store == "tokens"
        if "colbert" in manifest.modes and not in_tokens:
            if storage.originals == "none":
                raise ValueError("colbert originals='none': Qdrant Edge keeps the original vectors of a quantized "
                                 "field; use originals='disk' to keep them out of RAM")
            dtype = qe.VectorStorageDatatype.Float16 if storage.dtype == "float16" else None
            vectors["colbert"] = qe.EdgeVectorParams(
                size=manifest.colbert_dim, distance=qe.Distance.Dot, datatype=dtype,
                on_disk=True if storage.originals == "disk" else None, quantization_config=_quantization(storage),
                multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
                hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000))
            if storage.quantized:  # optimize quantizes every segment (threshold in KB of vectors)
                optimizers = qe.EdgeOptimizersConfig(indexing_threshold=1)
        sparse = {"sparse": qe.EdgeSparseVectorParams()} if "sparse" in manifest.modes else None
        config = qe.EdgeConfig(vectors=vectors or None, sparse_vectors=sparse, optimizers=optimizers)
        with _disk_errors(directory):
            tokens = TokenStore.create(directory / TOKENS_DIR, manifest.colbert_encoding, manifest.colbert_dim,
                                       storage.originals != "none") if in_tokens else None
            shard = qe.EdgeShard.create(str(directory / SHARD_DIR), config)
        return cls(shard, manifest, directory, tokens)

    @classmethod
    def load(cls, directory: Path, manifest: Manifest) -> EdgeStore:
        path = directory / SHARD_DIR
        if not path.is_dir():
            raise ValueError(f"index {directory} is damaged: its Qdrant Edge shard ({path}) is missing; "
                             "rebuild the index")
        if _in_memory_fs(path):
            held = allocated_bytes(path)
            check_free(directory, populate_bytes(path), "opening the index on tmpfs",
                       hint=f"the index holds {human(held)}, but Qdrant Edge keeps vectors in preallocated 32 MB "
                            "chunks and fills them when it opens an index, which on tmpfs (memory) takes their "
                            "full size; move the index to a disk file system (ext4, xfs), where opening "
                            "allocates nothing")
        try:
            with _disk_errors(directory):
                shard = qe.EdgeShard.load(str(path))
        except DiskFullError:
            raise
        except Exception as e:  # the binding raises a bare Exception with the engine's message
            raise ValueError(f"index {directory}: the Qdrant Edge shard could not be opened ({e}); the "
                             "directory is damaged or in use; rebuild the index if it persists") from e
        try:
            tokens = None
            if "colbert" in manifest.modes and manifest.colbert_store == "tokens":
                storage = manifest.colbert_storage
                tokens = TokenStore.open(directory / TOKENS_DIR, manifest.colbert_encoding, manifest.colbert_dim,
                                         storage.originals != "none")
        except BaseException:
            shard.close()
            raise
        return cls(shard, manifest, directory, tokens)

    # ---- writes ----

    def upsert(self, batch: DocBatch) -> None:
        """One update operation for the batch; vectors reach the engine as float32 memoryviews, which the binding
        reads as the float sequences it takes, without the Python float lists `.tolist()` makes (those cost about
        as much as the engine's own write: benchmarks/search.py --part ingest, docs/results.md)."""
        payloads = batch.payloads
        in_engine = batch.colbert if self.tokens is None else None
        if self.tokens is not None and batch.colbert is not None:
            rows = self.tokens.append(batch.colbert)  # durable before the points that name them
            payloads = [{**p, ROW_KEY: int(r)} for p, r in zip(payloads, rows)]
        points = []
        for i, doc_id in enumerate(batch.ids):
            vector: dict[str, Any] = {}
            if batch.dense is not None:
                vector["dense"] = _floats(batch.dense[i])
            if batch.sparse is not None:
                sv = batch.sparse[i]
                vector["sparse"] = qe.SparseVector(_ints(sv.ids), _floats(sv.weights))
            if in_engine is not None:
                vector["colbert"] = [_floats(row) for row in in_engine[i]]  # (n_tok, h): one view per row
            points.append(qe.Point(point_id(doc_id), vector, payloads[i]))
        with _disk_errors(self.directory):
            self.shard.update(qe.UpdateOperation.upsert_points(points))

    def delete(self, ids: Sequence[str]) -> None:
        with _disk_errors(self.directory):
            self.shard.update(qe.UpdateOperation.delete_points([point_id(i) for i in ids]))

    def flush(self) -> None:
        with _disk_errors(self.directory):
            self.shard.flush()

    def optimize(self) -> None:
        """Merge and index the segments. The engine writes the optimized copies before it drops the old
        segments, so this first checks for about the index's size free (on tmpfs: the full size of the segment
        files, which the copies fill); the documents stay stored and searchable when it refuses."""
        if self.directory is not None:
            shard = self.directory / SHARD_DIR
            need = _apparent_bytes(shard / "segments") if _in_memory_fs(shard) else allocated_bytes(self.directory)
            check_free(self.directory, need, "optimizing the index (a second copy of its segments)",
                       hint="the documents are stored and searchable, only not optimized")
        with _disk_errors(self.directory):
            self.shard.optimize()
            if self.tokens is not None:
                live = [r.payload[ROW_KEY] for r in self._scan(None, [ROW_KEY])]
                if len(live) < self.tokens.stored_rows:  # rows of replaced or deleted documents
                    self.tokens.compact(live)

    def close(self) -> None:
        self.shard.close()
        if self.tokens is not None:
            self.tokens.close()

    # ---- reads ----

    def existing(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        by_point = {str(point_id(i)): i for i in ids}
        records = self.shard.retrieve(list(map(point_id, ids)), with_payload=False, with_vector=False)
        return {by_point[str(r.id)] for r in records}

    def count(self, conditions: Sequence[Condition] = ()) -> int:
        return self.shard.count(qe.CountRequest(exact=True, filter=_filter(conditions)))

    def vectors(self, ids: Sequence[str]) -> dict[str, StoredVectors]:
        records = self.shard.retrieve(list(map(point_id, ids)),
                                      with_payload=qe.PayloadSelector.Include(["id", ROW_KEY]), with_vector=True)
        out = {}
        for r in records:
            named = dict(r.vector or {})
            if self.tokens is not None and ROW_KEY in r.payload:
                named["colbert"] = self.tokens.tokens(r.payload[ROW_KEY])
            out[r.payload["id"]] = stored_vectors(named)
        return out

    def search(self, plans: Sequence[Plan], conditions: Sequence[Condition], with_text: bool
               ) -> list[list[StoredHit]]:
        flt = _filter(conditions)
        keys = ["id", "meta"] + (["text"] if with_text else [])
        if any(isinstance(p, Hybrid) for p in plans):
            return [self._hybrid(p, flt, keys) if isinstance(p, Hybrid) else self.search([p], conditions, with_text)[0]
                    for p in plans]
        results = self._query([self._request(p, flt, qe.PayloadSelector.Include(keys)) for p in plans])
        return [[StoredHit(float(p.score), p.payload or {}) for p in points] for points in results]

    def _query(self, requests: list[qe.QueryRequest]) -> list[list[Any]]:
        if len(requests) == 1:
            return [self.shard.query(requests[0])]
        return self.shard.query_batch(qe.QueryBatchRequest(requests))

    def _hybrid(self, plan: Hybrid, flt: qe.Filter | None, keys: list[str]) -> list[StoredHit]:
        """One search per route; the union's missing dense / sparse scores from searches restricted to those
        ids; ColBERT from the token store; the k best by the weighted sum, their payloads fetched last."""
        if not plan.routes:
            return self._colbert_scan(plan, flt, keys)
        queries: dict[tuple[int, str], qe.Query] = {}
        colbert_weighted = bool(plan.weights[2])
        head = qe.PayloadSelector.Include([ROW_KEY]) if colbert_weighted else False  # rows only where scored
        found = self._query([qe.QueryRequest(limit=r.limit, query=_nearest(r, queries), filter=flt,
                                             params=_params(r), with_payload=head) for r in plan.routes])
        # union positions keyed by the ids' integers (the binding makes a new UUID at every read of `.id`, and a
        # UUID hashes in Python)
        at: dict[int, int] = {}
        pids, rows = [], []
        found_at = []  # per route, the union position of each point it found
        for points in found:
            where = []
            for p in points:
                pid = p.id
                j = at.get(pid.int)
                if j is None:
                    j = at[pid.int] = len(pids)
                    pids.append(pid)
                    rows.append(p.payload.get(ROW_KEY, -1) if colbert_weighted else -1)
                where.append(j)
            found_at.append(where)
        if not pids:
            return []
        weight = dict(zip(("dense", "sparse", "colbert"), plan.weights))
        first = dict(zip(("dense", "sparse"), plan.first))
        ranking = plan.colbert_top is not None and len(pids) > plan.colbert_top
        total, base = np.zeros(len(pids)), np.zeros(len(pids))
        scores, fills = [], []
        for route, points, where in zip(plan.routes, found, found_at):
            if not (weight[route.using] or ranking and first[route.using]):
                continue
            score = np.full(len(pids), np.nan)
            score[where] = [p.score for p in points]
            scores.append((route.using, score))
            missing = np.flatnonzero(np.isnan(score))
            if len(missing):
                fills.append((score, missing, qe.QueryRequest(
                    limit=len(missing), query=_nearest(route, queries), params=qe.SearchParams(exact=True),
                    filter=qe.Filter(must=[qe.HasIdCondition({pids[i] for i in missing})]), with_payload=False)))
        for (score, missing, _), points in zip(fills, self._query([f[2] for f in fills]) if fills else []):
            score[missing] = 0.0  # a document the sparse search does not return shares no id with the query
            score[[at[p.id.int] for p in points]] = [p.score for p in points]
        for using, score in scores:
            total += weight[using] * score
            base += first[using] * score
        cand = np.arange(len(pids))
        if weight["colbert"]:
            if ranking:
                cand = _best(base, plan.colbert_top)
            rows_c = np.asarray(rows, dtype=np.int64)[cand]
            n_q = len(plan.colbert)
            colbert = self.tokens.score(encode_query(plan.colbert, self.tokens.encoding), rows_c) / n_q
            total = total[cand] + weight["colbert"] * colbert
            if plan.rescore is not None:
                top = _best(total, plan.rescore)
                exact = self.tokens.score(encode_query(plan.colbert, "float16"), rows_c[top], originals=True) / n_q
                total, cand = total[top] - weight["colbert"] * (colbert[top] - exact), cand[top]
        order = _best(total, plan.limit)
        return self._hits([pids[cand[i]] for i in order], total[order], keys)

    def _colbert_scan(self, plan: Hybrid, flt: qe.Filter | None, keys: list[str]) -> list[StoredHit]:
        """The exhaustive colbert mode: the MaxSim kernel over every stored document matching the filter, a page
        of the engine's scroll at a time, keeping the best (`plan.rescore` of them rescored from the originals)."""
        n_q = len(plan.colbert)
        code = encode_query(plan.colbert, self.tokens.encoding)
        keep = max(plan.limit, plan.rescore or 0)
        pids: list[Any] = []
        rows = np.zeros(0, dtype=np.int64)
        scores = np.zeros(0)
        records = self._scan(flt, [ROW_KEY])
        while True:
            page = [r for _, r in zip(range(SCAN_PAGE), records)]
            if not page:
                break
            page_rows = np.asarray([r.payload[ROW_KEY] for r in page], dtype=np.int64)
            pids += [r.id for r in page]
            rows = np.concatenate([rows, page_rows])
            scores = np.concatenate([scores, self.tokens.score(code, page_rows) / n_q])
            best = _best(scores, keep)
            pids, rows, scores = [pids[i] for i in best], rows[best], scores[best]
        if plan.rescore is not None and len(pids):
            scores = self.tokens.score(encode_query(plan.colbert, "float16"), rows, originals=True) / n_q
        order = _best(scores, plan.limit)
        return self._hits([pids[i] for i in order], scores[order], keys)

    def _hits(self, chosen: list[Any], scores: np.ndarray, keys: list[str]) -> list[StoredHit]:
        """Hits for these point ids and scores, best first, with their payloads."""
        records = {r.id: r.payload for r in self.shard.retrieve(chosen, with_payload=qe.PayloadSelector.Include(keys),
                                                                  with_vector=False)}
        return [StoredHit(float(score), records.get(pid) or {}) for score, pid in zip(scores, chosen)]

    def _scan(self, flt: qe.Filter | None, keys: list[str]) -> Iterator[Any]:
        """Every stored point matching the filter, with these payload keys, in pages."""
        offset = None
        while True:
            records, offset = self.shard.scroll(qe.ScrollRequest(
                limit=SCAN_PAGE, offset=offset, filter=flt, with_payload=qe.PayloadSelector.Include(keys),
                with_vector=False))
            yield from records
            if offset is None:
                return

    def _request(self, plan: Plan, flt: qe.Filter | None, payload: qe.PayloadSelector) -> qe.QueryRequest:
        queries: dict[tuple[int, str], qe.Query] = {}  # a plan names each query vector several times: convert once
        if isinstance(plan, Nearest):
            return qe.QueryRequest(limit=plan.limit, query=_nearest(plan, queries), filter=flt,
                                   params=_params(plan), with_payload=payload)
        return qe.QueryRequest(limit=plan.limit, query=_formula(plan), filter=flt, with_payload=payload,
                               prefetches=[_prefetch(b, flt, queries) for b in plan.branches])

    def colbert_footprint(self) -> dict[str, int]:
        """The colbert storage folders' allocated bytes (originals, quantized vectors, offsets), and the vectors
        stored as each segment's storage header counts them (a u64 length, which also counts vectors of
        replaced documents until `optimize` drops them); the token store's own figures for its indexes."""
        if self.directory is None or "colbert" not in self.manifest.modes:
            return {}
        if self.tokens is not None:
            return self.tokens.footprint()
        folders = list((self.directory / SHARD_DIR).glob("segments/*/vector_storage-colbert"))
        tokens = sum(int.from_bytes((f / "vectors" / "status.dat").read_bytes()[:8], "little") for f in folders
                     if (f / "vectors" / "status.dat").is_file())
        return {"colbert_tokens": tokens, "colbert_disk_bytes": sum(allocated_bytes(f) for f in folders)}


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties: the earlier index first)."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.lexsort((np.arange(len(scores)), -scores))


def _floats(v: np.ndarray) -> memoryview:
    """A 1-d float32 view the binding reads as a float sequence (exactly the values `.tolist()` would give)."""
    return memoryview(np.ascontiguousarray(v, dtype=np.float32))


def _ints(v: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(v))


def _in_memory_fs(path: Path) -> bool:
    return filesystem_type(path) in ("tmpfs", "ramfs")


def populate_bytes(shard: Path) -> int:
    """Bytes that loading the shard may allocate on tmpfs: the unallocated part of its vector storage files."""
    total = 0
    for f in shard.glob("segments/*/vector_storage-*/**/*"):
        if f.is_file():
            st = f.stat()
            total += max(st.st_size - st.st_blocks * 512, 0)
    return total


def _apparent_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


@contextlib.contextmanager
def _disk_errors(directory: Path | None) -> Iterator[None]:
    """The engine reports a full disk as a bare Exception carrying "os error 28": make it a DiskFullError."""
    try:
        yield
    except Exception as e:
        text = str(e)
        if "os error 28" in text or "No space left on device" in text:
            raise DiskFullError(f"no space left on the device of index {directory} (the engine said: "
                                f"{text.splitlines()[0][:200]}); free some space", directory) from None
        raise


def _prefetch(node: Plan, flt: qe.Filter | None, queries: dict[tuple[int, str], qe.Query]) -> qe.Prefetch:
    if isinstance(node, WeightedSum):
        inner = [_prefetch(b, flt, queries) for b in node.branches]
        return qe.Prefetch(limit=node.limit, query=_formula(node), prefetches=inner)
    inner = [_prefetch(c, flt, queries) for c in node.over]
    return qe.Prefetch(limit=node.limit, query=_nearest(node, queries), prefetches=inner or None,
                       filter=None if inner else flt, params=_params(node))


def _formula(plan: WeightedSum) -> qe.Formula:
    """Σ w_i · $score[i], a candidate missing from a branch scoring 0 there."""
    terms = [qe.Expression.Mult([qe.Expression.Constant(w), qe.Expression.Variable(f"$score[{i}]")])
             for i, w in enumerate(plan.weights)]
    return qe.Formula(qe.Expression.Sum(terms), defaults={f"$score[{i}]": 0.0 for i in range(len(terms))})


def _nearest(node: Nearest, queries: dict[tuple[int, str], qe.Query]) -> qe.Query:
    """The engine's query for `node`'s vector, converted once per request (`queries` keys: vector id, name)."""
    key = (id(node.vector), node.using)
    query = queries.get(key)
    if query is None:
        v = node.vector
        if isinstance(v, SparseVector):
            vector: Any = qe.SparseVector(_ints(v.ids), _floats(v.weights))
        elif np.ndim(v) == 2:  # colbert rows
            vector = [_floats(row) for row in np.asarray(v, dtype=np.float32)]
        else:
            vector = _floats(v)
        query = queries[key] = qe.Query.Nearest(vector, using=node.using)
    return query


def _params(node: Nearest) -> qe.SearchParams | None:
    """HNSW ef of dense searches; which colbert vectors score (quantized, or the originals) where quantized."""
    quantization = None
    if node.quantized is not None:
        quantization = qe.QuantizationSearchParams(ignore=not node.quantized, rescore=False)
    return qe.SearchParams(hnsw_ef=node.ef, quantization=quantization) if node.ef or quantization else None


def _quantization(storage: ColbertStorage) -> qe.ScalarQuantizationConfig | qe.BinaryQuantizationConfig | None:
    if storage.quantization == "int8":
        return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, always_ram=True)
    if storage.quantization == "binary":
        return qe.BinaryQuantizationConfig(always_ram=True)
    return None


def _filter(conditions: Sequence[Condition]) -> qe.Filter | None:
    if not conditions:
        return None
    must = []
    for c in conditions:
        key = f"meta.{c.key}"
        if c.kind == "match":
            must.append(qe.FieldCondition(key=key, match=qe.MatchValue(c.value)))
        elif c.kind == "any":
            must.append(qe.FieldCondition(key=key, match=qe.MatchAny(c.value)))
        else:
            must.append(qe.FieldCondition(key=key, range=qe.RangeFloat(**c.value)))
    return qe.Filter(must=must)
