"""Issue 9 items 8, 9 and 11: one line for an unreachable server, an existing output file, non-UTF-8 input and a
failed index creation; user text is never read as rich markup; progress goes to stderr only."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from m3embed.cli import main
from m3embed.cli.indexing import parse_where
from m3embed.corpus import iter_jsonl, read_ids, read_records
from m3embed.index import Index
from m3embed.model import M3Model


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


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id":"a","text":"the quick brown fox"}\n')
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_line_naming_the_url(docs: Path, xlmr_ckpt: Path, capsys, monkeypatch) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    for args in (("index", "build", url, docs, "-m", xlmr_ckpt), ("index", "info", url), ("search", url, "q")):
        line = one_line_error(*run_cli(capsys, monkeypatch, *args)[::2])
        assert f"cannot reach the Qdrant server at {url}" in line


def test_existing_output_file_is_refused_before_loading_or_encoding(docs: Path, tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    target = tmp_path / "out.npy"
    target.write_text("keep me")
    # the model does not even exist: the output is checked first, so nothing is loaded or encoded
    line = one_line_error(*run_cli(capsys, monkeypatch, "encode", docs, "-o", target, "-m", tmp_path / "none")[::2])
    assert f"--out {target} is a file" in line
    assert target.read_text() == "keep me"


def test_non_utf8_input_names_file_line_and_byte(tmp_path: Path, capsys, monkeypatch) -> None:
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"id":"a","text":"ok"}\n{"id":"b","text":"caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid UTF-8 \(byte 0xe9 at column 22\)"):
        list(read_records(bad))
    txt = tmp_path / "latin1.txt"
    txt.write_bytes(b"fine\r\nna\xefve\n")
    with pytest.raises(ValueError, match=rf"{txt}:2: not valid UTF-8 \(byte 0xef"):
        list(read_records(txt, generate_ids=True))
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"a\n\xff\n")
    with pytest.raises(ValueError, match=rf"{ids}:2: not valid UTF-8"):
        read_ids(ids)
    line = one_line_error(*run_cli(capsys, monkeypatch, "encode", bad, "-o", tmp_path / "o")[::2])
    assert f"{bad}:2: not valid UTF-8 (byte 0xe9 at column 22)" in line
    # what is valid keeps working: a UTF-8 BOM on the first line, CRLF line ends
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id":"a","text":"caf\xc3\xa9"}\r\n')
    assert [(r.id, r.text, r.where) for r in read_records(bom)] == [("a", "café", f"{bom}:1")]
    assert list(iter_jsonl(bom)) == [(1, {"id": "a", "text": "café"})]
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one\r\ntwo\n")
    assert [r.text for r in read_records(crlf, generate_ids=True)] == ["one", "two"]


def test_failed_creation_removes_what_it_created(tmp_path: Path) -> None:
    new = tmp_path / "new" / "idx"
    bad = {"no_such_option": 1}  # qdrant-client refuses it (an assert) after the directories were made
    with pytest.raises(AssertionError, match="no_such_option"):
        Index.create(new, fingerprint="x", dim=8, engine="qdrant", collection_options=bad)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssertionError, match="no_such_option"):
        Index.create(empty, fingerprint="x", dim=8, engine="qdrant", collection_options=bad)
    assert list(empty.iterdir()) == []  # an existing empty directory is left as it was
    with Index.create(empty, fingerprint="x", dim=8) as index:  # and can be used
        assert index.count() == 0


@pytest.mark.parametrize("name", ["corpus[/].jsonl", "corpus[red].jsonl", "a[bold]b[/bold].jsonl"])
def test_user_text_is_not_markup_in_errors(name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line_error(*run_cli(capsys, monkeypatch, "encode", name, "-o", "x")[::2])
    assert f"input file {name} does not exist" in line


def test_user_text_is_not_markup_in_results(tmp_path: Path, xlmr_ckpt: Path, capsys, monkeypatch) -> None:
    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    idx = tmp_path / "idx[red]"
    text = "[red]alert[/red] and [/] and [bold]"
    with Index.create(idx, model) as index:
        index.add(["id[/]"], [text])
    code, out, err = run_cli(capsys, monkeypatch, "search", idx, "[/]query[red]", "-k", "1", "--mode", "dense")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "[/]query[red]" in flat and "id[/]" in flat and "[red]alert[/red]" in flat, out
    code, out, err = run_cli(capsys, monkeypatch, "index", "info", idx)
    assert code == 0 and "idx[red]" in out, err
    code, _, err = run_cli(capsys, monkeypatch, "search", idx, "q", "-w", "tag")
    assert "use field=value, field=[v1,v2], field>=number" in one_line_error(code, err)


def test_progress_goes_to_stderr_and_saving_shows_no_bars(xlmr_ckpt: Path, tmp_path: Path, capfd) -> None:
    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    capfd.readouterr()
    model.encode(["a text", "another text"], progress=True)
    out, err = capfd.readouterr()
    assert out == "" and "encoding tokens" in err
    model.save_pretrained(tmp_path / "saved")
    out, err = capfd.readouterr()
    assert "Writing model shards" not in out + err and "it/s" not in out + err


def test_parse_where() -> None:
    assert parse_where(["lang=en", 'tag=["a","b"]', "year>=2000", "year<2010", "n=3", "ok=true"]) == {
        "lang": "en", "tag": ["a", "b"], "year": {"gte": 2000.0, "lt": 2010.0}, "n": 3, "ok": True}
    assert parse_where(["title = a b "]) == {"title": "a b"}
    for bad, message in [(["lang"], "use field=value"), (["x>=soon"], ">= needs a number"), (["=1"], "use field")]:
        with pytest.raises(ValueError, match=message):
            parse_where(bad)


def test_records_without_ids_are_refused_unless_generated(xlmr_ckpt: Path, tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    """An id-less record used to get its line number: line 2 of a second file became "already stored" as the
    first file's "2" and was never indexed. Now it is refused, or given an id from its content on request."""
    from m3embed.index import open_index

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"text": "alpha"}\n{"text": "beta"}\n')
    second.write_text('{"text": "gamma"}\n{"text": "delta"}\n{"text": "alpha"}\n')
    idx = tmp_path / "idx"
    line = one_line_error(*run_cli(capsys, monkeypatch, "index", "build", idx, first, "-m", xlmr_ckpt)[::2])
    assert f"{first}:1: no 'id' field" in line and "--generate-ids" in line
    assert not idx.exists()  # checked before anything was made
    txt = tmp_path / "t.txt"
    txt.write_text("one\n")
    assert "a .txt file has no document ids" in one_line_error(
        *run_cli(capsys, monkeypatch, "encode", txt, "-o", tmp_path / "o")[::2])
    assert run_cli(capsys, monkeypatch, "index", "build", idx, first, "-m", xlmr_ckpt, "--generate-ids")[0] == 0
    code, _, err = run_cli(capsys, monkeypatch, "index", "add", idx, second, "--generate-ids")
    assert code == 0 and "2 added, 1 already stored; 4 documents" in " ".join(err.split())  # "alpha": same record
    with open_index(idx) as index:
        assert index.count() == 4
    ids = [r.id for r in read_records(second, generate_ids=True)]
    assert ids[2] == next(iter(read_records(first, generate_ids=True))).id and len(set(ids)) == 3
    assert all(len(i) == 24 for i in ids)


def test_a_missing_pair_field_is_named_missing(tmp_path: Path) -> None:
    from m3embed.corpus import read_pairs

    path = tmp_path / "p.jsonl"
    path.write_text('{"passage": "p"}\n')
    with pytest.raises(ValueError, match=rf"{path}:1: missing field 'query' \(fields: passage\)"):
        read_pairs(path)  # was "field 'query' must be a string"
    path.write_text('{"query": 3, "passage": "p"}\n')
    with pytest.raises(ValueError, match="field 'query' must be a string, got int"):
        read_pairs(path)


def test_encode_help_shows_the_ray_extra(capsys, monkeypatch) -> None:
    code, out, _ = run_cli(capsys, monkeypatch, "encode", "--help")
    assert code == 0 and "m3embed[ray]" in " ".join(out.split())  # rich read "[ray]" as markup: "(needs m3embed)"


def test_a_warning_is_one_line_on_stderr(xlmr_ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    src = tmp_path / "t.jsonl"
    src.write_text('{"id": "a", "text": "' + "word " * 100 + '"}\n{"id": "b", "text": "short"}\n')
    code, out, err = run_cli(capsys, monkeypatch, "encode", src, "-o", tmp_path / "out", "-m", xlmr_ckpt,
                             "--max-length", "16")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning")]
    assert lines == ["warning: 1 of 2 texts were longer than max_length=16 tokens and were cut to it (the rest of "
                     "each is not encoded); raise max_length (--max-length) up to the model's 128, or split long "
                     "texts into passages"], err
