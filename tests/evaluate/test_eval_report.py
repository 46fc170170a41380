"""Reports: eval.json, eval.md (best values in bold), eval.png, and the terminal table."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from m3embed.evaluate import BM25Config, EvalResult, console_table, markdown_table, write_report


def _result() -> EvalResult:
    return EvalResult("toy/set", "qrels.dev.tsv", 2, 4, 100,
                      scores={"bm25": {"nDCG@10": 0.5, "Recall@100": 0.75, "MRR@10": 0.5},
                              "dense": {"nDCG@10": 0.625, "Recall@100": 0.5, "MRR@10": 0.25}},
                      seconds={"bm25": 0.1, "dense": 2.0}, settings={"bm25": BM25Config().describe()})


def test_write_report_json_markdown_png(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    result = _result()
    paths = write_report(result, tmp_path / "out", stem="toy")
    assert json.loads(paths["json"].read_text())["scores"] == result.scores
    md = paths["markdown"].read_text()
    assert md == markdown_table(result)
    assert "| dense | **0.6250** | 0.5000 | 0.2500 | 2.00 |" in md
    assert "| bm25 | 0.5000 | **0.7500** | **0.5000** | 0.10 |" in md
    assert "k1=0.9 b=0.4" in md and "qrels.dev.tsv" in md
    image = imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > image.shape[0]


def test_console_table_has_a_row_per_system():
    console = Console(record=True, width=100)
    console.print(console_table(_result()))
    lines = console.export_text().splitlines()
    assert "toy/set (qrels.dev.tsv): 2 queries, 4 docs" in lines[0]
    assert [c.strip() for c in lines[2].split("┃")[1:-1]] == ["system", "nDCG@10", "Recall@100", "MRR@10"]
    assert [c.strip() for c in lines[5].split("│")[1:-1]] == ["dense", "0.6250", "0.5000", "0.2500"]
