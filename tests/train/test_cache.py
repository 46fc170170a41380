"""Encoder-state cache: heads-only training on cached backbone states equals the uncached loop."""

from __future__ import annotations

import json

import pytest
import torch

from m3embed.train.cache import EncoderStateCache
from m3embed.train.config import TrainConfig
from m3embed.train.trainer import Trainer

from .test_trainer import config


def loss_and_head_grads(trainer: Trainer, cache: EncoderStateCache | None) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.loss_fn.state_cache = cache
    trainer.optimizer.zero_grad()
    out = trainer.compute_loss(trainer.batches.batch(0, 0))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return out.loss.item(), grads


def test_cached_states_give_the_uncached_loss_and_gradients(nodrop_ckpt, train_file, tmp_path):
    trainer = Trainer(config(nodrop_ckpt, train_file, tmp_path, freeze="encoder", per_device_batch_size=4))
    assert isinstance(trainer.state_cache, EncoderStateCache)  # on by default with a frozen encoder
    ref_loss, ref = loss_and_head_grads(trainer, None)
    assert set(ref) == {"colbert_linear.weight", "colbert_linear.bias", "sparse_linear.weight", "sparse_linear.bias"}
    pad_id = trainer.model.tokenizer.pad_token_id
    exact = EncoderStateCache(trainer.model.backbone, pad_id, dtype=torch.float32)
    loss, got = loss_and_head_grads(trainer, exact)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name in ref:
        assert torch.allclose(got[name], ref[name], rtol=1e-4, atol=1e-6 * ref[name].abs().max()), name
    # the float16 store the trainer uses by default stays close
    half = EncoderStateCache(trainer.model.backbone, pad_id)
    assert loss_and_head_grads(trainer, half)[0] == pytest.approx(ref_loss, rel=1e-3)


def test_each_distinct_text_is_encoded_once_in_eval_mode(xlmr_ckpt, train_file, tmp_path):
    trainer = Trainer(config(xlmr_ckpt, train_file, tmp_path, freeze="encoder"))  # dropout 0.1 in this ckpt
    calls = []
    trainer.model.backbone.register_forward_hook(lambda m, args, out: calls.append(m.training))
    batch = trainer.collate(trainer.batches.batch(0, 0))
    cache = trainer.state_cache
    first = cache(batch["p_ids"], batch["p_mask"])
    n_texts, n_calls = len(cache), len(calls)
    assert n_texts == len({tuple(r[m.bool()].tolist()) for r, m in zip(batch["p_ids"], batch["p_mask"])})
    assert calls == [False] * n_calls and trainer.model.backbone.training  # eval while filling, restored after
    hits = cache.hits
    again = cache(batch["p_ids"], batch["p_mask"])
    assert len(calls) == n_calls and len(cache) == n_texts  # nothing re-encoded
    assert cache.hits == hits + len(batch["p_ids"])
    assert torch.equal(first, again)
    assert (first[~batch["p_mask"].bool()] == 0).all()  # padding stays zero


def test_training_with_the_cache_logs_it_and_learns(xlmr_ckpt, train_file, tmp_path):
    trainer = Trainer(config(xlmr_ckpt, train_file, tmp_path, freeze="encoder", epochs=3, learning_rate=5e-3))
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["cache_hit_rate"] > 0.3 and log[-1]["cache_texts"] > 0
    # single batches differ in difficulty, and two epochs of 6 steps were too few to tell on every random fixture
    # (the fixture's tokenizer differs between test sessions): compare the mean loss of the last epoch with the first
    first = [r["loss"] for r in log if r["epoch"] <= 1.0]
    last = [r["loss"] for r in log if r["epoch"] > 2.0]
    assert first and last and sum(last) / len(last) < sum(first) / len(first)


def test_cache_setting_needs_a_frozen_encoder():
    assert TrainConfig(freeze="encoder").use_state_cache
    assert not TrainConfig(freeze="encoder", cache_encoder_states=False).use_state_cache
    assert not TrainConfig().use_state_cache
    with pytest.raises(ValueError, match="cache_encoder_states=True.*frozen encoder"):
        TrainConfig(cache_encoder_states=True)
