"""CPU inference through oneDNN: linear layers that bypass MKL's sgemm, with the FFN's GELU fused in.

Measured on the 2-core AMD EPYC (AVX512-BF16) this repository is built on: torch's float32 `F.linear` goes to
MKL, which ran ~90 GFLOP per CPU-second there; oneDNN's linear ran 180-220 on the encoder's shapes. In bfloat16
both use oneDNN, and fusing the bias and the erf GELU saves the separate bias copy and GELU pass. Weights stay
the plain `nn.Linear` parameters (no packed copy, no extra memory): the state dict, saving and training are
unchanged, and a call that needs gradients, runs under autocast or off the CPU takes `F.linear`.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn


class OneDNNLinear(nn.Linear):
    """`nn.Linear` whose CPU inference runs oneDNN's linear, optionally followed by exact (erf) GELU, fused."""

    gelu: bool = False  # set per instance by `use_onednn` on the FFN's first linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _onednn_applies(x, self.weight):
            act, algorithm = ("gelu", "none") if self.gelu else ("none", "")  # "none" = erf GELU, not tanh
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, act, [], algorithm)
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if self.gelu else y


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype
            and x.dtype in _onednn_dtypes()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.is_autocast_enabled("cpu"))


@cache
def _onednn_dtypes() -> tuple[torch.dtype, ...]:
    """float32, and bfloat16 where the CPU has native bfloat16 (AVX512-BF16 / AMX): without it oneDNN refuses to
    create a bfloat16 linear primitive ("could not create a primitive descriptor"), so `F.linear` runs it."""
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)


def onednn_available() -> bool:
    """Whether this torch build has oneDNN (mkldnn) and its fused linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_onednn(module: nn.Module) -> int:
    """Turn every plain `nn.Linear` under `module` into a `OneDNNLinear` in place; return how many.

    Where a feed-forward block applies erf GELU right after its first linear (`intermediate.dense` followed by
    `intermediate_act_fn` in BERT / XLM-R), the GELU moves into that linear. A build without oneDNN is left as is.
    """
    if not onednn_available():
        return 0
    count = 0
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = OneDNNLinear  # same parameters and state-dict keys, new forward
            count += 1
    for sub in module.modules():
        dense, act = getattr(sub, "dense", None), getattr(sub, "intermediate_act_fn", None)
        if isinstance(dense, OneDNNLinear) and _is_erf_gelu(act):
            dense.gelu = True
            sub.intermediate_act_fn = nn.Identity()
    return count


def _is_erf_gelu(act: object) -> bool:
    """transformers' `ACT2FN["gelu"]` (GELUActivation calling F.gelu), or torch's nn.GELU() with erf."""
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu
