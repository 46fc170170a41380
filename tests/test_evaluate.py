"""Evaluation: loaders, trec_eval metric semantics, the BM25 baseline, report files."""

from __future__ import annotations

import json
import math
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from m3embed.evaluate import (
    METRICS,
    BM25Config,
    Dataset,
    EvalResult,
    M3Settings,
    bm25_searcher,
    bm25_tokens,
    eval_index,
    evaluate_dataset,
    evaluate_run,
    evaluate_systems,
    fill_index,
    index_runs,
    load_dataset,
    load_qrels,
    markdown_table,
    per_query_metrics,
    truncate_run,
    write_report,
)
from m3embed.modes import MODES, SEARCH_MODES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "classic/adi").is_dir(), reason="shared data not present")


def _write_dataset(root: Path, corpus: list[dict], queries: list[dict], qrels: str, name: str = "qrels.tsv"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / name).write_text(qrels, encoding="utf-8")
    return root


# ---------------------------------------------------------------- metrics


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


# ---------------------------------------------------------------- loaders


def test_load_dataset_joins_title_and_text_and_keeps_judged_queries(tmp_path):
    root = _write_dataset(
        tmp_path / "set",
        [{"id": "d1", "title": "Moon", "text": "landing"}, {"id": "d2", "text": "no title"},
         {"id": 3, "title": "only title", "text": ""}],
        [{"id": "q1", "text": "moon?"}, {"id": "q2", "text": "unjudged"}, {"id": "q3", "text": "zero only"}],
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq3\td2\t0\n",
    )
    ds = load_dataset(root)
    assert ds.doc_ids == ["d1", "d2", "3"]
    assert ds.doc_texts == ["Moon landing", "no title", "only title"]
    assert ds.queries == {"q1": "moon?"}
    assert ds.qrels == {"q1": {"d1": 2}}
    assert ds.head(0).queries == {}


def test_load_dataset_picks_the_qrels_file(tmp_path):
    root = _write_dataset(tmp_path / "set", [{"id": "d", "text": "x"}],
                          [{"id": "a", "text": "a"}, {"id": "b", "text": "b"}], "a\td\t1\nb\td\t1\n")
    (root / "qrels.dev.tsv").write_text("query-id\tcorpus-id\tscore\nb\td\t1\n")
    assert list(load_dataset(root).queries) == ["a", "b"]
    dev = load_dataset(root, qrels="qrels.dev.tsv")
    assert list(dev.queries) == ["b"] and dev.qrels_file == "qrels.dev.tsv"
    with pytest.raises(FileNotFoundError, match=r"qrels\.test\.tsv.*qrels\.dev\.tsv, qrels\.tsv"):
        load_dataset(root, qrels="qrels.test.tsv")


@pytest.mark.parametrize(
    ("corpus_line", "pattern"),
    [
        ('{"id": "d1", "text": "ok"}\n{"id": "d2", "txt": "typo"}\n', r"corpus\.jsonl:2: missing field 'text'"),
        ('{"id": "d1", "text": "ok"}\n\n{"id": "d2", "text": 5}\n', r"corpus\.jsonl:3: field 'text' must be a string"),
        ('{"id": "d1", "text": "ok"}\n{"id": "d1", "text": "again"}\n', r"corpus\.jsonl:2: duplicate document id"),
        ('{"id": "d1", "text": "ok"\n', r"corpus\.jsonl:1: not valid JSON"),
        ('["d1", "ok"]\n', r"corpus\.jsonl:1: expected a JSON object"),
        ('{"id": "d1", "title": 7, "text": "x"}\n', r"corpus\.jsonl:1: field 'title' must be a string"),
    ],
)
def test_corpus_errors_name_file_line_and_field(tmp_path, corpus_line, pattern):
    root = _write_dataset(tmp_path / "set", [], [{"id": "q", "text": "t"}], "q\td1\t1\n")
    (root / "corpus.jsonl").write_text(corpus_line)
    with pytest.raises((ValueError, TypeError), match=pattern):
        load_dataset(root)


def test_qrels_and_query_errors(tmp_path):
    root = _write_dataset(tmp_path / "set", [{"id": "d", "text": "x"}], [{"id": "q", "text": "t"}],
                          "query-id\tcorpus-id\tscore\nq\td\t1\nq\td\thigh\n")
    with pytest.raises(ValueError, match=r"qrels\.tsv:3: field 'score' must be an integer, got 'high'"):
        load_dataset(root)
    (root / "qrels.tsv").write_text("q\td\n")
    with pytest.raises(ValueError, match=r"qrels\.tsv:1: expected 3 tab-separated fields"):
        load_dataset(root)
    (root / "qrels.tsv").write_text("q\td\t1\nother\td\t1\n")
    with pytest.raises(ValueError, match=r"1 query id\(s\) not in queries\.jsonl, e\.g\. 'other'"):
        load_dataset(root)
    (root / "queries.jsonl").write_text('{"text": "no id"}\n')
    with pytest.raises(ValueError, match=r"queries\.jsonl:1: missing field 'id'"):
        load_dataset(root)
    with pytest.raises(NotADirectoryError):
        load_dataset(tmp_path / "nope")


def test_trec_qrels_layout_is_accepted(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("1 0 d7 1\n1 0 d9 2\n2 0 d1 1\n")
    assert load_qrels(path) == {"1": {"d7": 1, "d9": 2}, "2": {"d1": 1}}


@needs_data
def test_shared_dev_split_loads():
    ds = load_dataset(DATA / "xquad/en", qrels="qrels.dev.tsv")
    assert (len(ds.queries), len(ds.doc_ids), ds.name) == (296, 240, "xquad/en")


# ---------------------------------------------------------------- BM25


def test_bm25_tokens_lowercase_words_and_cjk_characters():
    assert bm25_tokens("The Moon-landing, 1969!") == ["the", "moon", "landing", "1969"]
    assert bm25_tokens("北京是首都 ok") == ["北", "京", "是", "首", "都", "ok"]
    assert bm25_tokens("GDP北京") == ["gdp", "北", "京"]
    assert bm25_tokens("ひらがなカタ") == list("ひらがなカタ")
    assert bm25_tokens("Straße 서울 시청") == ["straße", "서울", "시청"]  # Hangul is space-delimited


def test_bm25_ranks_matching_documents_and_skips_non_matches():
    ids = ["a", "b", "c", "d"]
    texts = ["the cat sat on the mat", "dogs chase cats", "a cat and a cat", "北京是中国的首都"]
    search = bm25_searcher(ids, texts, k=10)
    cat, capital, nothing, stop = search(["Cat", "首都", "zebra", "the and"])
    assert set(cat) == {"a", "c"} and cat["c"] > cat["a"] > 0  # "cats" is another term (no stemming)
    assert list(capital) == ["d"]
    assert nothing == {} and stop == {}
    assert bm25_searcher(ids, texts, k=10, config=BM25Config(stopwords="none"))(["the"])[0].keys() == {"a"}
    with pytest.raises(ValueError, match="stopwords='de'"):
        bm25_searcher(ids, texts, config=BM25Config(stopwords="de"))


@needs_data
def test_bm25_on_medline_lands_in_the_usual_range():
    ds = load_dataset(DATA / "classic/medline")
    scores = evaluate_systems(ds, {"bm25": bm25_searcher(ds.doc_ids, ds.doc_texts, k=100)}).scores["bm25"]
    # a plain BM25 gives nDCG@10 ~0.66 here (MANIFEST); other tokenisations move it a few points
    assert 0.58 <= scores["nDCG@10"] <= 0.74
    assert 0.78 <= scores["MRR@10"] <= 0.97
    assert 0.65 <= scores["Recall@100"] <= 0.88


@needs_data
def test_bm25_on_chinese_needs_character_tokens():
    ds = load_dataset(DATA / "xquad/zh", qrels="qrels.dev.tsv")
    ours = evaluate_systems(ds, {"bm25": bm25_searcher(ds.doc_ids, ds.doc_texts)}).scores["bm25"]["nDCG@10"]
    import bm25s

    words = bm25s.BM25(k1=0.9, b=0.4)  # bm25s' default tokenizer keeps whole runs of Han characters
    words.index(bm25s.tokenize(ds.doc_texts, show_progress=False), show_progress=False)

    def word_search(texts):
        hits, scores = words.retrieve(bm25s.tokenize(list(texts), show_progress=False), k=100,
                                      show_progress=False)
        return [{ds.doc_ids[i]: float(s) for i, s in zip(h, sc) if s > 0} for h, sc in zip(hits, scores)]

    baseline = evaluate_systems(ds, {"w": word_search}).scores["w"]["nDCG@10"]
    assert ours > 0.85 and ours > baseline + 0.2


# ---------------------------------------------------------------- systems and reports


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


def test_write_report_json_markdown_png(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    result = EvalResult("toy/set", "qrels.dev.tsv", 2, 4, 100,
                        scores={"bm25": {"nDCG@10": 0.5, "Recall@100": 0.75, "MRR@10": 0.5},
                                "dense": {"nDCG@10": 0.625, "Recall@100": 0.5, "MRR@10": 0.25}},
                        seconds={"bm25": 0.1, "dense": 2.0}, settings={"bm25": BM25Config().describe()})
    paths = write_report(result, tmp_path / "out", stem="toy")
    assert json.loads(paths["json"].read_text())["scores"] == result.scores
    md = paths["markdown"].read_text()
    assert md == markdown_table(result)
    assert "| dense | **0.6250** | 0.5000 | 0.2500 | 2.00 |" in md
    assert "| bm25 | 0.5000 | **0.7500** | **0.5000** | 0.10 |" in md
    assert "k1=0.9 b=0.4" in md and "qrels.dev.tsv" in md
    image = imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > image.shape[0]


# ---------------------------------------------------------------- M3 modes through the index


@pytest.fixture(scope="module")
def adi_minilm(bert_ckpt, tmp_path_factory):
    """All five modes + BM25 on ADI with MiniLM (trained dense, random heads), temp index in a known dir."""
    from m3embed.model import M3Model

    tmp = tmp_path_factory.mktemp("evaltmp")
    model = M3Model.from_pretrained(bert_ckpt, device="cpu")
    ds = load_dataset(DATA / "classic/adi")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp))
        result = evaluate_dataset(ds, model, k=100)
    return model, ds, result, tmp


@needs_data
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


@needs_data
def test_m3_runs_match_exact_scoring(xlmr_ckpt):
    """The index's dense and `all` runs equal brute-force M3 scores over the whole (small) corpus."""
    from m3embed.model import M3Model
    from m3embed.scoring import colbert_scores, dense_scores, lexical_scores

    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")  # tiny random XLM-R: fast, and any weights do
    ds = load_dataset(DATA / "classic/adi")
    queries = dict(list(ds.queries.items())[:5])
    docs = model.encode_corpus(ds.doc_texts, modes=MODES, max_length=model.max_length)
    qs = model.encode_queries(list(queries.values()), modes=MODES, max_length=model.max_length)
    d = dense_scores(qs.dense, docs.dense)
    s = lexical_scores(qs.sparse, docs.sparse)
    c = np.stack([colbert_scores(q, docs.colbert) for q in qs.colbert])
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
        for doc_id, score in got.items():  # colbert vectors are stored as float16
            assert score == pytest.approx(exact_all[row, ds.doc_ids.index(doc_id)], abs=2e-3)


def _tiny_set(root: Path) -> Dataset:
    corpus = [{"id": f"d{i}", "title": f"topic {i}", "text": f"the river {i} runs past house number {i}"}
              for i in range(12)]
    queries = [{"id": f"q{i}", "text": f"which river is number {i}?"} for i in range(4)]
    _write_dataset(root, corpus, queries, "".join(f"q{i}\td{i}\t1\n" for i in range(4)))
    return load_dataset(root)


def test_existing_index_dir_is_filled_once_and_reused(xlmr_ckpt, tmp_path):
    from m3embed.index import open_index
    from m3embed.model import M3Model

    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    ds = _tiny_set(tmp_path / "set")
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


@needs_data
def test_cli_eval_writes_the_three_reports(tmp_path):
    from typer.testing import CliRunner

    from m3embed.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--dataset", str(DATA / "classic/adi"), "--out", str(tmp_path / "r"),
                              "--k1", "1.2", "--b", "0.75", "--stopwords", "none", "--max-queries", "10"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r/eval.json").read_text())
    assert list(report["scores"]) == ["bm25"] and report["n_queries"] == 10
    assert "k1=1.2 b=0.75" in report["settings"]["bm25"] and "no stopwords" in report["settings"]["bm25"]
    assert (tmp_path / "r/eval.png").stat().st_size > 10_000 and "bm25" in (tmp_path / "r/eval.md").read_text()
    res = runner.invoke(app, ["eval", "--dataset", str(DATA / "classic/adi"), "--modes", "dense"])
    assert res.exit_code != 0 and "--modes and --index need a --model" in str(res.exception)
