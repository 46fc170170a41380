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


def test_top_layers_on_cached_states_give_the_uncached_loss_and_gradients(nodrop_ckpt, train_file, tmp_path):
    trainer = Trainer(config(nodrop_ckpt, train_file, tmp_path, train_layers=1, per_device_batch_size=4))
    cache = trainer.state_cache
    assert isinstance(cache, EncoderStateCache) and cache.stop_layer == 1  # the 2-layer encoder's lower layer
    ref_loss, ref = loss_and_head_grads(trainer, None)  # the whole backbone runs, the lower part without grad
    assert {n.split(".")[0] for n in ref} == {"backbone", "colbert_linear", "sparse_linear"}
    assert all(".layer.1." in n for n in ref if n.startswith("backbone"))  # nothing below the top layer
    exact = EncoderStateCache(trainer.model.backbone, trainer.model.tokenizer.pad_token_id, dtype=torch.float32,
                              stop_layer=1)
    loss, got = loss_and_head_grads(trainer, exact)
    assert loss == pytest.approx(ref_loss, rel=1e-5) and set(got) == set(ref)
    for name in ref:
        assert torch.allclose(got[name], ref[name], rtol=1e-4, atol=1e-6 * ref[name].abs().max()), name


@pytest.mark.parametrize("ckpt", ["bert_ckpt", "xlmr_ckpt"])
def test_states_below_a_layer_then_the_layers_above_give_the_backbones_output(ckpt, request):
    from m3embed import M3Model
    from m3embed.model import backbone_states, run_layers

    model = M3Model.from_pretrained(str(request.getfixturevalue(ckpt))).eval()
    enc = model.tokenizer(["a short one", "a rather longer text than the first one is"], padding=True,
                          return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    full = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    split = run_layers(model.backbone, backbone_states(model.backbone, ids, mask, 1), mask, 1)
    assert torch.allclose(split[mask.bool()], full[mask.bool()], atol=1e-6)


def test_training_top_layers_leaves_the_rest_of_the_encoder_as_it_was(xlmr_ckpt, train_file, tmp_path):
    from m3embed import M3Model

    trainer = Trainer(config(xlmr_ckpt, train_file, tmp_path, train_layers=1, max_steps=3, learning_rate=5e-3))
    assert trainer.trained_parts == ["encoder.layer.1", "sparse_linear", "colbert_linear"]
    trainer.train()
    before = M3Model.from_pretrained(str(xlmr_ckpt)).backbone.state_dict()
    after = M3Model.from_pretrained(str(tmp_path)).backbone.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("encoder.layer.1.") for name in changed)


def test_train_layers_settings():
    assert TrainConfig(train_layers=2).use_state_cache
    assert not TrainConfig(train_layers=2, cache_encoder_states=False).use_state_cache
    with pytest.raises(ValueError, match="train_layers.*'encoder' is frozen"):
        TrainConfig(train_layers=2, freeze="encoder")
    with pytest.raises(ValueError, match="train_layers=0.*>= 1"):
        TrainConfig(train_layers=0)


def test_heads_take_their_own_learning_rate(xlmr_ckpt, train_file, tmp_path):
    trainer = Trainer(config(xlmr_ckpt, train_file, tmp_path, train_layers=1, learning_rate=1e-5,
                             head_learning_rate=2e-3))
    lr_of = {id(p): g["initial_lr"] for g in trainer.optimizer.param_groups for p in g["params"]}  # peak lrs
    named = dict(trainer.model.named_parameters())
    assert {lr_of[id(p)] for n, p in named.items() if n.startswith(("sparse_linear", "colbert_linear"))} == {2e-3}
    assert {lr_of[id(p)] for n, p in named.items() if n.startswith("backbone") and p.requires_grad} == {1e-5}
