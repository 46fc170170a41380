from __future__ import annotations

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
    c = TrainConfig(modes="dense+sparse", freeze="encoder", train_data="a.jsonl", max_steps=3)
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
