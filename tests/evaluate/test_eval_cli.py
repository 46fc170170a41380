"""`m3embed eval`: options in, report files and a table out."""

from __future__ import annotations

import json

from typer.testing import CliRunner

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

