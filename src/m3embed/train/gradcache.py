"""Gradient caching (GradCache, Gao et al. 2021): contrastive batches far larger than memory, exact gradients.

A contrastive loss couples every text of a batch, so the batch cannot simply be split into accumulated
micro-batches. GradCache splits the work instead:

1. embed every chunk of the batch without a graph (only the outputs are kept), recording each chunk's RNG state;
2. compute the loss on the whole batch's outputs (cross-device negatives included) and the gradient of the loss
   with respect to each output;
3. re-run each chunk with a graph under its recorded RNG state (the same dropout masks) and back-propagate the
   cached output gradients through it.

The parameter gradients equal those of the uncached full-batch loss; memory holds one chunk's activations plus
the outputs. Under DDP the chunks but the last run under `no_sync`, so gradients are averaged once per step.
sentence-transformers' CachedMultipleNegativesRankingLoss is the reference this was checked against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from m3embed.train.losses import M3LossOutput, M3TrainingLoss, sub_batch_slices

TOKEN_AXIS_OFFSET = {"token_weights": 0, "colbert": 1}  # outputs with a token axis: width = T - offset


class RandState:
    """The RNG state of CPU torch and of `device`'s CUDA generator when captured; `replay()` restores it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from the captured state; the RNG outside the block continues as if it had not run."""
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


class GradCacheLoss(nn.Module):
    """An `M3TrainingLoss` run by gradient caching; `forward` encodes one chunk (what DDP wraps and syncs).

    Args:
        loss: the loss module (its model, modes, temperature, cross-device negatives); its sub-batches are unused.
        chunk_size: texts per re-run chunk.
    """

    def __init__(self, loss: M3TrainingLoss, chunk_size: int) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        self.loss = loss
        self.chunk_size = chunk_size

    def forward(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Model outputs of one chunk (float32), with a graph when grad is enabled."""
        return self.loss._encode_chunk(ids, mask)

    def forward_backward(
        self,
        q_ids: Tensor,
        q_mask: Tensor,
        p_ids: Tensor,
        p_mask: Tensor,
        step: int = 0,
        engine: nn.Module | None = None,
    ) -> M3LossOutput:
        """The loss of the whole batch, with its gradients accumulated into the model's parameters.

        q_ids/q_mask (B, Tq), p_ids/p_mask (B·G, Tp) as for `M3TrainingLoss.forward`; `engine` is this module or
        its DDP wrapper (chunks are re-run through it).
        """
        engine = self if engine is None else engine
        batches = {"q": (q_ids, q_mask), "p": (p_ids, p_mask)}
        plans: dict[str, list[tuple[Tensor, int, RandState]]] = {}
        cached: dict[str, dict[str, Tensor]] = {}
        with torch.no_grad():  # 1. embed without graph
            for role, (ids, mask) in batches.items():
                plans[role], outs = [], []
                for idx, width in sub_batch_slices(mask, self.chunk_size):
                    plans[role].append((idx, width, RandState(ids.device)))
                    outs.append(self(ids[idx, :width], mask[idx, :width]))
                cached[role] = _assemble(plans[role], outs, ids.shape)
        with torch.enable_grad():  # 2. loss and the outputs' gradients
            leaves = {role: {k: v.requires_grad_() for k, v in out.items()} for role, out in cached.items()}
            out = self.loss.compute_loss_from_embeddings(leaves["q"], leaves["p"], q_ids, q_mask, p_ids, p_mask,
                                                         step=step)
            flat = [(role, k, v) for role, d in leaves.items() for k, v in d.items()]
            grads = torch.autograd.grad(out.loss, [v for _, _, v in flat], allow_unused=True)
        grad = {(role, k): g for (role, k, _), g in zip(flat, grads)}
        jobs = [(role, idx, width, state) for role, plan in plans.items() for idx, width, state in plan]
        for n, (role, idx, width, state) in enumerate(jobs):  # 3. re-run each chunk with graph, back-propagate
            ids, mask = batches[role]
            last = n == len(jobs) - 1
            sync = contextlib.nullcontext() if last or not hasattr(engine, "no_sync") else engine.no_sync()
            with sync:
                with state.replay():
                    chunk = engine(ids[idx, :width], mask[idx, :width])
                pairs = [(chunk[k], _slice(g, idx, width, k)) for k in chunk if (g := grad.get((role, k))) is not None]
                if pairs:
                    torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        return M3LossOutput(out.loss.detach(), out.parts)


def _assemble(plan: list[tuple[Tensor, int, RandState]], outs: list[dict[str, Tensor]], shape: torch.Size
              ) -> dict[str, Tensor]:
    """Chunk outputs back in input order, token axes zero-padded to the batch's width T."""
    n, width = shape
    full: dict[str, Tensor] = {}
    for (idx, _, _), out in zip(plan, outs):
        for key, value in out.items():
            if key not in full:
                size = (n, width - TOKEN_AXIS_OFFSET[key], *value.shape[2:]) if key in TOKEN_AXIS_OFFSET else (
                    n, *value.shape[1:])
                full[key] = value.new_zeros(size)
            if key in TOKEN_AXIS_OFFSET:
                full[key][idx, : value.shape[1]] = value
            else:
                full[key][idx] = value
    return full


def _slice(grad: Tensor, idx: Tensor, width: int, key: str) -> Tensor:
    """The rows of a chunk in a full-batch output gradient, cut to the chunk's own token width."""
    rows = grad[idx]
    return rows[:, : width - TOKEN_AXIS_OFFSET[key]] if key in TOKEN_AXIS_OFFSET else rows
