"""`m3embed eval`: options in, report files and a table out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m3embed import cli
from m3embed.cli import app


def test_cli_eval_writes_the_three_reports(data_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--dataset", str(data_dir / "classic/adi"), "--out", str(tmp_path / "r"),
                              "--k1", "1.2", "--b", "0.75", "--stopwords", "none", "--max-queries", "10"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r/eval.json").read_text())
    assert list(report["scores"]) == ["bm25"] and report["n_queries"] == 10
    assert "k1=1.2 b=0.75" in report["settings"]["bm25"] and "no stopwords" in report["settings"]["bm25"]
    assert (tmp_path / "r/eval.png").stat().st_size > 10_000 and "bm25" in (tmp_path / "r/eval.md").read_text()
    res = runner.invoke(app, ["eval", "--dataset", str(data_dir / "classic/adi"), "--modes", "dense"])
    assert res.exit_code != 0 and "--modes and --index need a --model" in str(res.exception)


def test_cli_eval_progress_on_stderr_unless_no_progress(tiny_set, tmp_path):
    runner = CliRunner()
    args = ["eval", "--dataset", str(tmp_path / "set"), "--out", str(tmp_path / "r")]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "bm25 queries" in shown.stderr and "bm25" in shown.stdout
    quiet = runner.invoke(app, [*args, "--no-progress"])
    assert quiet.exit_code == 0, quiet.output
    assert "bm25 queries" not in quiet.stderr and "wrote" in quiet.stderr
    assert quiet.stdout == shown.stdout


@pytest.mark.parametrize("module", ["pytrec_eval", "bm25s", "matplotlib"])
def test_cli_eval_without_the_extra_fails_first_with_the_hint(module: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """The [eval] check comes before anything else: neither the missing dataset nor the model is reached."""
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(sys, "argv", ["m3embed", "eval", "--dataset", str(tmp_path / "absent"), "-m", "absent"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and module in err and "pip install 'm3embed[eval]'" in err


def test_cli_eval_with_a_reranker_adds_rerank_rows(tiny_set, xlmr_ckpt, xlmr_reranker, tmp_path):
    res = CliRunner().invoke(app, ["eval", "--dataset", str(tmp_path / "set"), "--out", str(tmp_path / "r"),
                                   "-m", str(xlmr_ckpt), "--modes", "dense", "--no-bm25", "--no-progress",
                                   "--reranker", str(xlmr_reranker), "--rerank-top", "6"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r/eval.json").read_text())
    assert list(report["scores"]) == ["dense", "dense+rerank"]
    assert "top 6 of each mode" in report["settings"]["reranker"]
