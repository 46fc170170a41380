"""trec_eval metric semantics: nDCG@10, Recall@100, MRR@10 cut at rank 10, missing queries as 0."""

from __future__ import annotations

import math
import random

import pytest
import pytrec_eval

from m3embed.evaluate import METRICS, evaluate_run, per_query_metrics, truncate_run


def _ndcg10_by_hand(grades: dict[str, int], ranking: list[str]) -> float:
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:10]))
    ideal = sorted(grades.values(), reverse=True)[:10]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def test_ndcg_at_10_matches_the_trec_eval_formula():
    rng = random.Random(0)
    qrels, run, expected = {}, {}, []
    for q in range(5):
        docs = [f"d{i}" for i in range(30)]
        grades = {d: rng.randint(1, 3) for d in rng.sample(docs, 6)}
        ranking = rng.sample(docs, 20)
        qrels[f"q{q}"] = grades
        run[f"q{q}"] = {d: 100.0 - i for i, d in enumerate(ranking)}  # distinct scores: order is unambiguous
        expected.append(_ndcg10_by_hand(grades, ranking))
    got = evaluate_run(qrels, run)["nDCG@10"]
    assert got == pytest.approx(sum(expected) / len(expected), abs=1e-9)
    assert 0 < got < 1


def test_recall_at_100_counts_only_the_first_100():
    qrels = {"q": {"r1": 1, "r2": 1, "r3": 1, "r4": 1}}
    ranking = [f"n{i}" for i in range(150)]
    ranking[10], ranking[99], ranking[100] = "r1", "r2", "r3"  # r3 at rank 101, r4 never retrieved
    run = {"q": {d: 1000.0 - i for i, d in enumerate(ranking)}}
    assert evaluate_run(qrels, run)["Recall@100"] == pytest.approx(0.5)


@pytest.mark.parametrize(("first_relevant_rank", "expected"), [(1, 1.0), (3, 1 / 3), (10, 0.1), (11, 0.0)])
def test_mrr_at_10_is_cut_at_rank_10(first_relevant_rank, expected):
    ranking = [f"n{i}" for i in range(30)]
    ranking[first_relevant_rank - 1] = "rel"
    ranking[20] = "rel2"
    run = {"q": {d: 50.0 - i for i, d in enumerate(ranking)}}
    qrels = {"q": {"rel": 1, "rel2": 1}}
    assert evaluate_run(qrels, run)["MRR@10"] == pytest.approx(expected)
    # trec_eval's recip_rank alone has no cutoff: it would give 1/11 for rank 11
    plain = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["q"]["recip_rank"]
    assert plain == pytest.approx(1 / first_relevant_rank)


def test_mrr_at_10_agrees_with_trec_eval_ordering_under_ties():
    """Truncation must follow trec_eval's tie-breaking, or MRR@10 differs from recip_rank cut at 10."""
    rng = random.Random(1)
    qrels, run = {}, {}
    for q in range(200):
        docs = [f"d{i:02d}" for i in range(40)]
        qrels[f"q{q}"] = {d: 1 for d in rng.sample(docs, 2)}
        run[f"q{q}"] = {d: float(rng.randint(0, 4)) for d in docs}  # many ties around rank 10
    plain = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    ours = per_query_metrics(qrels, run)
    for q in qrels:
        rr = plain[q]["recip_rank"]
        assert ours[q]["MRR@10"] == pytest.approx(rr if rr >= 0.1 - 1e-12 else 0.0), q


def test_truncate_run_uses_score_then_descending_doc_id():
    run = {"q": {"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.5}}
    assert list(truncate_run(run, 3)["q"]) == ["c", "b", "a"]


def test_queries_missing_from_the_run_count_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    scores = evaluate_run(qrels, {"q1": {"a": 1.0}})
    assert scores == {m: pytest.approx(0.5) for m in METRICS}
    assert evaluate_run(qrels, {"q1": {"a": 1.0}, "q2": {}}) == scores
