"""Retrieval evaluation on BEIR-layout datasets: loaders, runs, trec_eval metrics, a BM25 baseline, reports.

A dataset directory holds `corpus.jsonl` (`id`, `text`, optional `title`), `queries.jsonl` (`id`, `text`) and
one or more qrels files (`query-id<TAB>corpus-id<TAB>score`, header optional). A *searcher* turns query texts
into ranked `{doc_id: score}` dicts; every system (each M3 mode through the index, BM25) is one searcher, and
its run is scored with pytrec_eval (trec_eval semantics):

* nDCG@10    = `ndcg_cut.10` (linear gain, log2 discount, ideal ranking from the qrels).
* Recall@100 = `recall.100`.
* MRR@10     = `recip_rank` over the run cut to its first 10 documents. trec_eval's `recip_rank` has no
  cutoff, so the run is truncated first, in trec_eval's own order (score descending, ties by doc id
  descending), so a first relevant document below rank 10 scores 0.

Means are taken over every judged query (a query with at least one qrels line with score > 0); a query the
system returns nothing for counts as 0, like `trec_eval -c`.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from m3embed._optional import require
from m3embed.corpus import iter_jsonl
from m3embed.modes import MODES, SEARCH_MODES, check_search_mode, index_representations
from m3embed.tokenize import resolve_max_length

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
Searcher = Callable[[Sequence[str]], list[dict[str, float]]]
"""Query texts -> one `{doc_id: score}` dict per query (higher is better)."""

METRICS = ("nDCG@10", "Recall@100", "MRR@10")
EVAL_MAX_LENGTH = 512  # FlagEmbedding's evaluation default for queries and passages
BM25_NAME = "bm25"
_TREC_MEASURES = {"ndcg_cut.10": ("ndcg_cut_10", "nDCG@10"), "recall.100": ("recall_100", "Recall@100")}
MRR_DEPTH = 10


# ---------------------------------------------------------------- loading


@dataclass
class Dataset:
    """A retrieval test set in memory.

    Attributes:
        name: display name (the directory's last two parts, e.g. `classic/adi`).
        doc_ids / doc_texts: the corpus in file order; text = `title + " " + text` when a title exists.
        queries: judged queries only, `{query_id: text}` in file order.
        qrels: `{query_id: {doc_id: grade}}` for those queries.
        qrels_file: which qrels file was read.
    """

    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: Qrels
    qrels_file: str

    def head(self, n: int) -> Dataset:
        """The same dataset restricted to its first `n` queries (for quick runs)."""
        keep = list(self.queries)[:n]
        return Dataset(self.name, self.doc_ids, self.doc_texts, {q: self.queries[q] for q in keep},
                       {q: self.qrels[q] for q in keep}, self.qrels_file)


def _field(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}: missing field {key!r} (have {sorted(obj)})")
        return None
    if key == "id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # some BEIR exports write numeric ids
    if not isinstance(value, str):
        raise TypeError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def load_corpus(path: str | Path) -> dict[str, str]:
    """Read corpus.jsonl into `{doc_id: text}`; the text is `title + " " + text` when a title is present."""
    path = Path(path)
    corpus: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        doc_id = _field(obj, "id", where)
        text = _field(obj, "text", where)
        title = _field(obj, "title", where, required=False)
        if doc_id in corpus:
            raise ValueError(f"{where}: duplicate document id {doc_id!r}")
        corpus[doc_id] = f"{title} {text}".strip() if title else text
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    """Read queries.jsonl into `{query_id: text}`."""
    path = Path(path)
    queries: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        query_id = _field(obj, "id", where)
        if query_id in queries:
            raise ValueError(f"{where}: duplicate query id {query_id!r}")
        queries[query_id] = _field(obj, "text", where)
    return queries


def load_qrels(path: str | Path) -> Qrels:
    """Read a BEIR qrels TSV (`query-id corpus-id score`, header optional) or TREC qrels (`qid 0 docid rel`)."""
    path = Path(path)
    if not path.is_file():
        hint = ", ".join(sorted(p.name for p in path.parent.glob("qrels*"))) or "none"
        raise FileNotFoundError(f"{path} not found; qrels files in {path.parent}: {hint}")
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 4:  # TREC layout: qid iteration docid rel
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated fields "
                                 f"(query-id, corpus-id, score), got {len(parts)}")
            query_id, doc_id, grade = parts
            try:
                score = int(grade)
            except ValueError:
                if lineno == 1 and not qrels:
                    continue  # header line
                raise ValueError(f"{path}:{lineno}: field 'score' must be an integer, got {grade!r}") from None
            qrels.setdefault(query_id, {})[doc_id] = score
    if not qrels:
        raise ValueError(f"{path}: no judgements found")
    return qrels


def load_dataset(path: str | Path, qrels: str = "qrels.tsv") -> Dataset:
    """Load a BEIR-layout directory, keeping only the queries that have at least one relevant document.

    Args:
        path: the dataset directory.
        qrels: the qrels file name inside it (e.g. `qrels.dev.tsv`), or a path to one.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory; pass a dataset dir holding corpus.jsonl")
    qrels_path = Path(qrels) if Path(qrels).is_absolute() else root / qrels
    corpus = load_corpus(root / "corpus.jsonl")
    all_queries = load_queries(root / "queries.jsonl")
    judged = load_qrels(qrels_path)
    unknown = [q for q in judged if q not in all_queries]
    if unknown:
        raise ValueError(f"{qrels_path}: {len(unknown)} query id(s) not in queries.jsonl, e.g. {unknown[0]!r}")
    missing_docs = {d for rels in judged.values() for d in rels if d not in corpus}
    if missing_docs:  # still counted as relevant, just never retrievable (trec_eval semantics)
        logger.warning("%s: %d judged doc id(s) not in corpus.jsonl, e.g. %r",
                       qrels_path, len(missing_docs), next(iter(missing_docs)))
    queries = {q: t for q, t in all_queries.items() if any(g > 0 for g in judged.get(q, {}).values())}
    if not queries:
        raise ValueError(f"{qrels_path}: no query has a judgement with score > 0")
    name = "/".join(root.resolve().parts[-2:])
    return Dataset(name, list(corpus), list(corpus.values()), queries,
                   {q: judged[q] for q in queries}, qrels_path.name)


# ---------------------------------------------------------------- metrics


def _trec_order(ranked: Mapping[str, float]) -> list[tuple[str, float]]:
    """Documents in trec_eval's order: score descending, ties broken by doc id descending."""
    return sorted(ranked.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def truncate_run(run: Run, depth: int) -> Run:
    """Keep each query's first `depth` documents in trec_eval's order."""
    return {q: dict(_trec_order(docs)[:depth]) for q, docs in run.items()}


def per_query_metrics(qrels: Qrels, run: Run) -> dict[str, dict[str, float]]:
    """nDCG@10, Recall@100 and MRR@10 for every query in `qrels` (0 where the run has nothing)."""
    pytrec_eval = require("pytrec_eval", "eval")
    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels and docs}
    main = pytrec_eval.RelevanceEvaluator(qrels, set(_TREC_MEASURES)).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(truncate_run(run, MRR_DEPTH))
    out: dict[str, dict[str, float]] = {}
    for q in qrels:
        row = {name: main.get(q, {}).get(key, 0.0) for key, name in _TREC_MEASURES.values()}
        row["MRR@10"] = rr.get(q, {}).get("recip_rank", 0.0)
        out[q] = {m: row[m] for m in METRICS}
    return out


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average each metric over the queries."""
    n = max(len(per_query), 1)
    return {m: sum(row[m] for row in per_query.values()) / n for m in METRICS}


def evaluate_run(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean nDCG@10, Recall@100 and MRR@10 of `run` over the queries of `qrels`."""
    return mean_metrics(per_query_metrics(qrels, run))


# ---------------------------------------------------------------- runs


def retrieve(searcher: Searcher, queries: Mapping[str, str], batch_size: int = 256) -> Run:
    """Run every query through `searcher` in batches and collect the run `{query_id: {doc_id: score}}`."""
    ids, texts = list(queries), list(queries.values())
    run: Run = {}
    for start in range(0, len(ids), batch_size):
        batch = texts[start : start + batch_size]
        results = searcher(batch)
        if len(results) != len(batch):
            raise ValueError(f"searcher returned {len(results)} result lists for {len(batch)} queries")
        for query_id, ranked in zip(ids[start : start + batch_size], results):
            run[query_id] = {str(d): float(s) for d, s in ranked.items()}
    return run


# CJK ideographs and kana have no spaces between words: one token per character. Hangul is spaced, so it
# stays word-level like every other script.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_BM25_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")


def bm25_tokens(text: str) -> list[str]:
    """Split lower-cased text into BM25 terms: word-character runs, single characters for CJK/kana."""
    return _BM25_TOKEN.findall(text.lower())


@dataclass(frozen=True)
class BM25Config:
    """BM25 baseline settings (bm25s, Lucene's BM25 variant).

    Attributes:
        k1: term-frequency saturation; 0.9 is Anserini/Pyserini's default for BEIR.
        b: length normalisation; 0.4 is Anserini/Pyserini's default.
        stopwords: "en" drops bm25s' English stopword list; "none" keeps every term.
    """

    k1: float = 0.9
    b: float = 0.4
    stopwords: str = "en"

    def describe(self) -> str:
        stop = "English stopwords removed" if self.stopwords == "en" else "no stopwords"
        return (f"bm25s Lucene BM25 k1={self.k1} b={self.b}; lower-cased \\w+ words, one token per CJK/kana "
                f"character, {stop}, no stemming")


def bm25_searcher(doc_ids: Sequence[str], doc_texts: Sequence[str], k: int = 100,
                  config: BM25Config = BM25Config()) -> Searcher:
    """Index the corpus with bm25s and return a searcher over it (documents scoring 0 are left out)."""
    bm25s = require("bm25s", "eval")
    from bm25s.tokenization import Tokenizer

    if config.stopwords not in ("en", "none"):
        raise ValueError(f"stopwords={config.stopwords!r}; choose 'en' or 'none'")
    tokenizer = Tokenizer(lower=False, splitter=bm25_tokens, stopwords="en" if config.stopwords == "en" else None)
    corpus_tokens = tokenizer.tokenize(list(doc_texts), update_vocab=True, return_as="ids", show_progress=False)
    model = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
    model.index(corpus_tokens, show_progress=False)
    empty_id = tokenizer.word_to_id.get("")  # bm25s' placeholder for texts without a known term
    depth = min(k, len(doc_ids))

    def search(texts: Sequence[str]) -> list[dict[str, float]]:
        tokens = tokenizer.tokenize(list(texts), update_vocab=False, return_as="ids", show_progress=False)
        hits, scores = model.retrieve(tokens, k=depth, show_progress=False)
        out = []
        for q_tokens, row, row_scores in zip(tokens, hits, scores):
            if all(t == empty_id for t in q_tokens):  # no known term: nothing matches
                out.append({})
                continue
            out.append({doc_ids[i]: float(s) for i, s in zip(row, row_scores) if s > 0})
        return out

    return search


# ---------------------------------------------------------------- results


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
                     settings: Mapping[str, Any] | None = None, batch_size: int = 256) -> EvalResult:
    """Run every searcher over the dataset's queries and score the runs.

    Args:
        dataset: the loaded test set.
        searchers: `{system name: searcher}`, each asked for at least `k` documents per query.
        k: retrieval depth (recorded in the result; Recall@100 needs k >= 100).
        settings: free-form details stored in the result (model, index, BM25 parameters...).
    """
    runs, seconds = {}, {}
    for name, searcher in searchers.items():
        start = time.perf_counter()
        runs[name] = retrieve(searcher, dataset.queries, batch_size=batch_size)
        seconds[name] = time.perf_counter() - start
    return evaluate_runs(dataset, runs, k, seconds, settings)


# ---------------------------------------------------------------- M3 runs through the index


def fill_index(index: Any, model: Any, doc_ids: Sequence[str], doc_texts: Sequence[str], *,
               max_length: int | None = None, batch_size: int = 256) -> int:
    """Encode and add the documents the index does not hold yet, committing batch by batch.

    Returns the number of documents encoded (0 when the index already holds the whole corpus).
    """
    missing = set(index.missing(list(doc_ids)))
    todo = [i for i, d in enumerate(doc_ids) if d in missing]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        texts = [doc_texts[i] for i in chunk]
        out = model.encode_corpus(texts, modes=index.manifest.modes, max_length=max_length)
        index.add_outputs([doc_ids[i] for i in chunk], out)
        index.flush()
    return len(todo)


def index_runs(index: Any, model: Any, queries: Mapping[str, str], modes: Sequence[str], k: int = 100, *,
               weights: Sequence[float] | None = None, candidates: int | None = None,
               max_length: int | None = None, batch_size: int = 256) -> tuple[dict[str, Run], dict[str, float]]:
    """Search the index with every mode, encoding each batch of queries once for all modes.

    Returns:
        `{mode: run}` and seconds per step: `encode queries` plus one entry per mode (engine time only).
    """
    specs = {mode: index.prepare(k=k, mode=mode, weights=weights, candidates=candidates, with_text=False)
             for mode in modes}
    query_modes = tuple(sorted({r for spec in specs.values() for r in spec.query_modes}, key=MODES.index))
    ids, texts = list(queries), list(queries.values())
    runs: dict[str, Run] = {mode: {} for mode in modes}
    seconds = {"encode queries": 0.0, **{mode: 0.0 for mode in modes}}
    for start in range(0, len(ids), batch_size):
        batch_ids = ids[start : start + batch_size]
        tick = time.perf_counter()
        out = model.encode_queries(texts[start : start + batch_size], modes=query_modes, max_length=max_length)
        seconds["encode queries"] += time.perf_counter() - tick
        for mode in modes:
            tick = time.perf_counter()
            hits = index.run(specs[mode], out)
            seconds[mode] += time.perf_counter() - tick
            for query_id, found in zip(batch_ids, hits):
                runs[mode][query_id] = {str(h.id): float(h.score) for h in found}
    return runs, seconds


@contextmanager
def eval_index(model: Any, modes: Sequence[str], index_dir: str | Path | None = None) -> Iterator[Any]:
    """Open `index_dir` (created if absent) or a temporary Qdrant Edge index deleted on exit."""
    from m3embed.index import open_index

    if index_dir is not None:
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
        query_max_length / passage_max_length: truncation in tokens; None = EVAL_MAX_LENGTH (512, FlagEmbedding's
            default) capped at the model's position limit; an explicit value above that limit is an error.
        index_dir: an index directory to use (created when absent, filled with missing documents);
            None = a temporary Qdrant Edge index, deleted afterwards.
    """

    modes: tuple[str, ...] = SEARCH_MODES
    weights: tuple[float, float, float] | None = None
    candidates: int | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None
    index_dir: str | Path | None = None


def evaluate_dataset(dataset: Dataset, model: Any = None, *, k: int = 100, m3: M3Settings = M3Settings(),
                     bm25: BM25Config | None = BM25Config(), batch_size: int = 256) -> EvalResult:
    """Evaluate the M3 modes (through an index) and the BM25 baseline on one dataset, in one result.

    Args:
        dataset: the loaded test set.
        model: an M3Model; None evaluates BM25 only.
        k: documents retrieved per query (at least 100 so that Recall@100 is defined).
        m3: modes, hybrid weights, candidates, max lengths and index location for the model.
        bm25: the baseline's settings; None skips it.
    """
    if k < 100:
        raise ValueError(f"k={k} is below 100; Recall@100 needs at least 100 retrieved documents per query")
    if model is None and bm25 is None:
        raise ValueError("nothing to evaluate: give a model, or keep the BM25 baseline")
    runs: dict[str, Run] = {}
    seconds: dict[str, float] = {}
    settings: dict[str, Any] = {}
    if bm25 is not None:
        tick = time.perf_counter()
        search = bm25_searcher(dataset.doc_ids, dataset.doc_texts, k=k, config=bm25)
        settings["bm25 index s"] = round(time.perf_counter() - tick, 3)
        tick = time.perf_counter()
        runs[BM25_NAME] = retrieve(search, dataset.queries, batch_size=batch_size)
        seconds[BM25_NAME] = time.perf_counter() - tick
        settings["bm25"] = bm25.describe()
    if model is not None:
        q_len, p_len = (resolve_max_length(n, model.max_length, EVAL_MAX_LENGTH)
                        for n in (m3.query_max_length, m3.passage_max_length))
        with eval_index(model, m3.modes, m3.index_dir) as index:
            tick = time.perf_counter()
            added = fill_index(index, model, dataset.doc_ids, dataset.doc_texts, max_length=p_len,
                               batch_size=batch_size)
            index.optimize()
            settings["index build s"] = round(time.perf_counter() - tick, 3)
            extra = index.count() - len(dataset.doc_ids)
            if extra > 0:
                logger.warning("%s holds %d documents that are not in the corpus; they compete in the ranking",
                               index.location, extra)
            defaults = index.prepare(k=k, weights=m3.weights, candidates=m3.candidates)
            mode_runs, mode_seconds = index_runs(
                index, model, dataset.queries, m3.modes, k, weights=m3.weights, candidates=m3.candidates,
                max_length=q_len, batch_size=batch_size)
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
    return evaluate_runs(dataset, runs, k, seconds, settings)


# ---------------------------------------------------------------- reports


def markdown_table(result: EvalResult) -> str:
    """The result as a Markdown table (best value per metric in bold) with a one-line header."""
    best = {m: max(s[m] for s in result.scores.values()) for m in METRICS} if result.scores else {}
    lines = [
        (f"**{result.dataset}** ({result.qrels_file}): {result.n_queries} queries, {result.n_docs} documents, "
         f"top {result.k} retrieved per query"),
        "",
        "| system | " + " | ".join(METRICS) + " | search s |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    for name, scores in result.scores.items():
        cells = [f"**{scores[m]:.4f}**" if scores[m] == best[m] else f"{scores[m]:.4f}" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result.seconds.get(name, 0.0):.2f} |")
    notes = [f"- {key}: {value}" for key, value in result.settings.items()]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def plot_bars(result: EvalResult, path: str | Path) -> Path:
    """Grouped bar chart: one group per metric, one bar per system, values written above the bars."""
    matplotlib = require("matplotlib", "eval")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(result.scores)
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(2.0 + 0.45 * len(systems) * len(METRICS), 4.6), dpi=150)
    palette = iter(plt.get_cmap("tab10").colors)
    colors = ["0.55" if name == BM25_NAME else next(palette) for name in systems]  # the baseline in grey
    for i, name in enumerate(systems):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(METRICS))]
        values = [result.scores[name][m] for m in METRICS]
        bars = ax.bar(xs, values, width * 0.92, label=name, color=colors[i])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1.5)
    ax.set_xticks(range(len(METRICS)), METRICS)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(f"{result.dataset} ({result.qrels_file}, {result.n_queries} queries, "
                 f"{result.n_docs} docs)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(ncols=min(len(systems), 6), loc="upper center", bbox_to_anchor=(0.5, -0.09), frameon=False,
              fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(result: EvalResult, out_dir: str | Path, stem: str = "eval") -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` into `out_dir`; return the three paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_table(result), encoding="utf-8")
    plot_bars(result, paths["png"])
    return paths
