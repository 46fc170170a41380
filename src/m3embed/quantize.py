"""Int8 CPU inference: SmoothQuant-scaled linear layers with per-token int8 activations and per-channel int8 weights.

Why not `torch.ao.quantization.quantize_dynamic`: on the shipped MiniLM model it dropped the dense cosine to
float32 to 0.91 (per-tensor 7-bit activations, and BERT-style activations have outlier channels). What this module
does instead (measured in docs/speed.md):

* SmoothQuant (Xiao et al. 2023, alpha 0.5): per input channel j, s_j = max|x_j|^0.5 / max|W_:,j|^0.5 from a short
  calibration pass at load; the weight columns are multiplied by s and the input divided by s, so outlier
  channels move from the activations into the weights;
* activations quantized per token (each row its own scale), so a text's output does not depend on its batch;
* weights quantized per output channel; the product runs as an int8 matmul (`torch._int_mm`, VNNI) into int32;
* the feed-forward output layer (input = the GELU output, the hardest to quantize) runs in bfloat16; embeddings,
  LayerNorm, attention and the heads stay float32.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH_ALPHA = 0.5  # the SmoothQuant paper's default; 0.7 was worse on minilm-m3 (docs/speed.md)
CALIBRATION_TEXTS = 16  # bundled XQuAD paragraphs run once at load to find each layer's input range
CALIBRATION_MAX_LENGTH = 128


class Int8Linear(nn.Module):
    """y = x W^T + b with x quantized per token and W per output channel, after SmoothQuant scaling."""

    def __init__(self, linear: nn.Linear, input_absmax: torch.Tensor, gelu: bool = False) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        smooth = (input_absmax.float().clamp(min=1e-5) ** SMOOTH_ALPHA
                  / w.abs().amax(0).clamp(min=1e-5) ** (1 - SMOOTH_ALPHA)).clamp(min=1e-5)  # (K,)
        w = w * smooth
        w_scale = w.abs().amax(1).clamp(min=1e-12) / 127  # (N,)
        self.register_buffer("weight_int8", torch.round(w / w_scale[:, None]).to(torch.int8).t().contiguous())  # (K, N)
        self.register_buffer("weight_scale", w_scale)
        self.register_buffer("inv_smooth", 1 / smooth)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features).float() * self.inv_smooth  # (M, K)
        scale = x.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127  # (M, 1)
        y = torch._int_mm(torch.round(x / scale).to(torch.int8), self.weight_int8).float()  # (M, N) exact int32
        y = y.mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            y = y.add_(self.bias)
        if self.gelu:
            y = F.gelu(y)
        return y.reshape(*shape[:-1], self.out_features)


class BF16Linear(nn.Module):
    """A float32-in, float32-out linear layer computed in bfloat16."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.inner = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                               dtype=torch.bfloat16)
        self.inner.load_state_dict(linear.state_dict())
        self.inner.__class__ = type(linear)  # keep the oneDNN forward when the source had it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16)).float()


def quantize_int8(backbone: nn.Module, calibrate: Callable[[list[str]], object]) -> int:
    """Quantize the linear layers of a float32 CPU encoder in place; return how many became int8.

    Args:
        backbone: the encoder; its `nn.Linear` layers (plain or oneDNN) are replaced.
        calibrate: runs the model forward over the given texts (e.g. `lambda t: model.encode(t)`); the inputs
            each linear layer sees there set its SmoothQuant scales.
    """
    ffn_out = {id(sub.output.dense) for sub in backbone.modules()
               if hasattr(sub, "intermediate") and hasattr(getattr(sub, "output", None), "dense")}
    names = {id(mod): name for name, mod in backbone.named_modules()
             if isinstance(mod, nn.Linear) and id(mod) not in ffn_out}
    absmax: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0).float()  # (K,)
            absmax[name] = torch.maximum(absmax[name], seen) if name in absmax else seen
        return hook

    hooks = [mod.register_forward_pre_hook(record(names[id(mod)])) for mod in backbone.modules() if id(mod) in names]
    try:
        calibrate(calibration_texts())
    finally:
        for h in hooks:
            h.remove()
    for parent in list(backbone.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in ffn_out:
                setattr(parent, child_name, BF16Linear(child))
            elif id(child) in names:
                gelu = getattr(child, "gelu", False)  # oneDNN had fused the FFN's GELU into this layer
                setattr(parent, child_name, Int8Linear(child, absmax[names[id(child)]], gelu=gelu))
    return len(names)


def calibration_texts(n: int = CALIBRATION_TEXTS) -> list[str]:
    """The first n paragraphs of the bundled sample corpus (English Wikipedia, XQuAD)."""
    path = resources.files("m3embed") / "data" / "xquad_en_paragraphs.jsonl"
    lines: Sequence[str] = path.read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]
