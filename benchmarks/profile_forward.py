"""Where a forward pass spends its CPU time, and what the oneDNN linear layers change.

Loads a checkpoint (default: a bge-m3-shape random one, built in a temp dir) and runs one padded batch of B texts
of T tokens through `M3Model.forward` (all three modes). Prints CPU-seconds per forward and GFLOP per CPU-second
with m3embed's oneDNN linears and with plain `nn.Linear` + a separate GELU (interleaved rounds), then a
torch.profiler table of the oneDNN run. `--attention` also times attention kernels alone on the batch's shape.

    python benchmarks/profile_forward.py --dtype bfloat16 --batch 2x2000
    python benchmarks/profile_forward.py --ckpt DIR --dtype float32 --batch 64x40 --attention
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed

from m3embed.model import M3Model  # noqa: E402
from m3embed.onednn import OneDNNLinear  # noqa: E402

MODES = ("dense", "sparse", "colbert")


def set_linears(model: M3Model, onednn: bool) -> None:
    """Switch every linear layer between OneDNNLinear (GELU fused) and plain nn.Linear + separate GELU."""
    from transformers.activations import ACT2FN

    for mod in model.modules():
        if type(mod) in (nn.Linear, OneDNNLinear):
            gelu = mod.__dict__.setdefault("_fused_gelu", getattr(mod, "gelu", False))
            mod.__class__ = OneDNNLinear if onednn else nn.Linear
            if onednn:
                mod.gelu = gelu
    for mod in model.modules():
        dense = getattr(mod, "dense", None)
        if hasattr(mod, "intermediate_act_fn") and dense is not None and dense.__dict__.get("_fused_gelu"):
            mod.intermediate_act_fn = nn.Identity() if onednn else ACT2FN["gelu"]


def flops(cfg, b: int, t: int) -> float:
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return b * t * (layers * 2 * (4 * h * h + 2 * h * i) + 2 * h * h) + layers * 4 * h * b * t * t


def time_attention(cfg, b: int, t: int, dtype: torch.dtype, rounds: int) -> None:
    """CPU-seconds of one layer's attention on (b, heads, t, head_dim) with several kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads = cfg.num_attention_heads
    q, k, v = (torch.randn(b, heads, t, cfg.hidden_size // heads, dtype=dtype) for _ in range(3))

    def math() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)

    def chunked(chunk: int = 512) -> torch.Tensor:
        out = torch.empty_like(q)
        for s in range(0, t, chunk):
            a = q[:, :, s:s + chunk] @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
            out[:, :, s:s + chunk] = torch.softmax(a, -1, dtype=torch.float32).to(dtype) @ v
        return out

    kernels = {"SDPA (default: flash for CPU)": lambda: F.scaled_dot_product_attention(q, k, v),
               "SDPA math backend": math, "matmul-softmax-matmul, 512-query chunks": chunked}
    try:
        from torch.nn.attention.flex_attention import flex_attention

        compiled = torch.compile(flex_attention, dynamic=False)
        kernels["flex_attention, torch.compile"] = lambda: compiled(q, k, v)
    except Exception as e:  # inductor needs a C++ compiler; report and go on
        print(f"flex_attention skipped: {type(e).__name__}: {e}")
    fl = 4 * b * heads * t * t * (cfg.hidden_size // heads)
    print(f"attention alone, {b}x{heads}x{t}x{cfg.hidden_size // heads} {dtype}, one layer:")
    for name, fn in kernels.items():
        fn()
        best = min(_cpu(fn) for _ in range(rounds))
        print(f"  {name:42s} {best:7.3f} CPU-s  {fl / best / 1e9:6.0f} GFLOP/CPU-s")


def _cpu(fn) -> float:
    c = time.process_time()
    fn()
    return time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint dir (default: build the bge-m3 shape)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", default="2x2000", help="BxT: texts x tokens per text")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--attention", action="store_true", help="also time attention kernels alone")
    args = ap.parse_args()
    b, t = map(int, args.batch.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            from m3testkit.checkpoints import BGE_M3_SHAPE, write_random_checkpoint

            ckpt = write_random_checkpoint(Path(tmp) / "bge-m3", arch="xlmr", **BGE_M3_SHAPE)
        model = M3Model.from_pretrained(ckpt, device="cpu", dtype=args.dtype)
    cfg = model.backbone.config
    ids = torch.randint(5, 1500, (b, t))
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones(b, t, dtype=torch.long)
    times: dict[str, list[float]] = {"plain nn.Linear + GELU": [], "oneDNN linears, GELU fused": []}
    with torch.inference_mode():
        for r in range(args.rounds):
            for name in (list(times) if r % 2 == 0 else list(times)[::-1]):
                set_linears(model, onednn=name.startswith("oneDNN"))
                model(ids, mask, MODES)  # warm-up
                times[name].append(_cpu(lambda: model(ids, mask, MODES)))
        load = os.getloadavg()
        print(f"{args.dtype} forward, {b}x{t} tokens, {torch.get_num_threads()} threads, "
              f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
        for name, v in times.items():
            print(f"  {name:28s} CPU-s best {min(v):7.2f}  median {statistics.median(v):7.2f}   "
                  f"GFLOP/CPU-s (best) {flops(cfg, b, t) / min(v) / 1e9:6.0f}")
        set_linears(model, onednn=True)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(ids, mask, MODES)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=45))
    if args.attention:
        time_attention(cfg, b, t, model.dtype, args.rounds)


if __name__ == "__main__":
    main()
