"""extend-positions: the extended checkpoint loads, reads past the old limit, and (copy) keeps short outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from m3embed.cli import app
from m3embed.model import M3Model
from m3embed.train.positions import extend_positions, extend_table
from m3testkit.checkpoints import TINY_XLMR_SHAPE, sample_texts, write_random_checkpoint

SHORT = sample_texts(30, seed=5)[-6:]  # the first ones list whole lexicons: too long
LONG = " ".join(sample_texts(80, seed=6))  # far more than 128 tokens


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random 2-layer BERT with 130 positions (no padding offset) and MiniLM's tokenizer."""
    return write_random_checkpoint(tmp_path_factory.mktemp("bert"), arch="bert", random_backbone=True, seed=0,
                                   **TINY_XLMR_SHAPE)


@pytest.mark.parametrize("arch", ["xlmr", "bert"])
def test_copy_reads_longer_texts_and_keeps_short_outputs(arch, xlmr_ckpt, tiny_bert, tmp_path):
    src = xlmr_ckpt if arch == "xlmr" else tiny_bert
    before = M3Model.from_pretrained(src)
    dst = extend_positions(src, tmp_path / "ext", max_length=300)
    after = M3Model.from_pretrained(dst)
    assert (before.max_length, after.max_length) == (130 - (2 if arch == "xlmr" else 0), 300)
    assert after.tokenizer.model_max_length == 300
    assert max(before.encode(SHORT).n_tokens) < before.max_length
    long = after.encode([LONG], modes=("dense",))
    assert long.n_tokens[0] == 300  # truncated at the new limit, not the old one
    for mode in ("dense", "sparse", "colbert"):
        ref, got = before.encode(SHORT, modes=mode), after.encode(SHORT, modes=mode)
        if mode == "dense":
            np.testing.assert_allclose(got.dense, ref.dense, atol=1e-6)
        elif mode == "sparse":
            np.testing.assert_allclose(got.sparse.toarray(), ref.sparse.toarray(), atol=1e-6)
        else:
            for a, b in zip(got.colbert, ref.colbert):
                np.testing.assert_allclose(a, b, atol=1e-6)


def test_tables_keep_the_padding_rows():
    table = torch.randn(2 + 4, 3)  # XLM-R layout: 2 padding rows, 4 positions
    copy = extend_table(table, 2, 10, "copy")
    assert torch.equal(copy[:6], table) and torch.equal(copy[6:10], table[2:]) and torch.equal(copy[10:], table[2:4])
    inter = extend_table(table, 2, 7, "interpolate")
    assert inter.shape == (9, 3) and torch.equal(inter[:2], table[:2])
    torch.testing.assert_close(inter[[2, -1]], table[[2, -1]])
    # new position j sits at old position j * 3/6: j = 2 on old row 1, j = 3 halfway between rows 1 and 2
    torch.testing.assert_close(inter[2 + 2], table[2 + 1])
    torch.testing.assert_close(inter[2 + 3], (table[2 + 1] + table[2 + 2]) / 2)


def test_cli_interpolate_and_info_show_the_new_limit(xlmr_ckpt, tmp_path):
    dst = tmp_path / "ext"
    runner = CliRunner()
    result = runner.invoke(app, ["extend-positions", str(xlmr_ckpt), str(dst), "--max-length", "256",
                                 "--method", "interpolate"])
    assert result.exit_code == 0, result.output
    assert json.loads((dst / "config.json").read_text())["max_position_embeddings"] == 258
    info = runner.invoke(app, ["info", "-m", str(dst)])
    assert info.exit_code == 0 and "256" in info.output
    assert M3Model.from_pretrained(dst).encode([LONG]).n_tokens[0] == 256


def test_refuses_a_shorter_limit_and_a_used_directory(xlmr_ckpt, tmp_path):
    with pytest.raises(ValueError, match="max_length=100 must exceed the model's position limit of 128"):
        extend_positions(xlmr_ckpt, tmp_path / "a", max_length=100)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(FileExistsError, match="is not empty"):
        extend_positions(xlmr_ckpt, tmp_path / "b", max_length=512)
