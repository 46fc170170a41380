"""Report files: eval.json, eval.md (best values in bold), eval.png."""

from __future__ import annotations

import json

import pytest

from m3embed.evaluate import BM25Config, EvalResult, markdown_table, write_report


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
