"""Scoring a run against qrels with pytrec_eval (trec_eval semantics).

* nDCG@10    = `ndcg_cut.10` (linear gain, log2 discount, ideal ranking from the qrels).
* Recall@100 = `recall.100`.
* MRR@10     = `recip_rank` over the run cut to its first 10 documents. trec_eval's `recip_rank` has no
  cutoff, so the run is truncated first, in trec_eval's own order (score descending, ties by doc id
  descending), so a first relevant document below rank 10 scores 0.

Means are taken over every judged query (a query with at least one qrels line with score > 0); a query the
system returns nothing for counts as 0, like `trec_eval -c`.
"""

from __future__ import annotations

from collections.abc import Mapping

from m3embed._optional import require
from m3embed.evaluate.data import Qrels, Run

METRICS = ("nDCG@10", "Recall@100", "MRR@10")
_TREC_MEASURES = {"ndcg_cut.10": ("ndcg_cut_10", "nDCG@10"), "recall.100": ("recall_100", "Recall@100")}
MRR_DEPTH = 10


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
