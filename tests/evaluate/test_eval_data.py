"""Loading BEIR-layout datasets: fields, qrels layouts, judged queries, errors naming file:line and field."""

from __future__ import annotations

import pytest

from m3embed.evaluate import load_dataset, load_qrels


def test_load_dataset_joins_title_and_text_and_keeps_judged_queries(tmp_path, write_dataset):
    root = write_dataset(
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


def test_load_dataset_picks_the_qrels_file(tmp_path, write_dataset):
    root = write_dataset(tmp_path / "set", [{"id": "d", "text": "x"}],
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
def test_corpus_errors_name_file_line_and_field(tmp_path, write_dataset, corpus_line, pattern):
    root = write_dataset(tmp_path / "set", [], [{"id": "q", "text": "t"}], "q\td1\t1\n")
    (root / "corpus.jsonl").write_text(corpus_line)
    with pytest.raises((ValueError, TypeError), match=pattern):
        load_dataset(root)


def test_qrels_and_query_errors(tmp_path, write_dataset):
    root = write_dataset(tmp_path / "set", [{"id": "d", "text": "x"}], [{"id": "q", "text": "t"}],
                          "query-id\tcorpus-id\tscore\nq\td\t1\nq\td\thigh\n")
    with pytest.raises(ValueError, match=r"qrels\.tsv:3: field 'score' must be an integer, got 'high'"):
        load_dataset(root)
    (root / "qrels.tsv").write_text("q\td\n")
    with pytest.raises(ValueError, match=r"qrels\.tsv:1: expected 3 tab-separated fields"):
        load_dataset(root)
    (root / "qrels.tsv").write_text("q\td\t1\nother\td\t1\n")
    with pytest.raises(ValueError, match=r"1 query id\(s\) not in queries\.jsonl, e\.g\. 'other'"):
        load_dataset(root)
    corpus = (root / "corpus.jsonl").read_text()
    (root / "corpus.jsonl").write_text("\n")  # an empty corpus: was NumPy warnings, then "max() arg is an empty ..."
    with pytest.raises(ValueError, match=r"corpus\.jsonl holds no documents; an evaluation ranks a corpus"):
        load_dataset(root)
    (root / "corpus.jsonl").write_text(corpus)
    (root / "queries.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"queries\.jsonl holds no queries"):
        load_dataset(root)
    (root / "queries.jsonl").write_text('{"text": "no id"}\n')
    with pytest.raises(ValueError, match=r"queries\.jsonl:1: missing field 'id'"):
        load_dataset(root)
    with pytest.raises(NotADirectoryError):
        load_dataset(tmp_path / "nope")


def test_trec_qrels_layout_is_accepted(tmp_path, write_dataset):
    path = tmp_path / "q.txt"
    path.write_text("1 0 d7 1\n1 0 d9 2\n2 0 d1 1\n")
    assert load_qrels(path) == {"1": {"d7": 1, "d9": 2}, "2": {"d1": 1}}


def test_shared_dev_split_loads(data_dir):
    ds = load_dataset(data_dir / "xquad/en", qrels="qrels.dev.tsv")
    assert (len(ds.queries), len(ds.doc_ids), ds.name) == (296, 240, "xquad/en")
