"""The quantised deltas a shipped reranker's trained matrices travel as (m3embed.checkpoint), and their merge."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from m3embed import sources
from m3embed.sources import QDELTA, QSCALE, dequantize_delta, quantize_delta


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_delta_round_trips_within_half_a_step(bits):
    delta = torch.randn(12, 10, generator=torch.Generator().manual_seed(bits)) * 1e-3
    delta[3] = 0  # an unchanged row: scale 0, exact
    q = quantize_delta(delta, bits)
    assert q[QDELTA].dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert q[QDELTA].shape == (12, 10 if bits == 8 else 5) and q[QSCALE].shape == (12, 1)
    assert q[QSCALE].dtype == torch.float16
    back = dequantize_delta(q[QDELTA], q[QSCALE])
    assert back.shape == delta.shape and torch.equal(back[3], torch.zeros(10))
    step = q[QSCALE].float()
    assert torch.all((back - delta).abs() <= step / 2 + 1e-3 * step + 1e-12)
    levels = 2 ** (bits - 1) - 1  # the largest value of each row is hit exactly up to the float16 scale
    torch.testing.assert_close(back.abs().amax(1), levels * step.squeeze(1))


def test_four_bit_codes_pack_two_per_byte_low_nibble_first():
    delta = torch.tensor([[-7.0, 7.0, 0.0, 1.0]])
    q = quantize_delta(delta, 4)
    assert q[QSCALE].item() == 1.0
    assert q[QDELTA].tolist() == [[1 | (15 << 4), 8 | (9 << 4)]]
    assert dequantize_delta(q[QDELTA], q[QSCALE]).tolist() == delta.tolist()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="bits 4 or 8"):
        quantize_delta(torch.zeros(2, 3), 4)  # odd columns
    with pytest.raises(ValueError, match="bits 4 or 8"):
        quantize_delta(torch.zeros(4), 8)
    with pytest.raises(ValueError, match="int8 or uint8"):
        dequantize_delta(torch.zeros(2, 2), torch.ones(2, 1))


def test_merge_adds_deltas_replaces_whole_tensors_and_keeps_the_rest(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 8, generator=g), "v": torch.randn(4, 4, generator=g), "b": torch.randn(6, generator=g)}
    save_file(base, str(tmp_path / "model.safetensors"))
    dw, dv = torch.randn(6, 8, generator=g) * 1e-2, torch.randn(4, 4, generator=g) * 1e-2
    ours = {"m.b": torch.zeros(6, dtype=torch.float16), "m.head": torch.ones(2, 3, dtype=torch.float16)}
    for name, delta, bits in (("m.w", dw, 4), ("m.v", dv, 8)):
        q = quantize_delta(delta, bits)
        ours[name + QDELTA], ours[name + QSCALE] = q[QDELTA], q[QSCALE]
    save_file(ours, str(tmp_path / sources.TRAINED_WEIGHTS), metadata={"format": "pt", "backbone_prefix": "m."})
    expect_w = base["w"] + dequantize_delta(ours["m.w" + QDELTA], ours["m.w" + QSCALE])
    sources.merge_trained(tmp_path / "model.safetensors", tmp_path / sources.TRAINED_WEIGHTS)
    merged = load_file(tmp_path / "model.safetensors")
    assert set(merged) == {"m.w", "m.v", "m.b", "m.head"}
    assert all(v.dtype == torch.float32 for v in merged.values())
    torch.testing.assert_close(merged["m.w"], expect_w, rtol=0, atol=0)
    torch.testing.assert_close(merged["m.w"], base["w"] + dw, rtol=0, atol=dw.abs().max().item() / 7)
    torch.testing.assert_close(merged["m.v"], base["v"] + dv, rtol=0, atol=dv.abs().max().item() / 127)
    assert torch.equal(merged["m.b"], torch.zeros(6)) and torch.equal(merged["m.head"], torch.ones(2, 3))
    assert not (tmp_path / sources.TRAINED_WEIGHTS).exists()


def test_merge_refuses_a_delta_without_its_backbone_tensor(tmp_path):
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    q = quantize_delta(torch.ones(2, 2), 8)
    save_file({"x" + QDELTA: q[QDELTA], "x" + QSCALE: q[QSCALE]}, str(tmp_path / sources.TRAINED_WEIGHTS))
    with pytest.raises(ValueError, match="no backbone tensor x"):
        sources.merge_trained(tmp_path / "model.safetensors", tmp_path / sources.TRAINED_WEIGHTS)


def test_trained_tensors_ship_what_changed_and_merge_back(tmp_path):
    g = torch.Generator().manual_seed(1)
    base = {"big": torch.randn(64, 32, generator=g), "small": torch.randn(8, 32, generator=g),
            "same": torch.randn(8, 8, generator=g), "bias": torch.randn(8, generator=g)}
    trained = {k: v.clone() for k, v in base.items()}
    trained["big"] += torch.randn(64, 32, generator=g) * 1e-2
    trained["small"] += torch.randn(8, 32, generator=g) * 1e-2
    trained["bias"] += 1.0
    trained["head"] = torch.randn(2, 8, generator=g)
    ours, bits = sources.trained_tensors(trained, base)
    assert bits == {"big": 8, "small": 8}
    assert set(ours) == {"bias", "head", *(k + s for k in bits for s in (QDELTA, QSCALE))}  # "same" left out
    assert ours["bias"].dtype == torch.float16 and ours["big" + QDELTA].dtype == torch.int8
    # a budget below the 8-bit size moves the largest matrix, and only it, to 4 bits
    _, tight = sources.trained_tensors(trained, base, max_bytes=64 * 32 + 8 * 32)
    assert tight == {"big": 4, "small": 8}
    whole, none = sources.trained_tensors(trained, base, delta_bits=0)
    assert none == {} and set(whole) == {"big", "small", "bias", "head"}
    save_file(base, str(tmp_path / "model.safetensors"))
    save_file(ours, str(tmp_path / sources.TRAINED_WEIGHTS), metadata={"format": "pt"})
    sources.merge_trained(tmp_path / "model.safetensors", tmp_path / sources.TRAINED_WEIGHTS)
    merged = load_file(tmp_path / "model.safetensors")
    for k in ("big", "small"):
        step = (trained[k] - base[k]).abs().max().item() / 127
        torch.testing.assert_close(merged[k], trained[k], rtol=0, atol=step)
    assert torch.equal(merged["same"], base["same"])
    torch.testing.assert_close(merged["head"], trained["head"].half().float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="delta_bits"):
        sources.trained_tensors(trained, base, delta_bits=2)
