"""Search benchmark: m3embed's Qdrant Edge index against qdrant-client local mode and NumPy, in one run.

Vectors are synthetic at bge-m3's shapes (`m3testkit.synthetic`): dense 1024-d, about 100 lexical ids
per document over a 250,002-token vocabulary, 40-160 ColBERT rows of 1024-d per document (float16), and
queries that are noisy views of documents (8-32 ColBERT rows, ~12 lexical ids).

For each corpus size it reports ingest docs/s (vectors given), the HNSW build time, per-mode query latency
p50/p99 (one query at a time, through `Index.search`), and recall@10 against exact M3 over the whole
corpus: dense, sparse and dense+sparse scored for every document; "all" scored for every document up to
--colbert-docs documents, above that over the exact dense and sparse top 5 x candidates (a pool five times
the index's). The "all" mode is also run at smaller candidate k, and with ColBERT scored only for the best
R candidates by dense+sparse (`colbert_top`), to show the latency / recall trade-off.

ColBERT memory: 100k documents x ~100 rows x 1024 x 2 bytes = 20 GB. Above --colbert-docs documents the
index stores ColBERT rows only for the documents the ColBERT-mode queries can reach as candidates (their
exact dense and sparse top 1.5 x k); other documents never enter a rescoring for those queries, so those
queries get the results and do the work a full index would. Dense and sparse vectors are always complete.

Each size also times the `dense`, `sparse` and `dense+sparse` queries sent straight to the Qdrant Edge shard
(the QueryRequest `Index.search` builds, run by `EdgeShard.query`, interleaved with `Index.search` on the
same index and queries): the ratio is what m3embed adds around the engine.

`--part ingest` compares ColBERT ingest (vectors given) through `Index.add_outputs` with the previous conversion
(`.tolist()` per point) and with the engine alone (points built beforehand, `EdgeShard.update` timed; also on a
shard without write-ahead log, flushed per batch), in interleaved rounds on fresh indexes.

    python benchmarks/search.py                  # 10k documents (about 5 minutes on 2 cores)
    python benchmarks/search.py --sizes 100000 --colbert-queries 40    # about 10 minutes
    python benchmarks/search.py --part ingest --ingest-docs 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import qdrant_edge as qe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed

from m3embed.index import Index
from m3embed.index.core import _query_vectors
from m3embed.index.edge import EdgeStore
from m3embed.index.store import DocBatch, StoredHit, plan_search, point_id
from m3embed.types import M3Output
from m3testkit import synthetic

WEIGHTS = (0.4, 0.2, 0.4)
MODES = ("dense", "sparse", "dense+sparse", "colbert", "all")
COLBERT_MODES = ("colbert", "all")


def percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def top(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k)[:k] if len(scores) > k else np.arange(len(scores))
    return part[np.argsort(-scores[part], kind="stable")]


class Exact:
    """NumPy M3: the reference for recall, and the brute-force baseline."""

    def __init__(self, docs: M3Output, colbert: dict[int, np.ndarray], seed: int) -> None:
        self.docs, self.colbert, self.seed = docs, colbert, seed
        self.sparse_t = docs.sparse.T.tocsr()  # (vocab, n): a query's ids pick rows

    def dense(self, q: M3Output, i: int) -> np.ndarray:
        return self.docs.dense @ q.dense[i]

    def lexical(self, q: M3Output, i: int) -> np.ndarray:
        lo, hi = q.sparse.indptr[i], q.sparse.indptr[i + 1]
        return np.asarray(self.sparse_t[q.sparse.indices[lo:hi]].T @ q.sparse.data[lo:hi]).ravel()

    def maxsim(self, q: M3Output, i: int, docs: np.ndarray) -> np.ndarray:
        """ColBERT scores of documents `docs` (rows made on demand for documents the index lacks)."""
        qc = q.colbert[i].astype(np.float16).astype(np.float32)  # stored precision, as the index scores it
        out = np.empty(len(docs), dtype=np.float32)
        for start in range(0, len(docs), 1024):
            block = [self.colbert.get(int(j)) for j in docs[start : start + 1024]]
            missing = [int(docs[start + k]) for k, r in enumerate(block) if r is None]
            made = iter(synthetic.colbert_of(self.docs, missing, self.seed))
            block = [r if r is not None else next(made) for r in block]
            offsets = np.cumsum([0] + [len(r) for r in block])[:-1]
            sim = qc @ np.concatenate(block).astype(np.float32).T  # (n_q, rows)
            out[start : start + len(block)] = np.maximum.reduceat(sim, offsets, axis=1).mean(axis=0)
        return out

    def union(self, d: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
        """The candidate union: dense top k and sparse top k (documents sharing a token)."""
        sparse_top = top(np.where(s > 0, s, -np.inf), k)
        return np.union1d(top(d, k), sparse_top[s[sparse_top] > 0])

    def search(self, q: M3Output, i: int, mode: str, k: int, candidates: int) -> np.ndarray:
        """What a NumPy brute-force engine does: exhaustive single modes and dense+sparse; colbert and all
        rescore the union of the exact dense and sparse candidates."""
        d, s = self.dense(q, i), self.lexical(q, i)
        if mode == "dense":
            return top(d, k)
        if mode == "sparse":
            return top(s, k)
        if mode == "dense+sparse":
            return top(WEIGHTS[0] * d + WEIGHTS[1] * s, k)
        union = self.union(d, s, candidates)
        c = self.maxsim(q, i, union)
        total = c if mode == "colbert" else WEIGHTS[0] * d[union] + WEIGHTS[1] * s[union] + WEIGHTS[2] * c
        return union[top(total, k)]

    def all_top(self, q: M3Output, queries: int, k: int, pool: int | None) -> list[set[int]]:
        """Exact "all" top k of the first `queries` queries, over every document (pool=None: ColBERT rows of
        every document, scored block by block for all queries at once) or over each query's exact dense and
        sparse top `pool`."""
        partial = [WEIGHTS[0] * self.dense(q, i) + WEIGHTS[1] * self.lexical(q, i) for i in range(queries)]
        if pool is not None:
            out = []
            for i in range(queries):
                docs = self.union(self.dense(q, i), self.lexical(q, i), pool)
                out.append(set(docs[top(partial[i][docs] + WEIGHTS[2] * self.maxsim(q, i, docs), k)].tolist()))
            return out
        n = len(self.docs)
        qrows = np.concatenate([q.colbert[i].astype(np.float16).astype(np.float32) for i in range(queries)])
        q_off = np.cumsum([0] + [len(q.colbert[i]) for i in range(queries)])
        colbert = np.empty((queries, n), dtype=np.float32)
        for start in range(0, n, 256):
            block = [self.colbert[j] for j in range(start, min(n, start + 256))]
            d_off = np.cumsum([0] + [len(r) for r in block])[:-1]
            best = np.maximum.reduceat(qrows @ np.concatenate(block).astype(np.float32).T, d_off, axis=1)
            colbert[:, start : start + len(block)] = np.add.reduceat(best, q_off[:-1], axis=0) / np.diff(q_off)[:, None]
        return [set(top(partial[i] + WEIGHTS[2] * colbert[i], k).tolist()) for i in range(queries)]


def timed_search(index: Index, q: M3Output, i: int, mode: str, k: int) -> tuple[float, list[str]]:
    one = q.select([i])
    t = time.perf_counter()
    hits = index.search(one, k=k, mode=mode, with_text=False)[0]
    return time.perf_counter() - t, [h.id for h in hits]


def ingest_rate(index: Index, docs: M3Output, idx: np.ndarray, batch: int,
                colbert: dict[int, np.ndarray] | None = None) -> float:
    """Upsert documents `idx` in batches (vectors given) and flush; docs/s.

    On an index that stores ColBERT, documents without rows in `colbert` go straight to the store (as
    `Index.add_outputs` would, less the check that every mode is present): they are the documents no
    benchmark query can reach as a candidate (see the module docstring)."""
    t = time.perf_counter()
    for start in range(0, len(idx), batch):
        part = idx[start : start + batch]
        out = docs.select(part)
        ids = [f"d{j}" for j in part]
        if "colbert" not in index.manifest.modes:
            index.add_outputs(ids, out)
        elif colbert is not None:
            out.colbert = [colbert[int(j)] for j in part]
            index.add_outputs(ids, out)
        else:
            index.store.upsert(DocBatch(ids, [{"id": i, "meta": {}} for i in ids], out.dense, out.sparse_vectors()))
    index.flush()
    return len(idx) / (time.perf_counter() - t)


def reachable(exact: Exact, q: M3Output, queries: int, candidates: int) -> np.ndarray:
    """Documents that the first `queries` queries can meet as hybrid candidates, with a 1.5x margin for
    HNSW's approximate dense route."""
    k = int(candidates * 1.5)
    return np.unique(np.concatenate([exact.union(exact.dense(q, i), exact.lexical(q, i), k) for i in range(queries)]))


def recall(ids: list[str], truth: set[int]) -> float:
    return len({int(x[1:]) for x in ids} & truth) / 10


def latency_and_recall(index: Index, q: M3Output, mode: str, nq: int, truth: list[set] | None,
                       candidates: int | None = None, colbert_top: int | None = None) -> dict:
    for i in range(min(5, nq)):  # warm up
        index.search(q.select([i]), k=10, mode=mode, candidates=candidates, colbert_top=colbert_top,
                     with_text=False)
    times, rec = [], []
    for i in range(nq):
        one = q.select([i])
        t = time.perf_counter()
        hits = index.search(one, k=10, mode=mode, candidates=candidates, colbert_top=colbert_top,
                            with_text=False)[0]
        times.append(time.perf_counter() - t)
        if truth is not None:
            rec.append(recall([h.id for h in hits], truth[i]))
    p50, p99 = percentiles(times)
    return {"p50_ms": p50, "p99_ms": p99, "recall@10": float(np.mean(rec)) if rec else None, "queries": nq}


def raw_vs_index(index: Index, q: M3Output, mode: str, nq: int) -> tuple[dict, dict]:
    """p50/p99 of `Index.search` and of the same QueryRequest sent straight to the shard, interleaved query by
    query (which of the two runs first alternates), on the same index."""
    store = index.store
    if not isinstance(store, EdgeStore):
        raise TypeError("the raw engine baseline runs on Qdrant Edge")
    spec = index.prepare(k=10, mode=mode, with_text=False)
    payload = qe.PayloadSelector.Include(["id", "meta"])
    requests = []
    for i in range(nq):
        v = next(_query_vectors(q.select([i]), index.manifest.colbert_storage.dtype))
        plan = plan_search(v, spec.mode, spec.k, spec.candidates, spec.weights, index.manifest.modes)
        requests.append(store._request(plan, None, payload))
    ours, raw = [], []

    def run_ours(i: int) -> None:
        one = q.select([i])
        t = time.perf_counter()
        index.search(one, k=10, mode=mode, with_text=False)
        ours.append(time.perf_counter() - t)

    def run_raw(i: int) -> None:
        t = time.perf_counter()
        store.shard.query(requests[i])  # what EdgeStore.search sends for one query
        raw.append(time.perf_counter() - t)

    for i in range(min(5, nq)):  # warm up
        run_ours(i), run_raw(i)
    ours.clear(), raw.clear()
    for i in range(nq):
        first, second = (run_ours, run_raw) if i % 2 else (run_raw, run_ours)
        first(i), second(i)
    out = []
    for times in (ours, raw):
        p50, p99 = percentiles(times)
        out.append({"p50_ms": p50, "p99_ms": p99, "recall@10": None, "queries": nq})
    return out[0], out[1]


def stage_profile(index: Index, q: M3Output, mode: str, nq: int) -> dict[str, float]:
    """Median µs per query of each step `Index.search` takes (as `Index.first_stage` runs them), timed apart:
    where the time around the engine goes. "engine, id payload only" is the same request reading only the id."""
    store = index.store
    steps: dict[str, list[float]] = {}
    keys = qe.PayloadSelector.Include(["id", "meta"])
    slim = qe.PayloadSelector.Include(["id"])
    for i in range(nq):
        one = q.select([i])
        t0 = time.perf_counter()
        spec = index.prepare(k=10, mode=mode, with_text=False)
        t1 = time.perf_counter()
        v = list(_query_vectors(one, index.manifest.colbert_storage.dtype, spec.query_modes))
        t2 = time.perf_counter()
        plan = plan_search(v[0], spec.mode, spec.k, spec.candidates, spec.weights, index.manifest.modes)
        t3 = time.perf_counter()
        request = store._request(plan, None, keys)
        t4 = time.perf_counter()
        points = store.shard.query(request)
        t5 = time.perf_counter()
        [StoredHit(float(p.score), p.payload or {}) for p in points]
        t6 = time.perf_counter()
        store.shard.query(store._request(plan, None, slim))
        t7 = time.perf_counter()
        for name, dt in (("prepare (checks)", t1 - t0), ("query vectors", t2 - t1), ("plan", t3 - t2),
                         ("engine request objects", t4 - t3), ("engine query (id, meta)", t5 - t4),
                         ("hits", t6 - t5), ("engine query (id only) + its request", t7 - t6)):
            steps.setdefault(name, []).append(dt)
    return {k: float(np.median(v)) * 1e6 for k, v in steps.items()}


def run_size(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    print(f"\n== {n:,} documents ==", flush=True)
    t0 = time.perf_counter()
    docs = synthetic.corpus(n, colbert=False, seed=0)
    q, _ = synthetic.queries(docs, args.queries, seed=1)
    full_colbert = n <= args.colbert_docs
    nq_col = min(args.colbert_queries, args.queries)
    exact = Exact(docs, {}, seed=0)
    reach_k = max([args.candidates, *args.sweep])
    colbert_ids = np.arange(n) if full_colbert else reachable(exact, q, nq_col, reach_k)
    exact.colbert = dict(zip(colbert_ids.tolist(), synthetic.colbert_of(docs, colbert_ids, 0)))
    rows = sum(len(c) for c in exact.colbert.values())
    print(f"data: {time.perf_counter() - t0:.0f} s; ColBERT rows for {len(colbert_ids):,} documents "
          f"({rows:,} rows, {rows * 2048 / 2**30:.1f} GiB float16)", flush=True)
    result: dict = {"docs": n, "queries": args.queries, "colbert_docs": len(colbert_ids),
                    "colbert_queries": nq_col, "candidates": args.candidates, "engines": {}}

    # -- ground truth: exact M3 over the whole corpus ("all" over a 5x pool above --colbert-docs)
    t = time.perf_counter()
    truth = {m: [set(exact.search(q, i, m, 10, args.candidates).tolist()) for i in range(args.queries)]
             for m in ("dense", "sparse", "dense+sparse")}
    pool = None if full_colbert else 5 * args.candidates
    truth["all"] = exact.all_top(q, nq_col, 10, pool)
    result["all_reference"] = "every document" if pool is None else f"exact dense and sparse top {pool}"
    print(f"exact M3: {time.perf_counter() - t:.0f} s (all: {result['all_reference']})", flush=True)

    # -- Qdrant Edge: ingest dense+sparse alone, then the full index; HNSW build; queries
    ds = Index.create(workdir / f"ds{n}", fingerprint="synthetic-bge-m3", dim=1024, modes=("dense", "sparse"))
    rate_ds = ingest_rate(ds, docs, np.arange(n), args.batch)
    ds.close()
    shutil.rmtree(workdir / f"ds{n}")
    index = Index.create(workdir / f"all{n}", fingerprint="synthetic-bge-m3", dim=1024)
    rest = np.setdiff1d(np.arange(n), colbert_ids)
    if len(rest):
        ingest_rate(index, docs, rest, args.batch)
    rate_all = ingest_rate(index, docs, colbert_ids, args.batch, colbert=exact.colbert)
    t = time.perf_counter()
    index.optimize()
    build = time.perf_counter() - t
    print(f"edge ingest: dense+sparse {rate_ds:,.0f} docs/s; with ColBERT {rate_all:,.0f} docs/s; "
          f"HNSW build {build:.1f} s", flush=True)
    edge = {"ingest_dense_sparse_docs_s": rate_ds, "ingest_all_docs_s": rate_all, "build_s": build, "modes": {}}
    for mode in MODES:
        nq = nq_col if mode in COLBERT_MODES else args.queries
        edge["modes"][mode] = latency_and_recall(index, q, mode, nq, truth.get(mode))
    edge["raw_engine"] = {}
    for mode in ("dense", "sparse", "dense+sparse"):
        ours, raw = raw_vs_index(index, q, mode, args.queries)
        edge["modes"][f"{mode} (interleaved with raw)"] = ours
        edge["modes"][f"{mode} (raw engine query)"] = raw
        edge["raw_engine"][mode] = ours["p50_ms"] / raw["p50_ms"]
        print(f"{mode}: Index.search p50 {ours['p50_ms']:.2f} ms, raw engine query {raw['p50_ms']:.2f} ms: "
              f"{edge['raw_engine'][mode]:.2f}x (load {os.getloadavg()[0]:.1f})", flush=True)
    edge["stages_us"] = stage_profile(index, q, "dense+sparse", args.queries)
    print("dense+sparse, median µs per step: " + ", ".join(f"{k} {v:,.0f}" for k, v in edge["stages_us"].items()),
          flush=True)
    for c in args.sweep:
        edge["modes"][f"all (k={c})"] = latency_and_recall(index, q, "all", nq_col, truth["all"], candidates=c)
    for r in args.colbert_top:
        edge["modes"][f"all (colbert top {r})"] = latency_and_recall(index, q, "all", nq_col, truth["all"],
                                                                    colbert_top=r)
    result["engines"]["m3embed (Qdrant Edge)"] = edge
    index.close()
    shutil.rmtree(workdir / f"all{n}")

    # -- NumPy brute force, same queries
    numpy_res: dict = {"modes": {}}
    for mode in MODES:
        nq = min(nq_col if mode in COLBERT_MODES else args.queries, args.numpy_queries)
        times = []
        for i in range(nq):
            t = time.perf_counter()
            exact.search(q, i, mode, 10, args.candidates)
            times.append(time.perf_counter() - t)
        p50, p99 = percentiles(times)
        numpy_res["modes"][mode] = {"p50_ms": p50, "p99_ms": p99, "queries": nq,
                                    "recall@10": None if mode in COLBERT_MODES else 1.0}
    result["engines"]["NumPy brute force"] = numpy_res

    # -- qdrant-client local mode (the server API's stand-in): same data, fewer queries, ColBERT rows only
    #    for the documents those queries can reach (its ingest is ~100 docs/s with ColBERT)
    if n <= args.local_max_docs:
        nq_local = min(args.local_queries, args.queries)
        with_rows = np.intersect1d(reachable(exact, q, nq_local, args.candidates), colbert_ids)
        local = Index.create(":memory:", engine="qdrant", fingerprint="synthetic-bge-m3", dim=1024)
        rate_local_ds = ingest_rate(local, docs, np.setdiff1d(np.arange(n), with_rows), args.batch)
        rate_local = ingest_rate(local, docs, with_rows, args.batch, colbert=exact.colbert)
        local_res: dict = {"ingest_dense_sparse_docs_s": rate_local_ds, "ingest_all_docs_s": rate_local,
                           "modes": {m: latency_and_recall(local, q, m, nq_local, truth.get(m)) for m in MODES}}
        local.close()
        result["engines"]["qdrant-client local mode"] = local_res
        print(f"qdrant-client local: ingest dense+sparse {rate_local_ds:,.0f} docs/s, with ColBERT "
              f"{rate_local:,.0f} docs/s", flush=True)
    return result


class ListEdgeStore(EdgeStore):
    """The peer: Qdrant Edge fed Python lists (`.tolist()` per point), as m3embed did before memoryviews."""

    def upsert(self, batch: DocBatch) -> None:
        self.shard.update(qe.UpdateOperation.upsert_points(list_points(batch)))


def list_points(batch: DocBatch) -> list[qe.Point]:
    points = []
    dense = None if batch.dense is None else batch.dense.tolist()
    for i, doc_id in enumerate(batch.ids):
        vector: dict = {"dense": dense[i]} if dense is not None else {}
        if batch.sparse is not None:
            vector["sparse"] = qe.SparseVector(batch.sparse[i].ids.tolist(), batch.sparse[i].weights.tolist())
        if batch.colbert is not None:
            vector["colbert"] = batch.colbert[i].tolist()
        points.append(qe.Point(point_id(doc_id), vector, batch.payloads[i]))
    return points


def ingest_part(args: argparse.Namespace, workdir: Path) -> str:
    """ColBERT ingest (vectors given, bge-m3 shapes) through `Index.add_outputs`, against the previous list
    conversion and the engine alone, in interleaved rounds; each run on a fresh index, flushed at the end."""
    n, batch = args.ingest_docs, args.batch
    docs = synthetic.corpus(n, seed=0)
    rows = sum(len(c) for c in docs.colbert)
    print(f"{n:,} documents, {rows / n:.0f} ColBERT rows per document, {batch} per upsert", flush=True)
    rates: dict[str, list[float]] = {}

    def fresh(name: str) -> Index:
        return Index.create(workdir / name, fingerprint="synthetic-bge-m3", dim=1024)

    def timed(name: str, load: object) -> None:
        index = fresh(name)
        try:
            rate = load(index)
        finally:
            index.close()
            shutil.rmtree(workdir / name)
        rates.setdefault(name, []).append(rate)
        print(f"  {name}: {rate:,.0f} docs/s (load {os.getloadavg()[0]:.1f})", flush=True)

    def m3embed(index: Index) -> float:
        return ingest_rate(index, docs, np.arange(n), batch, colbert=dict(enumerate(docs.colbert)))

    def lists(index: Index) -> float:
        index.store.__class__ = ListEdgeStore
        return m3embed(index)

    def engine_alone(index: Index) -> float:
        ids = [f"d{j}" for j in range(n)]
        prepared = [list_points(index._batch(ids[a : a + batch], docs.select(np.arange(a, min(n, a + batch))),
                                             None, None)) for a in range(0, n, batch)]
        t = time.perf_counter()
        for points in prepared:
            index.store.shard.update(qe.UpdateOperation.upsert_points(points))
        index.flush()
        return n / (time.perf_counter() - t)

    def engine_no_wal(index: Index) -> float:
        """The engine alone on a shard without a write-ahead log, flushed after every batch (the only way such
        a shard makes a batch durable): what `wal_enabled=False` would buy."""
        path = workdir / "no-wal"
        colbert = qe.EdgeVectorParams(size=1024, distance=qe.Distance.Dot, datatype=qe.VectorStorageDatatype.Float16,
                                      multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
                                      hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000))
        config = qe.EdgeConfig(vectors={"dense": qe.EdgeVectorParams(size=1024, distance=qe.Distance.Dot),
                                        "colbert": colbert},
                               sparse_vectors={"sparse": qe.EdgeSparseVectorParams()}, wal_enabled=False)
        shard = qe.EdgeShard.create(str(path), config)
        ids = [f"d{j}" for j in range(n)]
        prepared = [list_points(index._batch(ids[a : a + batch], docs.select(np.arange(a, min(n, a + batch))),
                                             None, None)) for a in range(0, n, batch)]
        t = time.perf_counter()
        for points in prepared:
            shard.update(qe.UpdateOperation.upsert_points(points))
            shard.flush()
        rate = n / (time.perf_counter() - t)
        shard.close()
        shutil.rmtree(path)
        return rate

    for r in range(args.rounds):
        print(f"round {r + 1}", flush=True)
        order = [("m3embed (memoryview)", m3embed), ("previous (.tolist())", lists), ("engine alone", engine_alone),
                 ("engine alone, no WAL, flush per batch", engine_no_wal)]
        for name, load in order if r % 2 == 0 else order[::-1]:
            timed(name, load)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    base = med["m3embed (memoryview)"]
    lines = ["| path | docs/s (median) | rounds | vs m3embed |", "|---|---|---|---|"]
    for k, v in med.items():
        lines.append(f"| {k} | {v:,.0f} | {', '.join(f'{x:,.0f}' for x in rates[k])} | {v / base:.2f}x |")
    return "\n".join(lines)


def report(results: list[dict]) -> str:
    lines = ["| docs | engine | mode | p50 ms | p99 ms | recall@10 | queries |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for engine, e in r["engines"].items():
            for mode, m in e["modes"].items():
                rec = "—" if m["recall@10"] is None else f"{m['recall@10']:.3f}"
                lines.append(f"| {r['docs']:,} | {engine} | {mode} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {rec} "
                             f"| {m['queries']} |")
    lines += ["", "| docs | engine | ingest dense+sparse docs/s | ingest with ColBERT docs/s | HNSW build s |",
              "|---|---|---|---|---|"]
    for r in results:
        for engine, e in r["engines"].items():
            if "ingest_all_docs_s" in e:
                ds = e.get("ingest_dense_sparse_docs_s")
                lines.append(f"| {r['docs']:,} | {engine} | {'—' if ds is None else f'{ds:,.0f}'} | "
                             f"{e['ingest_all_docs_s']:,.0f} | {e.get('build_s', float('nan')):.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("search", "ingest"), default="search",
                   help="search: the per-size run; ingest: ColBERT ingest against the previous path and the engine")
    p.add_argument("--ingest-docs", type=int, default=2000, help="documents per round of --part ingest")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --part ingest")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000], help="corpus sizes (add 100000 for the full run)")
    p.add_argument("--queries", type=int, default=200, help="queries for dense / sparse / dense+sparse")
    p.add_argument("--colbert-docs", type=int, default=10_000, help="largest corpus stored with every ColBERT row")
    p.add_argument("--colbert-queries", type=int, default=100, help="queries for the colbert and all modes")
    p.add_argument("--candidates", type=int, default=100, help="candidates per route (the index default)")
    p.add_argument("--sweep", type=int, nargs="*", default=[30, 50], help="smaller candidate k also run for 'all'")
    p.add_argument("--colbert-top", type=int, nargs="*", default=[30, 50],
                   help="'all' also run scoring ColBERT for only this many dense+sparse candidates")
    p.add_argument("--batch", type=int, default=1000, help="documents per upsert")
    p.add_argument("--numpy-queries", type=int, default=50, help="queries timed on the NumPy baseline")
    p.add_argument("--local-max-docs", type=int, default=10_000, help="largest corpus run on qdrant-client local mode")
    p.add_argument("--local-queries", type=int, default=3, help="queries timed on qdrant-client local mode")
    p.add_argument("--workdir", type=Path, default=None, help="where indexes are built (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="m3bench-", dir=args.workdir))
    print(f"{os.cpu_count()} CPUs; indexes in {workdir}", flush=True)
    t = time.perf_counter()
    if args.part == "ingest":
        try:
            print("\n" + ingest_part(args, workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"\ntotal {time.perf_counter() - t:.0f} s")
        return
    try:
        results = [run_size(n, args, workdir) for n in args.sizes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + report(results))
    print(f"\ntotal {time.perf_counter() - t:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                       indent=2))


if __name__ == "__main__":
    main()
