"""`Index`: documents with dense, sparse and ColBERT vectors in one engine, searched with M3's hybrid score.

Where an index lives (create, open, lock, undo a failed creation) is `directory.py`; the search plan
`store.py`; the engines `edge.py` and `qdrant.py`; streams of documents `ingest.py` and `bulk.py`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np

from m3embed import scoring
from m3embed.diskspace import check_free
from m3embed.documents import check_id, check_metadata
from m3embed.errors import ParamError
from m3embed.index import directory
from m3embed.index.directory import DEFAULT_COLLECTION, is_remote
from m3embed.index.manifest import (
    FINGERPRINT_VERSION,
    ColbertStorage,
    DirectoryLock,
    Manifest,
    default_colbert_storage,
)
from m3embed.index.pooling import pool_tokens
from m3embed.index.store import (
    DEFAULT_CANDIDATES,
    Condition,
    DocBatch,
    QueryVectors,
    Store,
    parse_filter,
    plan_search,
)
from m3embed.modes import (
    DEFAULT_RERANK_TOP,
    MODES,
    SEARCH_WEIGHTS,
    check_modes,
    check_search_mode,
    check_weights,
    default_search_mode,
    query_representations,
)
from m3embed.tokenize import one_truncation_warning
from m3embed.types import Hit, M3Output

T = TypeVar("T")


@dataclass(frozen=True)
class SearchSpec:
    """A checked search request, independent of the queries: what `Index.prepare` returns, trusted from there on.

    Attributes:
        mode: the search mode (resolved from the index's default when not given).
        query_modes: the representations each query must be encoded into.
        k, weights, candidates, hnsw_ef, colbert_top, exhaustive, reranker, rerank_top: see `Index.search`.
        conditions: the parsed metadata filter.
        with_text, explain: see `Index.search`.
    """

    mode: str
    query_modes: tuple[str, ...]
    k: int
    weights: tuple[float, float, float]
    candidates: int
    conditions: tuple[Condition, ...]
    with_text: bool
    explain: bool
    hnsw_ef: int | None
    colbert_top: int | None
    exhaustive: bool = False
    reranker: Any = None
    rerank_top: int | None = None  # set when there is a reranker

    @property
    def first_k(self) -> int:
        """Hits the first stage returns per query: rerank_top when a reranker rescores them, else k."""
        return self.rerank_top if self.reranker is not None else self.k


class Index:
    """An M3 retrieval index: add documents (texts or precomputed outputs), search them, delete, count.

    Build one with `Index.create` or `open_index`. Threads may share an Index (searches run while another
    thread adds); a second process, or a second Index on the same directory, is refused with a clear error.

    Attributes:
        manifest: what the index stores and which model made its vectors.
        model: the M3Model used to encode texts (None: only precomputed outputs can be added/searched).
        location: the directory, URL or ":memory:".
    """

    def __init__(self, store: Store, manifest: Manifest, location: str, model: Any = None,
                 lock: DirectoryLock | None = None) -> None:
        self.store = store
        self.manifest = manifest
        self.location = location
        self.model = model
        self._lock = lock
        # an index directory (free space is checked before writes); None for a server or ":memory:"
        self.directory: Path | None = None if lock is None else lock.path.parent
        self._write_lock = threading.RLock()
        self._closed = False

    # ---- create / open / close ----

    @classmethod
    def create(cls, location: str | Path | Any, model: Any = None, *, fingerprint: str | None = None,
               model_name: str | None = None, engine: str | None = None, modes: Sequence[str] | str = MODES,
               dim: int | None = None, colbert_dim: int | None = None,
               colbert_storage: ColbertStorage | None = None, colbert_store: str | None = None,
               store_text: bool = True, search_weights: Sequence[float] | None = None,
               collection: str = DEFAULT_COLLECTION, client_options: Mapping[str, Any] | None = None,
               collection_options: Mapping[str, Any] | None = None) -> Index:
        """Create a new, empty index (`m3embed.index.directory`: a failed creation leaves nothing behind).

        Args:
            location: a directory (new or empty), a Qdrant URL, ":memory:", or a QdrantClient.
            model: the M3Model whose outputs the index holds; sets the fingerprint, name and sizes.
            fingerprint, model_name, dim, colbert_dim: the model identity and vector sizes when no model is
                given (for precomputed outputs); colbert_dim defaults to dim.
            engine: "edge" (default for directories) or "qdrant" (always for URLs and ":memory:").
            modes: representations to store; drop "colbert" to save most of the space.
            colbert_storage: precision, quantization, originals, rescoring and token pooling of the colbert
                field; default `manifest.default_colbert_storage`: binary codes in the token store, float16
                vectors on an engine's field. An engine that cannot apply them refuses with a ValueError.
            colbert_store: where the ColBERT rows live: "tokens" (m3embed's token store, the default on Qdrant
                Edge when dense or sparse is stored too) or "engine" (the engine's multivector field: always on
                Qdrant servers).
            store_text: keep document texts in the index.
            search_weights: the hybrid weights a search takes when given none; default the model's
                (`M3Model.search_weights`: m3embed.json, else `m3embed.modes.SEARCH_WEIGHTS`).
            collection: collection name (qdrant engine).
            client_options: extra QdrantClient arguments (api_key, prefer_grpc, ...).
            collection_options: extra create_collection arguments (shard_number, replication_factor, ...).
        """
        modes = check_modes(modes)
        fingerprint_version = FINGERPRINT_VERSION
        if model is not None:
            fingerprint, model_name = model.fingerprint, getattr(model, "name", "") or model_name
            fingerprint_version = getattr(model, "fingerprint_version", FINGERPRINT_VERSION)
            dim = dim or model.hidden_size
            missing = [m for m in modes if m not in model.available_modes()]
            if missing:
                raise ValueError(f"the model has no head for {', '.join(missing)}; create the index with "
                                 f"modes={model.available_modes()!r}")
        if dim is None or fingerprint is None:
            raise ValueError("Index.create needs a model, or fingerprint= and dim= for precomputed outputs")
        if search_weights is None:
            search_weights = getattr(model, "search_weights", None) or SEARCH_WEIGHTS
        if "colbert" not in modes and colbert_storage is not None:
            raise ValueError(f"colbert_storage applies to the colbert field, but the index stores only "
                             f"{', '.join(modes)}")
        engine = engine or ("qdrant" if is_remote(location) else "edge")
        colbert_store = colbert_store or _colbert_store(engine, modes)
        manifest = Manifest(engine=engine, model_name=model_name or "", fingerprint=fingerprint, modes=modes,
                            dim=dim, colbert_dim=colbert_dim or dim, store_text=store_text,
                            fingerprint_version=fingerprint_version,
                            colbert_storage=colbert_storage or default_colbert_storage(colbert_store),
                            colbert_store=colbert_store,
                            search_weights=check_weights(search_weights, name="search_weights"))
        place = directory.create(location, manifest, collection=collection, client_options=client_options,
                                 collection_options=collection_options)
        return cls(place.store, manifest, place.location, model, place.lock)

    @classmethod
    def open(cls, location: str | Path | Any, model: Any = None, *, collection: str = DEFAULT_COLLECTION,
             client_options: Mapping[str, Any] | None = None) -> Index:
        """Open an existing index; with a model, refuse it unless it is the model the index was built with."""
        place = directory.open(location, collection=collection, client_options=client_options)
        index = cls(place.store, place.manifest, place.location, lock=place.lock)
        if model is not None:
            try:
                index.attach(model)
            except ValueError:
                index.close()
                raise
        return index

    def attach(self, model: Any) -> None:
        """Use `model` to encode texts; it must be the model the index was built with."""
        self.manifest.check_model(model, self.location)
        self.model = model

    def close(self) -> None:
        """Flush and release the engine and the directory lock (idempotent)."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.store.flush()
                self.store.close()
            finally:
                if self._lock is not None:
                    self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ----

    def add(self, ids: Sequence[str | int], texts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None,
            *, batch_size: int = 256, max_length: int | None = None) -> int:
        """Encode texts with the index's model and upsert them by id, `batch_size` at a time; returns the number
        written. `max_length` truncates the texts (default: the model's passage_max_length). Streams of
        documents go through `m3embed.index.ingest.ingest`, which calls this per batch.

        The documents are checked first (see `add_outputs`), so a bad one is refused before any encoding.
        """
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts; give one id per text")
        model = self.require_model("add texts")
        keys, metas = self._checked(ids, texts, metadata)
        with one_truncation_warning():  # one for the call, not one per chunk
            for start in range(0, len(texts), batch_size):
                chunk = slice(start, start + batch_size)
                out = model.encode_corpus(list(texts[chunk]), modes=self.manifest.modes, max_length=max_length)
                self._write(self._batch(keys[chunk], out, texts[chunk], metas[chunk]))
        return len(texts)

    def add_outputs(self, ids: Sequence[str | int], outputs: M3Output, texts: Sequence[str] | None = None,
                    metadata: Sequence[Mapping[str, Any]] | None = None) -> int:
        """Upsert precomputed model outputs by id (they must hold every mode the index stores).

        Ids and metadata are checked first (`m3embed.documents`): one invalid document refuses the whole batch
        with a ValueError naming it, before anything is written. A repeated id keeps its last document. On an
        index directory, free space for the batch is checked too (`m3embed.diskspace.DiskFullError`).
        """
        keys, metas = self._checked(ids, texts, metadata, outputs)
        batch = self._batch(keys, outputs, texts, metas)
        self._write(batch)
        return len(batch)

    def delete(self, ids: Sequence[str | int]) -> None:
        """Remove documents by id; unknown ids are ignored."""
        ids = [check_id(i) for i in ids]
        with self._write_lock:
            self._check_open()
            if self.directory is not None:
                check_free(self.directory, 1024 * len(ids), f"deleting {len(ids)} documents")
            self.store.delete(ids)

    def flush(self) -> None:
        """Make every add and delete so far durable."""
        with self._write_lock:
            self._check_open()
            self.store.flush()

    def optimize(self) -> None:
        """Build the search structures now (HNSW graphs) instead of searching unindexed segments.

        Qdrant Edge writes optimized copies of its segments before it drops the old ones: the index takes up
        to twice its size meanwhile, so it first checks for that much free space and raises
        `m3embed.diskspace.DiskFullError` otherwise (nothing is lost then).
        """
        with self._write_lock:
            self._check_open()
            self.store.optimize()

    # ---- reading ----

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """Number of documents (matching a metadata filter, see `search`)."""
        with self._reading():
            return self.store.count(parse_filter(filter))

    def missing(self, ids: Sequence[str | int]) -> list[str]:
        """The ids (as str, in order) that the index does not hold."""
        ids = [check_id(i) for i in ids]
        with self._reading():
            have = self.store.existing(ids)
        return [i for i in ids if i not in have]

    def __contains__(self, doc_id: str | int) -> bool:
        return not self.missing([doc_id])

    def info(self) -> dict[str, Any]:
        """Location, engine, model identity, stored modes, colbert storage and document count, and for an index
        directory its measured size on disk (`m3embed.index.footprint.disk_footprint`, after a flush)."""
        info = {"location": self.location, **self.manifest.to_json(), "count": self.count()}
        if self.directory is not None:
            from m3embed.index.footprint import disk_footprint

            self.flush()  # the engine's files as they are, not as they were at the last flush
            with self._reading():
                info.update(disk_footprint(self.directory, self.store.colbert_footprint(), info["count"]))
        return info

    def prepare(self, *, k: int = 10, mode: str | None = None, weights: Sequence[float] | None = None,
                candidates: int | None = None, filter: Mapping[str, Any] | None = None, with_text: bool = True,
                explain: bool = False, hnsw_ef: int | None = None, colbert_top: int | None = None,
                exhaustive: bool = False, reranker: Any = None, rerank_top: int | None = None) -> SearchSpec:
        """Check a search request against this index, once: the SearchSpec that `encode_queries`, `run` and
        `first_stage` take as it is (the arguments are those of `search`).

        Raises `m3embed.errors.ParamError` naming the parameter at fault.
        """
        mode = check_search_mode(mode or default_search_mode(self.manifest.modes), self.manifest.modes)
        weights = check_weights(self.manifest.search_weights if weights is None else weights, mode=mode)
        for name, value in (("k", k), ("candidates", candidates), ("hnsw_ef", hnsw_ef)):
            if value is not None and value < 1:
                raise ParamError(f"{name} must be at least 1, got {value}", param=name)
        if exhaustive and mode != "colbert":
            raise ParamError(f"exhaustive scores ColBERT against every document: it is for mode colbert, not {mode}",
                             param="exhaustive")
        if reranker is None and rerank_top is not None:
            raise ParamError(f"rerank_top={rerank_top} (--rerank-top) needs a reranker: a cross-encoder, given with "
                             "--reranker NAME on the command line or reranker=Reranker.from_pretrained(NAME) in "
                             "Python", param="rerank_top")
        if reranker is not None:
            if not self.manifest.store_text:
                raise ParamError(f"index {self.location} keeps no document texts (built with store_text=False), "
                                 "and a cross-encoder reranker reads them; rebuild it with store_text=True",
                                 param="reranker")
            rerank_top = max(k, DEFAULT_RERANK_TOP) if rerank_top is None else rerank_top
            if rerank_top < k:
                raise ParamError(f"rerank_top ({rerank_top}) must be at least k ({k})", param="rerank_top")
        first_k = k if reranker is None else rerank_top
        if colbert_top is not None and colbert_top < first_k:
            what = f"rerank_top ({first_k}), the hits the first stage returns" if reranker is not None else f"k ({k})"
            raise ParamError(f"colbert_top ({colbert_top}) must be at least {what}", param="colbert_top")
        return SearchSpec(mode=mode, query_modes=query_representations(mode, self.manifest.modes), k=k,
                          weights=weights, candidates=max(candidates or DEFAULT_CANDIDATES, first_k),
                          conditions=tuple(parse_filter(filter)), with_text=with_text and self.manifest.store_text,
                          explain=explain, hnsw_ef=hnsw_ef, colbert_top=colbert_top, exhaustive=exhaustive,
                          reranker=reranker, rerank_top=rerank_top)

    def encode_queries(self, specs: SearchSpec | Sequence[SearchSpec], texts: Sequence[str],
                       encode: Callable[[list[str], tuple[str, ...]], T] | None = None) -> M3Output | T:
        """Query texts encoded as the search needs them: the one query-encoding path of m3embed (`search`, the
        CLI, the HTTP service and eval all come here).

        The representations are those of `specs` (one spec, or several to encode once for all of them), the
        prompt and truncation the model's `encode_queries`. `encode(texts, modes)` stands in for the model's
        `encode_queries` and its result is returned as it is (the HTTP service passes its batcher, and awaits).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("query must be a text, a non-empty list of texts, or an M3Output")
        wanted = {m for spec in ([specs] if isinstance(specs, SearchSpec) else specs) for m in spec.query_modes}
        encode = encode or self.require_model("search with texts").encode_queries
        return encode(texts, tuple(m for m in MODES if m in wanted))

    def search(self, query: str | Sequence[str] | M3Output, k: int = 10, mode: str | None = None,
               weights: Sequence[float] | None = None, candidates: int | None = None,
               filter: Mapping[str, Any] | None = None, with_text: bool = True, explain: bool = False,
               hnsw_ef: int | None = None, colbert_top: int | None = None, exhaustive: bool = False,
               reranker: Any = None, rerank_top: int | None = None) -> list[Hit] | list[list[Hit]]:
        """Search with one of the M3 modes; returns hits best first (a list per query for several queries).

        Args:
            query: a text, a list of texts, or precomputed query outputs (M3Output).
            k: hits per query.
            mode: one of `m3embed.modes.SEARCH_MODES`; default: the fullest the index allows ("all" when it
                stores the three representations).
            weights: (dense, sparse, colbert) for hybrid modes; default the index's `search_weights` (its
                model's at creation, else `m3embed.modes.SEARCH_WEIGHTS`, 0.4, 0.2, 0.4). Scores are the plain
                weighted sums, not divided by the weight sum.
            candidates: candidates per route (dense, sparse) whose union hybrid modes rescore; default 100.
            filter: metadata conditions, all must hold: {"lang": "en", "tag": ["a", "b"], "year": {"gte": 2000}}.
            with_text: return stored texts.
            explain: fill Hit.scores with each mode's score (computed from the stored vectors).
            hnsw_ef: HNSW ef of the dense search (default max(4 x its limit, 256)); higher finds more of the exact
                neighbours, slower.
            colbert_top: for colbert and all, score ColBERT only for this many of the union's best by
                w_d·dense + w_s·sparse (faster, no longer exact M3); default None, the whole union.
            exhaustive: colbert mode scores every stored document (matching the filter) instead of the union of
                the dense and sparse candidates (the paper's protocol, the default); slower, linear in the corpus.
            reranker: a cross-encoder (`m3embed.rerank.Reranker`) that rescores the first stage's best
                `rerank_top` hits from their stored texts; the k best by its score are returned, with
                `Hit.score` = the reranker's logit and `Hit.scores` holding the first stage's score under the
                mode's name and the logit under "rerank". Needs texts: query texts, and an index that stores them.
            rerank_top: hits of the first stage the reranker rescores (default max(k, 100)).
        """
        spec = self.prepare(k=k, mode=mode, weights=weights, candidates=candidates, filter=filter,
                            with_text=with_text, explain=explain, hnsw_ef=hnsw_ef, colbert_top=colbert_top,
                            exhaustive=exhaustive, reranker=reranker, rerank_top=rerank_top)
        if isinstance(query, M3Output):
            return self.run(spec, query)
        hits = self.run(spec, self.encode_queries(spec, query), [query] if isinstance(query, str) else query)
        return hits[0] if isinstance(query, str) else hits

    def run(self, spec: SearchSpec, outputs: M3Output, queries: Sequence[str] | None = None) -> list[list[Hit]]:
        """Search with a prepared spec and encoded queries (holding at least `spec.query_modes`); a list per query.

        `queries` are the query texts, needed when the spec has a reranker.
        """
        if spec.reranker is not None and (queries is None or len(queries) != len(outputs)):
            raise ValueError(f"reranking reads the query texts: pass {len(outputs)} queries with the encoded ones")
        hits = self.first_stage(spec, outputs)
        if spec.reranker is None:
            return hits
        return rerank_hits(spec.reranker, queries, hits, spec.k, spec.mode, spec.with_text)

    def first_stage(self, spec: SearchSpec, outputs: M3Output) -> list[list[Hit]]:
        """The hits before any cross-encoder: `spec.first_k` per query, with their texts when a reranker follows
        (the HTTP service runs `rerank_hits` on its model worker)."""
        # explain scores every representation the query has; a plain search converts only those its plan uses
        needed = None if spec.explain else spec.query_modes
        m = self.manifest
        vectors = list(_query_vectors(outputs, m.colbert_storage.dtype, needed))
        plans = [plan_search(q, spec.mode, spec.first_k, spec.candidates, spec.weights, m.modes, spec.hnsw_ef,
                             spec.colbert_top, m.colbert_storage, tokens=m.colbert_store == "tokens",
                             exhaustive=spec.exhaustive) for q in vectors]
        with self._reading():
            results = self.store.search(plans, spec.conditions, spec.with_text or spec.reranker is not None)
        hits = [[Hit(h.payload.get("id"), h.score, h.payload.get("text"), h.payload.get("meta", {}),
                     {spec.mode: h.score} if spec.mode in MODES else None) for h in found] for found in results]
        if spec.explain:
            hits = [self._explain(q, found) for q, found in zip(vectors, hits)]
        return hits

    # ---- helpers ----

    def _explain(self, q: QueryVectors, hits: list[Hit]) -> list[Hit]:
        with self._reading():
            stored = self.store.vectors([h.id for h in hits])
        out = []
        for h in hits:
            v = stored.get(h.id)
            scores = {}
            if v is not None and v.dense is not None and q.dense is not None:
                scores["dense"] = float(scoring.dense_scores(q.dense[None], v.dense[None])[0, 0])
            if v is not None and v.sparse is not None and q.sparse is not None:
                scores["sparse"] = scoring.lexical_score(q.sparse, v.sparse)
            if v is not None and v.colbert is not None and q.colbert is not None:
                scores["colbert"] = scoring.colbert_score(q.colbert, v.colbert)
            out.append(h._replace(scores=scores))
        return out

    def _checked(self, ids: Sequence[str | int], texts: Sequence[str] | None,
                 metadata: Sequence[Mapping[str, Any]] | None, outputs: M3Output | None = None
                 ) -> tuple[list[str], list[dict[str, Any]]]:
        """The ids as stored and the metadata as JSON (`m3embed.documents`): the index's one check of the
        documents it is given; a ValueError naming the first bad one."""
        n = len(ids)
        sizes = [len(x) for x in (outputs, texts, metadata) if x is not None]
        if any(size != n for size in sizes):
            raise ValueError(f"{n} ids, {'-' if outputs is None else len(outputs)} outputs, "
                             f"{'-' if texts is None else len(texts)} texts and "
                             f"{'-' if metadata is None else len(metadata)} metadata entries: give one of each "
                             "per document")
        keys, metas = [], []
        for i, doc_id in enumerate(ids):
            try:
                keys.append(check_id(doc_id))
                metas.append(check_metadata(None if metadata is None else metadata[i], keys[-1]))
            except ValueError as e:
                raise ValueError(f"document at position {i}: {e}") from None
            if self.manifest.store_text and texts is not None and not isinstance(texts[i], str):
                raise ValueError(f"document {keys[-1]!r}: text must be a string, got {type(texts[i]).__name__}")
        return keys, metas

    def _batch(self, keys: list[str], out: M3Output, texts: Sequence[str] | None,
               metas: list[dict[str, Any]]) -> DocBatch:
        """Checked documents (`_checked`) and their outputs as the engines store them; a repeated id keeps its
        last document."""
        m = self.manifest
        for mode in m.modes:
            if getattr(out, mode) is None:
                raise ValueError(f"the outputs lack {mode!r}, which this index stores; encode with "
                                 f"modes={m.modes!r}")
        last = {key: i for i, key in enumerate(keys)}  # a repeated id keeps its last document
        if len(last) < len(keys):
            rows = sorted(last.values())
            keys, out, metas = [keys[i] for i in rows], out.select(rows), [metas[i] for i in rows]
            texts = None if texts is None else [texts[i] for i in rows]
        keep_text = m.store_text and texts is not None
        payloads = [{"id": key, "meta": metas[i], **({"text": texts[i]} if keep_text else {})}
                    for i, key in enumerate(keys)]
        dense = colbert = None
        if "dense" in m.modes:
            dense = np.asarray(out.dense, dtype=np.float32)
            _check_dim("dense", dense.shape[1], m.dim)
        if "colbert" in m.modes:
            for c in out.colbert:
                _check_dim("colbert", np.shape(c)[1], m.colbert_dim)
            # pool, then round to the stored precision here so every engine (and a brute-force check) sees
            # equal values; the token store encodes the rows itself (`m3embed.index.maxsim.encode_tokens`)
            storage = m.colbert_storage
            colbert = [pool_tokens(c, storage.pool_factor) for c in out.colbert]
            if m.colbert_store == "engine":
                colbert = [np.asarray(c, dtype=storage.numpy_dtype).astype(np.float32) for c in colbert]
        sparse = out.sparse_vectors() if "sparse" in m.modes else None
        return DocBatch(keys, payloads, dense, sparse, colbert)

    def _write(self, batch: DocBatch) -> None:
        with self._write_lock:
            self._check_open()
            if self.directory is not None:
                check_free(self.directory, _batch_bytes(batch), f"writing {len(batch)} documents")
            self.store.upsert(batch)

    def require_model(self, action: str) -> Any:
        """The attached model, or a clear error saying which model `action` needs."""
        if self.model is None:
            raise ValueError(f"to {action}, open the index with its model (model {self.manifest.model_name!r}, "
                             f"fingerprint {self.manifest.fingerprint}); or pass precomputed M3Output")
        return self.model

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"index {self.location} is closed; open it again")

    def _reading(self) -> Any:
        """Searches need no lock on a thread-safe engine; otherwise they wait for the writer."""
        self._check_open()
        return _NoLock() if self.store.thread_safe else self._write_lock


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def rerank_hits(reranker: Any, queries: Sequence[str], hits: list[list[Hit]], k: int, mode: str,
                with_text: bool = True) -> list[list[Hit]]:
    """Each query's hits rescored by a cross-encoder from their texts, the k best first.

    `Hit.score` becomes the reranker's logit; `Hit.scores` keeps the first stage's score under `mode` (its
    per-mode scores when it had them) and adds the logit as "rerank". Texts are dropped unless `with_text`.
    """
    ranked = reranker.rank(list(queries), rerank_texts(hits))
    return reranked_hits(hits, ranked, k, mode, with_text)


def rerank_texts(hits: list[list[Hit]]) -> list[list[str]]:
    """The texts a reranker reads, per query; a hit without a stored text is a ValueError naming it."""
    for found in hits:
        for h in found:
            if h.text is None:
                raise ValueError(f"document {h.id!r} has no stored text, which the reranker reads; add documents "
                                 "with their texts")
    return [[h.text for h in found] for found in hits]


def reranked_hits(hits: list[list[Hit]], ranked: list[list[tuple[int, float]]], k: int, mode: str,
                  with_text: bool = True) -> list[list[Hit]]:
    """`rerank_hits` from the reranker's ranking of each query's hits ((index, logit) best first)."""
    out = []
    for found, order in zip(hits, ranked):
        out.append([found[i]._replace(score=s, text=found[i].text if with_text else None,
                                      scores={**(found[i].scores or {mode: found[i].score}), "rerank": s})
                    for i, s in order[:k]])
    return out


def _query_vectors(out: M3Output, colbert_dtype: str, modes: Sequence[str] | None = None) -> Iterator[QueryVectors]:
    """Per-query vectors of `modes` (default: every representation `out` holds); ColBERT rows rounded to the
    stored precision, as Qdrant Edge rounds them itself for float16 storage, so every engine (and a NumPy check)
    computes the same MaxSim."""
    want = MODES if modes is None else modes
    dense = out.dense if "dense" in want else None
    sparse = out.sparse if "sparse" in want else None
    colbert = out.colbert if "colbert" in want else None
    for i in range(len(out)):
        rows = None
        if colbert is not None:
            rows = np.asarray(colbert[i], dtype=np.float16 if colbert_dtype == "float16" else np.float32)
        yield QueryVectors(dense=None if dense is None else np.asarray(dense[i], dtype=np.float32),
                           sparse=None if sparse is None else out.sparse_vector(i),
                           colbert=None if rows is None else rows.astype(np.float32))


def _colbert_store(engine: str, modes: Sequence[str]) -> str:
    """Where a new index keeps its ColBERT rows: the token store on Qdrant Edge, beside dense or sparse vectors
    (an Edge shard needs one vector of its own); the engine's multivector field otherwise."""
    return "tokens" if engine == "edge" and set(modes) & {"dense", "sparse"} else "engine"


def _batch_bytes(batch: DocBatch) -> int:
    """What upserting `batch` may take on disk: the engine logs each point (float32 vectors, payload) in its
    write-ahead log and stores it again in a segment; measured at ~1.3x the float32 size with float16 ColBERT
    storage, estimated at 2x."""
    size = 0 if batch.dense is None else batch.dense.nbytes
    size += sum(c.nbytes for c in batch.colbert or ())
    size += sum(8 * len(v) for v in batch.sparse or ())
    size += sum(len(json.dumps(p, ensure_ascii=False)) + 64 for p in batch.payloads)
    return 2 * size


def _check_dim(mode: str, got: int, want: int) -> None:
    if got != want:
        raise ValueError(f"{mode} vectors have size {got}, but the index holds size {want}; use the model the "
                         "index was built with")
