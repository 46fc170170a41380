"""A model's own hybrid weights (m3embed.json `search_weights`, issue 21 item 2): read with the model, recorded by
the index built with it, and the default of search, eval and the CLI over that index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from m3embed import checkpoint
from m3embed.cli import app
from m3embed.evaluate import Dataset, M3Settings, evaluate_dataset
from m3embed.index import open_index
from m3embed.model import M3Model
from m3embed.modes import SEARCH_WEIGHTS

W = (0.6, 0.05, 0.35)
DOCS = ["the river flows through the valley", "a committee approved the city budget", "oxygen was discovered",
        "the valley floods when the river rises"]


@pytest.fixture
def weighted_ckpt(copy_ckpt, xlmr_ckpt: Path) -> Path:
    ckpt = copy_ckpt(xlmr_ckpt)
    checkpoint.M3Config(search_weights=list(W)).save(ckpt)
    return ckpt


def test_config_checks_and_round_trip(weighted_ckpt: Path, tmp_path: Path) -> None:
    assert checkpoint.read_config(weighted_ckpt).search_weights == list(W)
    with pytest.raises(ValueError, match="search_weights must be finite"):
        checkpoint.M3Config(search_weights=[1, float("nan"), 1])
    with pytest.raises(ValueError, match=r"search_weights must be \(dense, sparse, colbert\)"):
        checkpoint.M3Config(search_weights=[1, 1])
    model = M3Model.from_pretrained(weighted_ckpt, device="cpu")
    assert model.search_weights == W
    assert M3Model.from_pretrained(model.save_pretrained(tmp_path / "saved"), device="cpu").search_weights == W
    model.search_weights = SEARCH_WEIGHTS  # BGE-M3's are not written out: the file keeps null
    assert json.loads((model.save_pretrained(tmp_path / "bge") / "m3embed.json").read_text())["search_weights"] is None


def test_index_search_eval_and_cli_default_to_the_models_weights(weighted_ckpt: Path, tmp_path: Path) -> None:
    model = M3Model.from_pretrained(weighted_ckpt, device="cpu")
    query = "where does the river flow"
    with open_index(tmp_path / "idx", model, create=True) as index:
        index.add([f"d{i}" for i in range(len(DOCS))], DOCS)
        assert index.manifest.search_weights == W
        default = index.search(query, k=4, mode="all")
        assert [h.score for h in default] == [h.score for h in index.search(query, k=4, mode="all", weights=W)]
        assert [h.score for h in default] != [h.score for h in index.search(query, k=4, mode="all",
                                                                             weights=SEARCH_WEIGHTS)]
        own = index.search(query, k=4, mode="all", weights=(1, 0, 0))  # given weights still win
        np.testing.assert_allclose([h.score for h in own], [h.scores["dense"] for h in index.search(
            query, k=4, mode="all", weights=(1, 0, 0), explain=True)], atol=1e-6)

    result = CliRunner().invoke(app, ["search", str(tmp_path / "idx"), query, "-k", "4", "--mode", "all", "--json"])
    assert result.exit_code == 0, result.output
    cli = [json.loads(line) for line in result.stdout.splitlines()]
    assert [h["id"] for h in cli] == [h.id for h in default]
    np.testing.assert_allclose([h["score"] for h in cli], [h.score for h in default], atol=1e-5)

    data = Dataset("tiny", [f"d{i}" for i in range(len(DOCS))], DOCS, {"q1": query}, {"q1": {"d0": 1}}, "qrels.tsv")
    report = evaluate_dataset(data, model, m3=M3Settings(modes=("all",), index_dir=tmp_path / "eval"), bm25=None)
    assert report.settings["weights (dense, sparse, colbert)"] == list(W)
