"""One validation of document ids and metadata (issue 9 items 6, 7, 11) in the library, ingestion, the CLI and
HTTP: bad documents are refused by name before the engine sees them; repeated ids keep their last copy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from m3embed.cli import main
from m3embed.corpus import Record, read_records
from m3embed.documents import check_id, check_metadata
from m3embed.index import Index, open_index
from m3embed.index.ingest import ingest
from m3embed.model import M3Model

BIG = 2**53 + 1  # a float64 cannot hold it


@pytest.mark.parametrize("bad", [True, False, "", None, 1.5, b"a", ["a"], "\ud800"])
def test_check_id_refuses(bad) -> None:
    with pytest.raises(ValueError, match="document id"):
        check_id(bad)


def test_check_id_keeps_str_and_int() -> None:
    assert (check_id("a/b"), check_id(7), check_id(-3), check_id("é")) == ("a/b", "7", "-3", "é")


@pytest.mark.parametrize("meta, field, what", [
    ({"v": math.nan}, "'v'", "nan"),
    ({"a": {"b": [1, math.inf]}}, r"'a\.b\[1\]'", "inf"),
    ({"v": 2**63}, "'v'", "signed 64-bit"),
    ({"v": -(2**63) - 1}, "'v'", "signed 64-bit"),
    ({"v": {1, 2}}, "'v'", "set"),
    ({"v": b"x"}, "'v'", "bytes"),
    ({"v": {1: "x"}}, "'v'", "key 1"),
    ({"v": "\udc80"}, "'v'", "not valid Unicode"),
])
def test_check_metadata_names_document_and_field(meta, field, what) -> None:
    with pytest.raises(ValueError, match=rf"docs\.jsonl:3: document 'x': metadata field {field}.*{what}"):
        check_metadata(meta, "x", "docs.jsonl:3")


def test_check_metadata_normalises_json_values() -> None:
    meta = {"n": BIG, "max": 2**63 - 1, "f": np.float32(0.5), "i": np.int64(3), "t": (1, "a"), "z": None}
    assert check_metadata(meta, "x") == {"n": BIG, "max": 2**63 - 1, "f": 0.5, "i": 3, "t": [1, "a"], "z": None}
    with pytest.raises(ValueError, match="must be a JSON object"):
        check_metadata([1, 2], "x")


def test_add_outputs_refuses_a_bad_batch_whole_and_names_it(filled: Index, corpus) -> None:
    before = filled.count()
    docs = corpus.docs.select([0, 1])
    for ids, meta, message in [
        (["new-1", True], None, "position 1: document id must be"),
        (["new-1", ""], None, "position 1: document id must be"),
        (["new-1", "new-2"], [{}, {"v": math.nan}], "document 'new-2': metadata field 'v' is nan"),
        (["new-1", "new-2"], [{}, {"v": 2**64}], "document 'new-2': metadata field 'v' is the integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            filled.add_outputs(ids, docs, metadata=meta)
    assert filled.count() == before and filled.missing(["new-1"]) == ["new-1"]


def test_big_integers_stay_exact_and_repeated_ids_keep_the_last(make_index, corpus, engine: str) -> None:
    index = make_index(engine)
    docs = corpus.docs.select([0, 1, 2])
    index.add_outputs(["a", "b", "a"], docs, texts=["first", "b", "last"],
                      metadata=[{"n": 1}, {"n": 2}, {"n": BIG, "max": 2**63 - 1, "min": -(2**63)}])
    assert index.count() == 2
    hit = index.search(corpus.docs.select([2]), k=1, mode="dense")[0][0]
    assert (hit.id, hit.text) == ("a", "last")
    assert hit.metadata == {"n": BIG, "max": 2**63 - 1, "min": -(2**63)}
    assert all(type(v) is int for v in hit.metadata.values())


@pytest.fixture(scope="module")
def model(xlmr_ckpt: Path) -> M3Model:
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu")


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_ingest_keeps_the_last_copy_across_batches(tmp_path: Path, model: M3Model) -> None:
    src = _write(tmp_path / "d.jsonl", [{"id": "a", "text": "first copy"}, {"id": "b", "text": "b"},
                                        {"id": "c", "text": "c"}, {"id": "a", "text": "last copy"}])
    with open_index(tmp_path / "idx", model, create=True) as index:
        stats = ingest(index, read_records(src), batch_size=2)  # the copies of "a" are in different batches
        assert (stats.added, stats.duplicates, index.count()) == (4, 1, 3)
        assert index.search("last copy", k=1, mode="dense")[0].text == "last copy"
        # a resumed run skips what an earlier run stored, but still lets a later copy win
        again = ingest(index, read_records(src), batch_size=2)
        assert (again.skipped, again.added, again.duplicates) == (3, 1, 1)
        assert index.search("last copy", k=1, mode="dense")[0].text == "last copy"


def test_ingest_stops_at_a_bad_record_naming_file_and_line(tmp_path: Path, model: M3Model) -> None:
    src = _write(tmp_path / "d.jsonl", [{"id": "a", "text": "ok"}, '{"id": "b", "text": "ok", "v": NaN}',
                                        {"id": "c", "text": "ok"}])
    with open_index(tmp_path / "idx", model, create=True) as index:
        with pytest.raises(ValueError, match=rf"{src}:2: document 'b': metadata field 'v' is nan"):
            ingest(index, read_records(src), batch_size=10)
        assert index.count() == 0  # the batch holding the bad record never reached the engine
        with pytest.raises(ValueError, match="document id must be"):
            ingest(index, [Record("", "text")])


def run_cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: object) -> tuple[int, str, str]:
    """`m3embed ARGS` in this process through main(): (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["m3embed", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_build_refuses_bad_metadata_before_writing(tmp_path: Path, xlmr_ckpt: Path, capsys, monkeypatch) -> None:
    src = _write(tmp_path / "d.jsonl", [{"id": "a", "text": "the quick brown fox"},
                                        '{"id": "b", "text": "ok", "v": Infinity}'])
    code, _, err = run_cli(capsys, monkeypatch, "index", "build", tmp_path / "idx", src, "-m", xlmr_ckpt)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{src}:2: document 'b': metadata field 'v' is inf" in err
    assert not (tmp_path / "idx").exists()  # nothing was created
    bad_id = _write(tmp_path / "e.jsonl", [{"id": "a", "text": "x"}, {"id": True, "text": "y"}])
    code, _, err = run_cli(capsys, monkeypatch, "index", "build", tmp_path / "idx", bad_id, "-m", xlmr_ckpt)
    assert code == 2 and f"{bad_id}:2: field 'id': document id must be" in err


def test_cli_build_reports_repeated_ids(tmp_path: Path, xlmr_ckpt: Path, capsys, monkeypatch) -> None:
    src = _write(tmp_path / "d.jsonl", [{"id": "a", "text": "one"}, {"id": "a", "text": "two"}])
    code, _, err = run_cli(capsys, monkeypatch, "index", "build", tmp_path / "idx", src, "-m", xlmr_ckpt,
                           "--batch-size", "1")
    assert code == 0, err
    assert "1 repeated ids (the last copy kept)" in err
    with Index.open(tmp_path / "idx") as index:
        assert index.count() == 1
