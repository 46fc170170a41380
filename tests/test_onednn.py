"""oneDNN linear layers: same outputs as nn.Linear, same parameters, and the autograd path untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from m3embed.model import M3Model
from m3embed.onednn import OneDNNLinear, onednn_available, use_onednn

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")


class _FFN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(16, 32)
        self.intermediate_act_fn = ACT2FN["gelu"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gelu_matches_linear_then_gelu(dtype):
    torch.manual_seed(0)
    ffn = _FFN().to(dtype)
    x = torch.randn(3, 5, 16, dtype=dtype)
    with torch.no_grad():
        ref = ffn(x)
        fast = copy.deepcopy(ffn)
        assert use_onednn(fast) == 1
        assert isinstance(fast.dense, OneDNNLinear) and fast.dense.gelu
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(fast(x), ref, atol=tol, rtol=tol)


def test_state_dict_and_gradients_are_those_of_nn_linear():
    torch.manual_seed(0)
    ffn = _FFN()
    fast = copy.deepcopy(ffn)
    use_onednn(fast)
    assert fast.state_dict().keys() == ffn.state_dict().keys()
    x = torch.randn(4, 16)
    F.mse_loss(fast(x), torch.zeros(4, 32)).backward()
    F.mse_loss(ffn(x), torch.zeros(4, 32)).backward()
    torch.testing.assert_close(fast.dense.weight.grad, ffn.dense.weight.grad)


def test_loaded_model_uses_onednn_and_saves_the_same_keys(xlmr_ckpt, tmp_path):
    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    assert isinstance(model.backbone.encoder.layer[0].intermediate.dense, OneDNNLinear)
    assert isinstance(model.colbert_linear, OneDNNLinear)
    again = M3Model.from_pretrained(model.save_pretrained(tmp_path / "saved"), device="cpu")
    assert again.backbone.state_dict().keys() == model.backbone.state_dict().keys()
