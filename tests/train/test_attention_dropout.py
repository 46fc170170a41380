"""attention_dropout: every attention layer's dropout is set (M3, RetroMAE, reranker), and at 0 a training step
runs torch's fused attention kernel instead of the (T x T) map the CPU math path materialises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from m3embed.train.config import PretrainConfig
from m3embed.train.retromae import PretrainTrainer
from m3embed.train.trainer import Trainer, set_attention_dropout
from tests.train.test_trainer import config

FUSED = "aten::_scaled_dot_product_flash_attention_for_cpu"


def ops_of_a_step(trainer: Trainer) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.compute_loss(trainer.batches.batch(0, 0)).loss.backward()
    return {e.key for e in prof.key_averages()}


def attention_dropouts(model: torch.nn.Module) -> list[float]:
    return [m.dropout.p for m in model.modules() if hasattr(m, "query") and hasattr(m, "dropout")]


@pytest.mark.parametrize("ckpt", ["xlmr_ckpt", "bert_ckpt"])
def test_zero_attention_dropout_runs_the_fused_kernel_and_keeps_the_saved_config(ckpt, request, train_file,
                                                                                 tmp_path):
    ckpt = request.getfixturevalue(ckpt)
    saved = json.loads((Path(ckpt) / "config.json").read_text())["attention_probs_dropout_prob"]
    assert saved > 0
    default = Trainer(config(ckpt, train_file, tmp_path / "a"))
    assert set(attention_dropouts(default.model)) == {saved}
    assert FUSED not in ops_of_a_step(default)  # dropout > 0: the math path

    zero = Trainer(config(ckpt, train_file, tmp_path / "b", attention_dropout=0.0))
    assert attention_dropouts(zero.model) and set(attention_dropouts(zero.model)) == {0.0}
    assert FUSED in ops_of_a_step(zero)
    assert zero.model.backbone.config.attention_probs_dropout_prob == saved  # what gets saved is unchanged


def test_retromae_decoder_and_encoder_follow(xlmr_ckpt, tmp_path):
    texts = [f"text number {i} has some words in it" for i in range(8)]
    trainer = PretrainTrainer(PretrainConfig(model=str(xlmr_ckpt), output_dir=str(tmp_path), per_device_batch_size=4,
                                             max_length=32, progress=False, device="cpu", attention_dropout=0.0),
                              texts=texts)
    n_layers = trainer.model.mlm.config.num_hidden_layers
    assert attention_dropouts(trainer.model) == [0.0] * (n_layers + 1)  # the encoder's layers and the decoder
    assert trainer.model.decoder.hidden_dropout.p > 0  # hidden dropout is not attention dropout


def test_a_model_without_attention_layers_is_refused():
    with pytest.raises(ValueError, match="attention_dropout=0.0: no attention layer"):
        set_attention_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.0)
    with pytest.raises(ValueError, match=r"attention_dropout=1\.5: must be in \[0, 1\)"):
        config(Path("x"), Path("y"), Path("z"), attention_dropout=1.5)
