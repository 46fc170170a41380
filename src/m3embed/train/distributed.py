"""torch.distributed helpers that also run on one process (rank 0 of 1, gathers return the local tensor).

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; `init_distributed` turns them into a process group (nccl on
GPU, gloo on CPU). Without them nothing is initialised and every helper is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 of the process group, or of the torchrun launch (RANK) when no group is open (yet, or anymore)."""
    return (get_rank() if is_initialized() else int(os.environ.get("RANK", "0"))) == 0


def init_distributed(device: str | None = None) -> tuple[torch.device, bool]:
    """Pick this process's device and join the process group when launched by torchrun.

    Args:
        device: "cpu", "cuda", "cuda:1"...; None = cuda:LOCAL_RANK when CUDA is available, else cpu.

    Returns:
        (device, whether this call created the process group: the caller then owns `cleanup`).
    """
    if device is None:
        device = f"cuda:{get_local_rank()}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", get_local_rank())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_initialized():
        return dev, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return dev, True


def cleanup() -> None:
    """Leave the process group (if any)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's slice (a reduce-scatter).

    Built on all_reduce, which every backend supports (gloo has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.n = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)  # (W·n, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rank = dist.get_rank()
        return grad[rank * ctx.n : (rank + 1) * ctx.n]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` (same shape on every process) from all processes along dim 0, rank order.

    Gradients flow back to every process's own slice: each process back-propagates its loss through the
    gathered tensor and this process receives the sum over processes for its rows. With DDP's gradient
    averaging this gives exactly the gradient of the mean of the per-process losses.
    """
    if get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def all_gather(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from all processes along dim 0, without gradient (itself on one process)."""
    if get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_mean(
    values: Mapping[str, Tensor | float], device: torch.device | None = None
) -> dict[str, float]:
    """Average scalar values over processes (one all_reduce for all keys); plain floats on one process."""
    keys = sorted(values)
    if not keys:
        return {}
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).detach().cpu() for k in keys])
    if get_world_size() > 1:
        if device is not None and device.type == "cuda":
            stacked = stacked.to(device)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked = stacked.cpu() / get_world_size()
    return {k: float(v) for k, v in zip(keys, stacked)}


def broadcast_object(obj: object, src: int = 0) -> object:
    """`obj` from process `src` on every process (itself on one process)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
