from __future__ import annotations

import json

import pytest

from m3embed.train.config import TrainConfig


def test_defaults_follow_the_reference():
    c = TrainConfig()
    assert c.temperature == 0.02 and c.modes == ("dense", "sparse", "colbert") and c.unified
    assert c.train_group_size == 8 and c.self_distill and c.self_distill_start_step == -1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0}, "temperature=0: must be > 0"),
        ({"modes": ("dense", "lexical")}, "unknown mode"),
        ({"freeze": ("decoder",)}, "freeze=['decoder']"),
        ({"freeze": "encoder", "modes": "dense"}, "leaves nothing to train"),
        ({"freeze": ("encoder", "sparse", "colbert")}, "leaves nothing to train"),
        ({"kd_loss": "mse"}, "kd_loss='mse': must be one of"),
        ({"sub_batch_size": 0}, "sub_batch_size=0"),
        ({"epochs": 0, "max_steps": -1}, "need epochs > 0 or max_steps > 0"),
    ],
)
def test_bad_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig(**kwargs)


def test_strings_are_parsed_and_config_round_trips(tmp_path):
    c = TrainConfig(modes="dense,sparse", freeze="encoder", train_data="a.jsonl", max_steps=3)
    assert c.modes == ("dense", "sparse") and c.freeze == ("encoder",) and c.train_data == ["a.jsonl"]
    c.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == c
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"lr": 1})


def test_loss_config_takes_the_train_config_fields_of_its_names():
    from dataclasses import FrozenInstanceError

    from m3embed.train.config import LossConfig

    assert LossConfig() == LossConfig.from_train_config(TrainConfig())  # the same defaults
    c = TrainConfig(modes="dense,colbert", train_group_size=3, temperature=0.05, kd_loss="kl_div", bf16=True)
    loss = LossConfig.from_train_config(c)
    assert (loss.modes, loss.train_group_size, loss.temperature, loss.kd_loss, loss.bf16) == (
        ("dense", "colbert"), 3, 0.05, "kl_div", True
    )
    with pytest.raises(FrozenInstanceError):
        loss.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="kd_loss='mse'"):
        LossConfig(kd_loss="mse")


def test_lengths_default_to_capped_values_and_explicit_overflow_is_an_error():
    assert TrainConfig().max_lengths(8192) == (64, 256)
    assert TrainConfig().max_lengths(128) == (64, 128)  # defaults are capped silently
    assert TrainConfig(query_max_length=128, passage_max_length=128).max_lengths(128) == (128, 128)
    with pytest.raises(ValueError, match="passage_max_length=256 exceeds the model's position limit of 128"):
        TrainConfig(passage_max_length=256).max_lengths(128)
    with pytest.raises(ValueError, match="query_max_length=1, passage_max_length=None: must be >= 2"):
        TrainConfig(query_max_length=1)


def test_configs_saved_under_the_old_length_names_still_load(tmp_path):
    from importlib.resources import files

    shipped = TrainConfig.load(files("m3embed") / "models" / "minilm-m3" / "train_config.json")
    assert (shipped.query_max_length, shipped.passage_max_length) == (64, 256)
    old = TrainConfig(max_steps=3).to_dict()
    old["query_max_len"], old["passage_max_len"] = old.pop("query_max_length"), old.pop("passage_max_length")
    old["query_max_len"] = 32
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = TrainConfig.load(tmp_path / "old.json")
    assert (loaded.query_max_length, loaded.passage_max_length, loaded.max_steps) == (32, None, 3)
    assert "query_max_len" not in loaded.to_dict()
    with pytest.raises(ValueError, match="query_max_len=32 and query_max_length=16 disagree"):
        TrainConfig.from_dict({"query_max_len": 32, "query_max_length": 16})
