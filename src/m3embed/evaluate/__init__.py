"""Retrieval evaluation on BEIR-layout datasets: every M3 mode through the index, a BM25 baseline, trec_eval
metrics (nDCG@10, Recall@100, MRR@10) and report files.

* `data`    loading a dataset directory into a `Dataset` (corpus, judged queries, qrels).
* `metrics` scoring runs with pytrec_eval; the exact metric semantics are in its docstring.
* `bm25`    the bm25s baseline searcher.
* `runs`    running systems over the queries, the M3 modes through an index; `evaluate_dataset`.
* `report`  eval.json / eval.md / eval.png.
"""

from __future__ import annotations

from m3embed._optional import require
from m3embed.evaluate.bm25 import BM25_NAME, BM25Config, bm25_searcher, bm25_tokens
from m3embed.evaluate.data import Dataset, Qrels, Run, Searcher, load_corpus, load_dataset, load_qrels, load_queries
from m3embed.evaluate.metrics import METRICS, MRR_DEPTH, evaluate_run, mean_metrics, per_query_metrics, truncate_run
from m3embed.evaluate.report import console_table, markdown_table, plot_bars, write_report
from m3embed.evaluate.runs import (
    RERANK_SUFFIX,
    EvalResult,
    M3Settings,
    eval_index,
    evaluate_dataset,
    evaluate_runs,
    evaluate_systems,
    fill_index,
    index_runs,
    rerank_run,
    retrieve,
)

__all__ = [
    "BM25_NAME", "EXTRA_MODULES", "METRICS", "MRR_DEPTH", "BM25Config", "Dataset", "EvalResult",
    "M3Settings", "Qrels", "Run", "Searcher", "bm25_searcher", "bm25_tokens", "console_table", "eval_index",
    "evaluate_dataset", "evaluate_run", "evaluate_runs", "evaluate_systems", "fill_index", "index_runs",
    "load_corpus", "load_dataset", "load_qrels", "load_queries", "markdown_table", "mean_metrics",
    "per_query_metrics", "plot_bars", "RERANK_SUFFIX", "require_extras", "rerank_run", "retrieve", "truncate_run",
    "write_report",
]

EXTRA_MODULES = ("pytrec_eval", "bm25s", "matplotlib")
"""What the `[eval]` extra installs: metrics, the BM25 baseline, the chart."""


def require_extras() -> None:
    """Raise MissingExtra with the one-line install hint now if a module of the `[eval]` extra is missing."""
    for module in EXTRA_MODULES:
        require(module, "eval")
