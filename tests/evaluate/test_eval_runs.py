"""Runs: searchers scored into an EvalResult, and every M3 mode through an index (temporary or a reused dir)."""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import pytest

from m3embed._optional import MissingExtra
from m3embed.evaluate import (
    METRICS,
    Dataset,
    M3Settings,
    eval_index,
    evaluate_dataset,
    evaluate_systems,
    fill_index,
    index_runs,
    load_dataset,
    per_query_metrics,
    rerank_run,
    truncate_run,
)
from m3embed.modes import MODES, SEARCH_MODES


def _toy_dataset() -> Dataset:
    qrels = {"q1": {"a": 1}, "q2": {"b": 2, "c": 1}}
    return Dataset("toy/set", ["a", "b", "c", "d"], ["alpha", "beta", "gamma", "delta"],
                   {"q1": "alpha?", "q2": "beta gamma?"}, qrels, "qrels.tsv")


def test_evaluate_systems_scores_each_searcher():
    ds = _toy_dataset()

    def oracle(texts):
        return [{d: float(g) for d, g in ds.qrels[q].items()} for q, t in zip(ds.queries, texts)]

    def wrong(texts):
        return [{"d": 1.0} for _ in texts]

    result = evaluate_systems(ds, {"oracle": oracle, "wrong": wrong}, settings={"model": "none"})
    assert result.scores["oracle"] == {m: pytest.approx(1.0) for m in METRICS}
    assert result.scores["wrong"] == {m: 0.0 for m in METRICS}
    assert set(result.per_query["oracle"]) == {"q1", "q2"} and result.settings == {"model": "none"}

    with pytest.raises(ValueError, match="returned 0 result lists for 2 queries"):
        evaluate_systems(ds, {"broken": lambda texts: []})


@pytest.fixture(scope="module")
def adi_minilm(data_dir, bert_ckpt, tmp_path_factory):
    """All five modes + BM25 on ADI with MiniLM (trained dense, random heads), temp index in a known dir."""
    from m3embed.model import M3Model

    tmp = tmp_path_factory.mktemp("evaltmp")
    model = M3Model.from_pretrained(bert_ckpt, device="cpu")
    ds = load_dataset(data_dir / "classic/adi")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp))
        result = evaluate_dataset(ds, model, k=100)
    return model, ds, result, tmp


def test_m3_modes_on_adi(adi_minilm):
    model, ds, result, tmp = adi_minilm
    assert list(result.scores) == ["bm25", *SEARCH_MODES]
    assert list(tmp.iterdir()) == []  # the temporary index was deleted
    dense = result.scores["dense"]
    # trained MiniLM dense retrieval: far above chance (82 docs, ~5 relevant per query) and about BM25's level
    assert dense["nDCG@10"] > 0.35 and dense["MRR@10"] > 0.45
    assert dense["Recall@100"] == 1.0  # 82 documents: every one is retrieved
    assert result.settings["weights (dense, sparse, colbert)"] == [0.4, 0.2, 0.4]
    assert result.settings["max length (query, passage)"] == [min(512, model.max_length)] * 2
    assert set(result.per_query["all"]) == set(ds.queries)


def test_m3_runs_match_exact_scoring(data_dir, xlmr_ckpt):
    """The index's dense and `all` runs equal brute-force M3 scores over the whole (small) corpus."""
    from m3embed.index.maxsim import decode_tokens, encode_query, encode_tokens
    from m3embed.model import M3Model
    from m3embed.scoring import colbert_scores, dense_scores, lexical_scores

    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")  # tiny random XLM-R: fast, and any weights do
    ds = load_dataset(data_dir / "classic/adi")
    queries = dict(list(ds.queries.items())[:5])
    docs = model.encode_corpus(ds.doc_texts, modes=MODES, max_length=model.max_length)
    qs = model.encode_queries(list(queries.values()), modes=MODES, max_length=model.max_length)
    d = dense_scores(qs.dense, docs.dense)
    s = lexical_scores(qs.sparse, docs.sparse)
    # ColBERT as the default storage scores it: binary codes against the int8 query (m3embed.index.maxsim)
    rows = [decode_tokens(*encode_tokens(x, "binary"), "binary", x.shape[1]) for x in docs.colbert]
    c = np.stack([colbert_scores(encode_query(q.astype(np.float16).astype(np.float32), "binary").values(), rows)
                  for q in qs.colbert])
    exact_all = 0.4 * d + 0.2 * s + 0.4 * c
    with eval_index(model, SEARCH_MODES) as index:
        fill_index(index, model, ds.doc_ids, ds.doc_texts, max_length=model.max_length)
        runs, seconds = index_runs(index, model, queries, ["dense", "all"], k=100,
                                   max_length=model.max_length)
    assert set(seconds) == {"encode queries", "dense", "all"}
    for row, query_id in enumerate(queries):
        top_dense = [ds.doc_ids[i] for i in np.argsort(-d[row])[:10]]
        assert list(truncate_run({"q": runs["dense"][query_id]}, 10)["q"]) == top_dense
        got = runs["all"][query_id]
        assert len(got) == len(ds.doc_ids)  # the dense/sparse candidate union covers all 82 documents
        for doc_id, score in got.items():
            assert score == pytest.approx(exact_all[row, ds.doc_ids.index(doc_id)], abs=1e-4)


def test_existing_index_dir_is_filled_once_and_reused(xlmr_ckpt, tiny_set, tmp_path):
    from m3embed.index import open_index
    from m3embed.model import M3Model

    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    ds = tiny_set
    settings = M3Settings(modes=("dense", "all"), index_dir=tmp_path / "idx")
    first = evaluate_dataset(ds, model, m3=settings, bm25=None)
    assert "12 documents added" in first.settings["index"]
    second = evaluate_dataset(ds, model, m3=settings, bm25=None)
    assert "0 documents added" in second.settings["index"]
    assert second.scores == first.scores and list(first.scores) == ["dense", "all"]

    open_index(tmp_path / "dense_only", model, create=True, modes=("dense",)).close()
    with pytest.raises(ValueError, match="search mode 'sparse' needs sparse"):
        evaluate_dataset(ds, model, m3=M3Settings(modes=("dense", "sparse"), index_dir=tmp_path / "dense_only"))
    with pytest.raises(ValueError, match="k=10 is below 100"):
        evaluate_dataset(ds, model, k=10)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_dataset(ds, None, bm25=None)


def test_fill_index_resumes_through_ingest(xlmr_ckpt, tiny_set, monkeypatch):
    """Only the documents the index lacks are encoded, batch by batch, truncated to max_length."""
    from m3embed.model import M3Model

    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    ds = tiny_set
    encode, lengths = model.encode_corpus, []
    monkeypatch.setattr(model, "encode_corpus",
                        lambda texts, **kw: lengths.append((len(texts), kw["max_length"])) or encode(texts, **kw))
    with eval_index(model, ("dense",)) as index:
        assert fill_index(index, model, ds.doc_ids[:5], ds.doc_texts[:5], max_length=8, batch_size=2) == 5
        assert lengths == [(2, 8), (2, 8), (1, 8)]
        assert fill_index(index, model, ds.doc_ids, ds.doc_texts, batch_size=6) == 7
        assert lengths[3:] == [(1, None), (6, None)]  # the first batch of 6 held 5 stored documents
        assert fill_index(index, model, ds.doc_ids, ds.doc_texts) == 0 and len(lengths) == 5
        assert index.count() == 12
        with pytest.raises(ValueError, match="index's model"):
            fill_index(index, object(), ds.doc_ids, ds.doc_texts)


def test_progress_goes_to_stderr_only_when_asked(xlmr_ckpt, tiny_set, capsys):
    from m3embed.model import M3Model

    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    settings = M3Settings(modes=("dense", "all"))
    quiet = evaluate_dataset(tiny_set, model, m3=settings, progress=False)
    assert capsys.readouterr().err == ""
    shown = evaluate_dataset(tiny_set, model, m3=settings, progress=True)
    err = capsys.readouterr().err
    assert "bm25 queries" in err and "indexing" in err and "queries (2 modes)" in err
    assert shown.scores == quiet.scores


def test_missing_extra_fails_before_any_work(tiny_set, monkeypatch):
    import m3embed.evaluate.runs as runs

    monkeypatch.setattr(runs, "bm25_searcher", lambda *a, **k: pytest.fail("BM25 indexed before the check"))
    monkeypatch.setattr(runs, "eval_index", lambda *a, **k: pytest.fail("index opened before the check"))
    for module in ("pytrec_eval", "bm25s"):
        with monkeypatch.context() as mp:
            mp.setitem(sys.modules, module, None)
            with pytest.raises(MissingExtra, match=rf"{module}.*pip install 'm3embed\[eval\]'"):
                evaluate_dataset(tiny_set, object())


class _LengthReranker:
    """A stand-in cross-encoder: the longer the passage, the higher the score."""

    name = "by-length"

    def rank(self, queries, passages):
        return [sorted(((i, float(len(p))) for i, p in enumerate(ps)), key=lambda x: -x[1]) for ps in passages]


def test_rerank_run_reorders_the_top_and_keeps_the_rest_below():
    run = {"q1": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}, "q2": {"c": 1.0}}
    texts = {"a": "x", "b": "xxx", "c": "xx", "d": "xxxxxxxx"}
    out = rerank_run(_LengthReranker(), {"q1": "?", "q2": "?", "q3": "?"}, run, texts, top=3)
    assert list(truncate_run(out, 10)["q1"]) == ["b", "c", "a", "d"]  # d stays below the reranked top 3
    assert out["q1"]["b"] == 3.0 and out["q2"] == {"c": 2.0} and "q3" not in out


def test_reranker_adds_a_row_per_mode_with_its_time(xlmr_ckpt, xlmr_reranker, tiny_set):
    from m3embed.model import M3Model
    from m3embed.rerank import Reranker

    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    cross = Reranker.from_pretrained(xlmr_reranker, device="cpu")
    result = evaluate_dataset(tiny_set, model, m3=M3Settings(modes=("dense", "all"), rerank_top=5), bm25=None,
                              reranker=cross)
    assert list(result.scores) == ["dense", "all", "dense+rerank", "all+rerank"]
    timing = result.settings
    assert set(timing["rerank ms per query"]) == set(timing["rerank CPU ms per query"]) == {"dense", "all"}
    assert result.seconds["all+rerank"] >= result.seconds["all"]
    with eval_index(model, ("all",)) as index:  # the same first stage, reranked by hand
        fill_index(index, model, tiny_set.doc_ids, tiny_set.doc_texts)
        first = index_runs(index, model, tiny_set.queries, ("all",))[0]["all"]
    by_hand = {}
    for q, text in tiny_set.queries.items():
        ranked = list(truncate_run(first, 12)[q])
        scores = cross.compute_score([(text, tiny_set.doc_texts[tiny_set.doc_ids.index(d)]) for d in ranked[:5]])
        by_hand[q] = {**dict(zip(ranked[:5], scores)), **{d: -100.0 - i for i, d in enumerate(ranked[5:])}}
    assert result.per_query["all+rerank"] == per_query_metrics(tiny_set.qrels, by_hand)
    with pytest.raises(ValueError, match="rerank_top=500 must be between 1 and k=100"):
        evaluate_dataset(tiny_set, model, m3=M3Settings(modes=("all",), rerank_top=500), reranker=cross)
