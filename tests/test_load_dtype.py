"""Loading in a dtype other than the stored one: read and converted chunk by chunk, same weights as a cast."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from m3embed import checkpoint
from m3embed.model import M3Model


@pytest.mark.parametrize("fixture", ["xlmr_ckpt", "xlmr_ckpt_bin"])
def test_read_weights_equals_a_cast_of_the_stored_tensors(fixture, request, monkeypatch):
    directory = request.getfixturevalue(fixture)
    monkeypatch.setattr(checkpoint, "_READ_CHUNK", 4096)  # many chunks per tensor
    got = checkpoint.read_weights(directory, torch.bfloat16)
    ref = load_file(directory / "model.safetensors") if fixture == "xlmr_ckpt" else torch.load(
        directory / "pytorch_model.bin", weights_only=True)
    assert got.keys() == ref.keys()
    for name, t in ref.items():
        want = t.to(torch.bfloat16) if t.is_floating_point() else t
        assert torch.equal(got[name], want), name


def test_bfloat16_model_holds_the_stored_weights_cast(xlmr_ckpt):
    bf = M3Model.from_pretrained(xlmr_ckpt, device="cpu", dtype="bfloat16")
    stored = load_file(xlmr_ckpt / "model.safetensors")
    for name, t in bf.backbone.state_dict().items():
        if name in stored:
            assert torch.equal(t, stored[name].to(t.dtype)), name
    assert bf.dtype == torch.bfloat16


def test_truncated_safetensors_file_is_named(copy_ckpt, xlmr_ckpt):
    d = copy_ckpt(xlmr_ckpt)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        checkpoint.read_weights(d, torch.bfloat16)
