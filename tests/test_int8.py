"""The int8 CPU path: quality gates against float32, loading, and the CLI option."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from m3embed.model import M3Model
from m3embed.quantize import BF16Linear, Int8Linear
from m3embed.types import M3Output
from m3testkit.checkpoints import sample_texts

ALL = ("dense", "sparse", "colbert")


@pytest.fixture(scope="module")
def int8_model(xlmr_ckpt) -> M3Model:
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu", dtype="int8")


def test_int8_meets_the_quality_gates_on_multilingual_texts(xlmr_ckpt, int8_model):
    texts = sample_texts(64)
    ref = M3Model.from_pretrained(xlmr_ckpt, device="cpu").encode(texts, modes=ALL)
    out = int8_model.encode(texts, modes=ALL)
    assert np.einsum("ih,ih->i", ref.dense, out.dense).min() >= 0.998
    overlap = []
    for a, b in zip(ref.sparse_vectors(), out.sparse_vectors()):
        top_a, top_b = (set(v.ids[np.argsort(-v.weights)[:10]].tolist()) for v in (a, b))
        overlap.append(len(top_a & top_b) / len(top_a))
    assert np.mean(overlap) >= 0.9
    cos = np.concatenate([np.einsum("th,th->t", a, b) for a, b in zip(ref.colbert, out.colbert)])
    assert cos.min() >= 0.99


def test_int8_replaces_encoder_linears_and_keeps_heads_float32(int8_model):
    layer = int8_model.backbone.encoder.layer[0]
    assert isinstance(layer.attention.self.query, Int8Linear)
    assert isinstance(layer.intermediate.dense, Int8Linear) and layer.intermediate.dense.gelu
    assert isinstance(layer.output.dense, BF16Linear)  # the GELU output is the hardest input to quantize
    assert int8_model.colbert_linear.weight.dtype == torch.float32


def test_int8_output_does_not_depend_on_the_batch(int8_model):
    texts = sample_texts(12)
    together = int8_model.encode(texts, modes=ALL)
    alone = int8_model.encode(texts[3:4], modes=ALL)
    np.testing.assert_allclose(together.dense[3], alone.dense[0], atol=1e-5)  # per-token activation scales


def test_int8_linear_matches_float_within_quantization_error():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(5, 7, 64)
    q = Int8Linear(linear, x.reshape(-1, 64).abs().amax(0))
    ref = linear(x)
    assert q(x).shape == ref.shape
    assert ((q(x) - ref).norm() / ref.norm()).item() < 0.02


def test_int8_is_cpu_only(xlmr_ckpt):
    with pytest.raises(ValueError, match="CPU only"):
        M3Model.from_pretrained(xlmr_ckpt, device="meta", dtype="int8")


def test_unknown_dtype_names_the_choices(xlmr_ckpt):
    with pytest.raises(ValueError, match="int8"):
        M3Model.from_pretrained(xlmr_ckpt, device="cpu", dtype="int4")


def test_cli_encode_accepts_dtype_int8(xlmr_ckpt, int8_model, tmp_path):
    src = tmp_path / "in.jsonl"
    texts = ["hello world", "Привет мир"]
    src.write_text("\n".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) for i, t in enumerate(texts)))
    r = subprocess.run([sys.executable, "-m", "m3embed", "encode", str(src), "-o", str(tmp_path / "out"),
                        "-m", str(xlmr_ckpt), "--dtype", "int8"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got, _ = M3Output.load(tmp_path / "out")
    np.testing.assert_allclose(got.dense, int8_model.encode(texts).dense, atol=1e-5)


def test_int8_model_keeps_the_checkpoint_fingerprint(xlmr_ckpt, int8_model):
    """An index built with the float32 model accepts the same checkpoint loaded in int8 (as in bfloat16)."""
    assert int8_model.fingerprint == M3Model.from_pretrained(xlmr_ckpt, device="cpu").fingerprint
