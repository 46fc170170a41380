"""Runs: every system's ranking of the queries, scored into an `EvalResult`; the M3 modes go through an index.

`evaluate_dataset` is the whole evaluation of one dataset: the BM25 baseline, then the model's corpus encoded
into an index (a temporary Qdrant Edge one unless `index_dir` is given) and searched with every mode; with a
cross-encoder, each mode's best documents reranked (`<mode>+rerank`). Queries are encoded and reranked as a
search does (`Index.encode_queries`, `m3embed.index.core.rerank_hits`).
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from m3embed._optional import require
from m3embed._progress import Progress
from m3embed.evaluate.bm25 import BM25_NAME, BM25Config, bm25_searcher
from m3embed.evaluate.data import Dataset, Run, Searcher
from m3embed.evaluate.metrics import mean_metrics, per_query_metrics, truncate_run
from m3embed.modes import DEFAULT_RERANK_TOP, SEARCH_MODES, check_search_mode, index_representations
from m3embed.tokenize import resolve_max_length
from m3embed.types import Hit

logger = logging.getLogger(__name__)

RERANK_SUFFIX = "+rerank"  # the system name of a mode's run reranked by a cross-encoder


def retrieve(searcher: Searcher, queries: Mapping[str, str], batch_size: int = 256, *,
             on_batch: Callable[[int], None] | None = None) -> Run:
    """Run every query through `searcher` in batches and collect the run `{query_id: {doc_id: score}}`.

    `on_batch(n)` is called after each batch of `n` queries (e.g. to advance a progress bar).
    """
    ids, texts = list(queries), list(queries.values())
    run: Run = {}
    for start in range(0, len(ids), batch_size):
        batch = texts[start : start + batch_size]
        results = searcher(batch)
        if len(results) != len(batch):
            raise ValueError(f"searcher returned {len(results)} result lists for {len(batch)} queries")
        for query_id, ranked in zip(ids[start : start + batch_size], results):
            run[query_id] = {str(d): float(s) for d, s in ranked.items()}
        if on_batch:
            on_batch(len(batch))
    return run


@dataclass
class EvalResult:
    """Scores of several systems on one dataset.

    Attributes:
        scores: `{system: {metric: mean}}` in run order.
        seconds: `{system: search wall time}`; `settings` holds model, index and BM25 details.
        per_query: `{system: {query_id: {metric: value}}}`.
    """

    dataset: str
    qrels_file: str
    n_queries: int
    n_docs: int
    k: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_runs(dataset: Dataset, runs: Mapping[str, Run], k: int = 100,
                  seconds: Mapping[str, float] | None = None, settings: Mapping[str, Any] | None = None
                  ) -> EvalResult:
    """Score finished runs `{system: run}` against the dataset's qrels."""
    result = EvalResult(dataset.name, dataset.qrels_file, len(dataset.queries), len(dataset.doc_ids), k,
                        seconds=dict(seconds or {}), settings=dict(settings or {}))
    for name, run in runs.items():
        result.per_query[name] = per_query_metrics(dataset.qrels, run)
        result.scores[name] = mean_metrics(result.per_query[name])
        logger.info("%s %s: %s", dataset.name, name, result.scores[name])
    return result


def evaluate_systems(dataset: Dataset, searchers: Mapping[str, Searcher], k: int = 100,
                     settings: Mapping[str, Any] | None = None, batch_size: int = 256, progress: bool = False
                     ) -> EvalResult:
    """Run every searcher over the dataset's queries and score the runs.

    Args:
        dataset: the loaded test set.
        searchers: `{system name: searcher}`, each asked for at least `k` documents per query.
        k: retrieval depth (recorded in the result; Recall@100 needs k >= 100).
        settings: free-form details stored in the result (model, index, BM25 parameters...).
        progress: a progress bar per searcher on stderr.
    """
    runs, seconds = {}, {}
    for name, searcher in searchers.items():
        with Progress(progress, f"{name} queries", len(dataset.queries)) as bar:
            start = time.perf_counter()
            runs[name] = retrieve(searcher, dataset.queries, batch_size=batch_size, on_batch=bar.advance)
            seconds[name] = time.perf_counter() - start
    return evaluate_runs(dataset, runs, k, seconds, settings)


def fill_index(index: Any, model: Any, doc_ids: Sequence[str], doc_texts: Sequence[str], *,
               max_length: int | None = None, batch_size: int = 256, progress: bool = False) -> int:
    """Encode and add the documents the index does not hold yet, through `m3embed.index.ingest.ingest`.

    `model` must be the index's own model (ingest encodes with `index.model`). Each batch is committed, so an
    interrupted fill resumes where it stopped; `progress` shows ingest's bar on stderr. Returns the number of
    documents encoded (0 when the index already holds the whole corpus).
    """
    from m3embed.corpus import Record
    from m3embed.index.ingest import ingest

    if model is not index.model:
        raise ValueError("fill_index encodes with the index's model: open the index with this model")
    records = (Record(doc_id, text) for doc_id, text in zip(doc_ids, doc_texts, strict=True))
    stats = ingest(index, records, batch_size=batch_size, skip_existing=True, max_length=max_length,
                   progress=progress, total=len(doc_ids))
    return stats.added


def index_runs(index: Any, model: Any, queries: Mapping[str, str], modes: Sequence[str], k: int = 100, *,
               weights: Sequence[float] | None = None, candidates: int | None = None,
               max_length: int | None = None, batch_size: int = 256, progress: bool = False
               ) -> tuple[dict[str, Run], dict[str, float]]:
    """Search the index with every mode, encoding each batch of queries once for all modes.

    `max_length` truncates the queries (default: the model's query_max_length); `progress` shows a bar on
    stderr counting queries encoded and searched.

    Returns:
        `{mode: run}` and seconds per step: `encode queries` plus one entry per mode (engine time only).
    """
    specs = {mode: index.prepare(k=k, mode=mode, weights=weights, candidates=candidates, with_text=False)
             for mode in modes}
    encode = functools.partial(model.encode_queries, max_length=max_length)
    ids, texts = list(queries), list(queries.values())
    runs: dict[str, Run] = {mode: {} for mode in modes}
    seconds = {"encode queries": 0.0, **{mode: 0.0 for mode in modes}}
    with Progress(progress, f"queries ({len(modes)} modes)", len(ids)) as bar:
        for start in range(0, len(ids), batch_size):
            batch_ids = ids[start : start + batch_size]
            tick = time.perf_counter()
            out = index.encode_queries(list(specs.values()), texts[start : start + batch_size], encode=encode)
            seconds["encode queries"] += time.perf_counter() - tick
            for mode in modes:
                tick = time.perf_counter()
                hits = index.run(specs[mode], out)
                seconds[mode] += time.perf_counter() - tick
                for query_id, found in zip(batch_ids, hits):
                    runs[mode][query_id] = {str(h.id): float(h.score) for h in found}
            bar.advance(len(batch_ids))
    return runs, seconds


def rerank_run(reranker: Any, queries: Mapping[str, str], run: Run, doc_texts: Mapping[str, str], top: int, *,
               batch_size: int = 256, progress: bool = False) -> Run:
    """Each query's `top` best documents of `run` (trec_eval order) rescored by a cross-encoder from their texts,
    as a search reranks its hits (`rerank_hits`).

    Documents of the run below `top` keep their order under the reranked ones. The pairs of `batch_size` queries
    are scored together (`Reranker.rank`).
    """
    from m3embed.index.core import rerank_hits

    cut = truncate_run(run, top)
    out: Run = {}
    ids = [q for q in queries if q in run]
    with Progress(progress, f"rerank top {top}", len(ids)) as bar:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            first = [[Hit(d, s, doc_texts[d], {}, None) for d, s in cut[q].items()] for q in batch]
            for q, hits in zip(batch, rerank_hits(reranker, [queries[q] for q in batch], first, top, "run")):
                scores = {h.id: h.score for h in hits}
                floor = min(scores.values(), default=0.0) - 1.0
                rest = [d for d in truncate_run({q: run[q]}, len(run[q]))[q] if d not in scores]
                out[q] = {**scores, **{d: floor - i for i, d in enumerate(rest)}}
            bar.advance(len(batch))
    return out


@contextmanager
def eval_index(model: Any, modes: Sequence[str], index_dir: str | Path | None = None) -> Iterator[Any]:
    """Open `index_dir` (created if absent) or a temporary Qdrant Edge index deleted on exit."""
    from m3embed.index import open_index
    from m3embed.index.manifest import MANIFEST_NAME

    if index_dir is not None:
        if (Path(index_dir) / MANIFEST_NAME).exists():  # reused as it was built (its modes are checked below)
            index = open_index(index_dir, model)
        else:
            index = open_index(index_dir, model, create=True, modes=index_representations(modes), store_text=False)
        try:
            for mode in modes:  # an existing index may store fewer modes: fail before encoding anything
                check_search_mode(mode, index.manifest.modes)
            yield index
        finally:
            index.close()
        return
    with tempfile.TemporaryDirectory(prefix="m3embed-eval-") as tmp:
        index = open_index(Path(tmp) / "index", model, create=True, modes=index_representations(modes),
                           store_text=False)
        try:
            yield index
        finally:
            index.close()


@dataclass(frozen=True)
class M3Settings:
    """How the M3 modes are run.

    Attributes:
        modes: search modes to evaluate (subset of `m3embed.modes.SEARCH_MODES`).
        weights: (dense, sparse, colbert) for the hybrid modes; None = `m3embed.modes.SEARCH_WEIGHTS`.
        candidates: dense and sparse candidates per query whose union hybrid/colbert modes rescore;
            None = max(k, the index default of 100).
        query_max_length / passage_max_length: truncation in tokens; None = the model's own (`M3Model.
            query_max_length` / `passage_max_length`); an explicit value above its position limit is an error.
        index_dir: an index directory to use (created when absent, filled with missing documents);
            None = a temporary Qdrant Edge index, deleted afterwards.
        rerank_top: documents of each mode's run a cross-encoder reranks, when one is given.
    """

    modes: tuple[str, ...] = SEARCH_MODES
    weights: tuple[float, float, float] | None = None
    candidates: int | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None
    index_dir: str | Path | None = None
    rerank_top: int = DEFAULT_RERANK_TOP


def evaluate_dataset(dataset: Dataset, model: Any = None, *, k: int = 100, m3: M3Settings = M3Settings(),
                     bm25: BM25Config | None = BM25Config(), batch_size: int = 256, progress: bool = False,
                     reranker: Any = None) -> EvalResult:
    """Evaluate the M3 modes (through an index) and the BM25 baseline on one dataset, in one result.

    Args:
        dataset: the loaded test set.
        model: an M3Model; None evaluates BM25 only.
        k: documents retrieved per query (at least 100 so that Recall@100 is defined).
        m3: modes, hybrid weights, candidates, max lengths and index location for the model.
        bm25: the baseline's settings; None skips it.
        batch_size: documents and queries per batch.
        progress: progress bars on stderr (BM25 indexing and queries, index filling, M3 queries).
        reranker: a cross-encoder (`m3embed.rerank.Reranker`); each mode's best `m3.rerank_top` documents are
            reranked into a `<mode>+rerank` system, timed separately ("rerank ms per query", wall and CPU, in the
            settings).
    """
    if reranker is not None and model is None:
        raise ValueError("a reranker reranks the model's runs: give a model too")
    if k < 100:
        raise ValueError(f"k={k} is below 100; Recall@100 needs at least 100 retrieved documents per query")
    if reranker is not None and not 1 <= m3.rerank_top <= k:
        raise ValueError(f"rerank_top={m3.rerank_top} must be between 1 and k={k}")
    if model is None and bm25 is None:
        raise ValueError("nothing to evaluate: give a model, or keep the BM25 baseline")
    if not dataset.doc_ids or not dataset.queries:
        raise ValueError(f"dataset {dataset.name} has no {'documents' if not dataset.doc_ids else 'queries'}; "
                         "an evaluation ranks a corpus for each query (see `load_dataset`)")
    require("pytrec_eval", "eval")  # fail now, not after the index is built
    if bm25 is not None:
        require("bm25s", "eval")
    runs: dict[str, Run] = {}
    seconds: dict[str, float] = {}
    settings: dict[str, Any] = {}
    if bm25 is not None:
        tick = time.perf_counter()
        search = bm25_searcher(dataset.doc_ids, dataset.doc_texts, k=k, config=bm25, progress=progress)
        settings["bm25 index s"] = round(time.perf_counter() - tick, 3)
        with Progress(progress, f"{BM25_NAME} queries", len(dataset.queries)) as bar:
            tick = time.perf_counter()  # the bar starts and stops outside the timed search
            runs[BM25_NAME] = retrieve(search, dataset.queries, batch_size=batch_size, on_batch=bar.advance)
            seconds[BM25_NAME] = time.perf_counter() - tick
        settings["bm25"] = bm25.describe()
    if model is not None:
        q_len = resolve_max_length(m3.query_max_length, model.max_length, model.query_max_length)
        p_len = resolve_max_length(m3.passage_max_length, model.max_length, model.passage_max_length)
        with eval_index(model, m3.modes, m3.index_dir) as index:
            tick = time.perf_counter()
            added = fill_index(index, model, dataset.doc_ids, dataset.doc_texts, max_length=p_len,
                               batch_size=batch_size, progress=progress)
            index.optimize()
            settings["index build s"] = round(time.perf_counter() - tick, 3)
            extra = index.count() - len(dataset.doc_ids)
            if extra > 0:
                logger.warning("%s holds %d documents that are not in the corpus; they compete in the ranking",
                               index.location, extra)
            defaults = index.prepare(k=k, weights=m3.weights, candidates=m3.candidates)
            mode_runs, mode_seconds = index_runs(
                index, model, dataset.queries, m3.modes, k, weights=m3.weights, candidates=m3.candidates,
                max_length=q_len, batch_size=batch_size, progress=progress)
            settings.update({
                "model": f"{getattr(model, 'name', '') or 'M3Model'} (fingerprint {model.fingerprint})",
                "index": (f"{m3.index_dir} ({index.manifest.engine}, {added} documents added)" if m3.index_dir
                          else f"temporary {index.manifest.engine} index, deleted afterwards"),
                "weights (dense, sparse, colbert)": list(defaults.weights),
                "candidates per route": defaults.candidates,
                "max length (query, passage)": [q_len, p_len],
                "query encoding s": round(mode_seconds.pop("encode queries"), 3),
            })
            if extra > 0:
                settings["extra documents in index"] = extra
        runs.update(mode_runs)
        seconds.update(mode_seconds)
    if reranker is not None:
        texts = dict(zip(dataset.doc_ids, dataset.doc_texts))
        wall, cpu, n = {}, {}, max(len(dataset.queries), 1)
        for mode in m3.modes:
            tick, cpu_tick = time.perf_counter(), time.process_time()
            runs[mode + RERANK_SUFFIX] = rerank_run(reranker, dataset.queries, runs[mode], texts, m3.rerank_top,
                                                    batch_size=batch_size, progress=progress)
            elapsed = time.perf_counter() - tick
            seconds[mode + RERANK_SUFFIX] = seconds[mode] + elapsed
            wall[mode] = round(1000 * elapsed / n, 2)
            cpu[mode] = round(1000 * (time.process_time() - cpu_tick) / n, 2)
        settings["reranker"] = (f"{getattr(reranker, 'name', '') or 'Reranker'}, top {m3.rerank_top} of each mode, "
                                f"pairs cut at {getattr(reranker, 'pair_max_length', '-')} tokens")
        settings["rerank ms per query"] = wall
        settings["rerank CPU ms per query"] = cpu  # this process's CPU time: steadier than wall on a shared machine
    return evaluate_runs(dataset, runs, k, seconds, settings)
