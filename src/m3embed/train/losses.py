"""Training losses: BGE-M3's per-mode InfoNCE, ensemble, self- and teacher-score distillation.

The math lives in pure functions on score tensors; `M3TrainingLoss` holds the model and its `LossConfig`,
encodes a batch (in checkpointed sub-batches if asked) and calls them. Conventions, as in FlagEmbedding's M3 code:

* a batch holds B queries and B·G passages, group-major: query b's group is passages [b·G, (b+1)·G),
  its positive first, so the target column of query b is b·G;
* raw scores are divided by the temperature before any softmax;
* s_inter = s_dense + 0.3·s_sparse + s_colbert;  L = (L_dense + L_inter + 0.1·L_sparse + L_colbert) / 4;
  L' = (L'_dense + 0.1·L'_sparse + L'_colbert) / 3 against softmax(s_inter) (detached);  final = (L + L') / 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from m3embed.model import encoder_layers, run_layers
from m3embed.modes import MODES
from m3embed.scoring import dense_scores  # q (B, h), p (N, h) -> (B, N), as at inference
from m3embed.train import distributed
from m3embed.train.config import LossConfig

ENSEMBLE_WEIGHTS = {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}  # s_inter (FlagEmbedding, hard-coded)
LOSS_WEIGHTS = {"dense": 1.0, "sparse": 0.1, "colbert": 1.0}  # λ in L and L' (FlagEmbedding)


# ---- scores (raw, before the temperature) ----


def sparse_scores(q: Tensor, p: Tensor) -> Tensor:
    """q (B, V), p (N, V) max-pooled lexical vectors -> (B, N) lexical matching scores."""
    return q @ p.T


def colbert_score_matrix(q: Tensor, p: Tensor, q_mask: Tensor, p_mask: Tensor | None = None) -> Tensor:
    """Late interaction of every query with every passage: (1/n_q) Σ_i max_j q_i·p_j.

    (`m3embed.scoring.colbert_scores` scores one query against a list of documents, in NumPy.)

    Args:
        q: (B, Tq, h) query vectors (CLS dropped), zero rows on padding.
        p: (N, Tp, h) passage vectors, zero rows on padding.
        q_mask: (B, Tq) 1 on real query vectors; n_q = q_mask.sum(1).
        p_mask: (N, Tp) 1 on real passage vectors. None keeps the zero pad rows in the max, as FlagEmbedding
            does (they floor each max at 0, so the score depends on batch padding); pass it to follow the
            formula exactly.

    Returns:
        (B, N) scores.
    """
    sim = torch.einsum("bih,njh->binj", q, p)  # (B, Tq, N, Tp)
    if p_mask is not None:
        sim = sim.masked_fill_(~p_mask.bool()[None, None], float("-inf"))  # einsum's backward needs q, p only
    best = sim.amax(-1)  # (B, Tq, N)
    q_mask = q_mask.to(best.dtype)
    return (best * q_mask[:, :, None]).sum(1) / q_mask.sum(1, keepdim=True)


def ensemble_scores(scores: Mapping[str, Tensor]) -> Tensor:
    """s_inter = Σ over the given modes of ENSEMBLE_WEIGHTS[mode] · s_mode."""
    return sum(ENSEMBLE_WEIGHTS[m] * scores[m] for m in MODES if m in scores)


# ---- losses on logits (scores / temperature) ----


def group_targets(n_queries: int, group_size: int, device: torch.device | None = None) -> Tensor:
    """(B,) column of each query's positive: b·G."""
    return torch.arange(n_queries, device=device) * group_size


def local_group(logits: Tensor, group_size: int) -> Tensor:
    """(B, B·G) in-batch logits -> (B, G): each query against its own group only."""
    b = logits.shape[0]
    return logits.view(b, b, group_size)[torch.arange(b), torch.arange(b)]


def info_nce(logits: Tensor, group_size: int) -> Tensor:
    """Cross-entropy of (B, B·G) logits against the positive columns b·G (in-batch negatives included)."""
    return F.cross_entropy(logits, group_targets(logits.shape[0], group_size, logits.device))


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """-mean_b Σ_j target[b, j] · log_softmax(logits)[b, j] (FlagEmbedding's "kl_div" distill loss)."""
    return -(torch.log_softmax(logits, dim=-1) * target_probs).sum(-1).mean()


def m3_kd_loss(logits: Tensor, teacher_probs: Tensor, group_size: int) -> Tensor:
    """M3's teacher-score loss: Σ_i mean_b T[b, i] · CE(logits_b, b·G + i), masking columns b·G + 0..i-1.

    Args:
        logits: (B, B·G) in-batch logits.
        teacher_probs: (B, G) softmax of the teacher scores of each query's group.
        group_size: G.
    """
    b = logits.shape[0]
    rows, targets = torch.arange(b, device=logits.device), group_targets(b, group_size, logits.device)
    masked = torch.zeros_like(logits, dtype=torch.bool)
    loss = logits.new_zeros(())
    for i in range(group_size):
        ce = F.cross_entropy(logits.masked_fill(masked, float("-inf")), targets + i, reduction="none")  # (B,)
        loss = loss + (teacher_probs[:, i] * ce).mean()
        # out of place: masked_fill keeps `masked` for its backward
        masked = masked.index_put((rows, targets + i), torch.tensor(True, device=logits.device))
    return loss


def mode_loss(
    logits: Tensor, group_size: int, teacher_probs: Tensor | None = None, kd_loss: str = "m3_kd_loss"
) -> Tensor:
    """One mode's loss on (B, B·G) logits: InfoNCE, or teacher-score distillation when teacher_probs is given.

    kd_loss "m3_kd_loss" replaces InfoNCE; "kl_div" adds soft-CE over each query's own group to InfoNCE.
    """
    if teacher_probs is None:
        return info_nce(logits, group_size)
    if kd_loss == "m3_kd_loss":
        return m3_kd_loss(logits, teacher_probs, group_size)
    if kd_loss == "kl_div":
        return soft_cross_entropy(local_group(logits, group_size), teacher_probs) + info_nce(
            logits, group_size
        )
    raise ValueError(f"kd_loss={kd_loss!r}; choose 'm3_kd_loss' or 'kl_div'")


@dataclass
class M3LossOutput:
    """The loss to back-propagate and its detached parts for logging (keys: modes, "inter", "distill")."""

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


def m3_loss(
    scores: Mapping[str, Tensor],
    group_size: int,
    temperature: float,
    *,
    dense_global: Tensor | None = None,
    teacher_probs: Tensor | None = None,
    teacher_probs_global: Tensor | None = None,
    self_distill: bool = False,
    kd_loss: str = "m3_kd_loss",
) -> M3LossOutput:
    """BGE-M3's unified loss from raw in-batch scores.

    With one mode the loss is that mode's InfoNCE. With several: L = (Σ λ_m L_m + L_inter) / (n + 1), which is
    (L_dense + L_inter + 0.1·L_sparse + L_colbert) / 4 for all three modes, and with self-distillation
    (L + Σ λ_m L'_m / n) / 2.

    Args:
        scores: raw (B, B·G) scores per mode ("dense", "sparse", "colbert"), this process's batch only.
        group_size: G.
        temperature: τ; every score is divided by it.
        dense_global: raw (W·B, W·B·G) dense scores of all gathered queries and passages; when given, L_dense
            uses it (cross-device negatives) while the ensemble and self-distillation stay local.
        teacher_probs: (B, G) softmax of the teacher scores, or None.
        teacher_probs_global: (W·B, G) gathered teacher_probs, needed with dense_global and m3_kd_loss.
        self_distill: add the self-distillation term (only with several modes).
        kd_loss: "m3_kd_loss" or "kl_div" (used only with teacher_probs).
    """
    modes = [m for m in MODES if m in scores]
    if not modes:
        raise ValueError(f"scores must hold at least one of {MODES}, got {sorted(scores)}")
    logits = {m: scores[m] / temperature for m in modes}
    parts: dict[str, Tensor] = {}
    for m in modes:
        if m == "dense" and dense_global is not None:
            parts[m] = _global_dense_loss(
                dense_global / temperature,
                logits[m],
                group_size,
                teacher_probs,
                teacher_probs_global,
                kd_loss,
            )
        else:
            parts[m] = mode_loss(logits[m], group_size, teacher_probs, kd_loss)
    if len(modes) == 1:
        return M3LossOutput(parts[modes[0]], {k: v.detach() for k, v in parts.items()})

    inter = ensemble_scores(logits)  # (B, B·G), already divided by τ
    parts["inter"] = mode_loss(inter, group_size, teacher_probs, kd_loss)
    loss = (sum(LOSS_WEIGHTS[m] * parts[m] for m in modes) + parts["inter"]) / (len(modes) + 1)
    if self_distill:
        target = torch.softmax(inter.detach(), dim=-1)
        distill = {m: soft_cross_entropy(logits[m], target) for m in modes}
        parts.update({f"distill_{m}": v for m, v in distill.items()})
        parts["distill"] = sum(LOSS_WEIGHTS[m] * distill[m] for m in modes) / len(modes)
        loss = (loss + parts["distill"]) / 2
    return M3LossOutput(loss, {k: v.detach() for k, v in parts.items()})


def _global_dense_loss(
    global_logits: Tensor,
    local_logits: Tensor,
    group_size: int,
    teacher_probs: Tensor | None,
    teacher_probs_global: Tensor | None,
    kd_loss: str,
) -> Tensor:
    """Cross-device dense loss as FlagEmbedding: kl_div distils local groups, m3_kd_loss gathered ones."""
    if teacher_probs is None:
        return info_nce(global_logits, group_size)
    if kd_loss == "kl_div":
        return soft_cross_entropy(local_group(local_logits, group_size), teacher_probs) + info_nce(
            global_logits, group_size
        )
    if teacher_probs_global is None:
        raise ValueError("teacher_probs_global is needed with dense_global and kd_loss='m3_kd_loss'")
    return m3_kd_loss(global_logits, teacher_probs_global, group_size)


# ---- the module: model + batch -> loss ----


class M3TrainingLoss(nn.Module):
    """Holds an M3Model and its `LossConfig`; `forward` encodes a tokenised batch and returns `m3_loss` of it.

    Sub-batches: with `config.sub_batch_size`, texts are encoded that many at a time (sorted by length, each
    chunk padded to its own longest text) under `torch.utils.checkpoint`, so only the output vectors of each
    chunk are kept; the backward pass re-runs one chunk at a time. Gradients are those of the full batch.

    Args:
        model: an `m3embed.M3Model` (any module with its forward / sparse_embedding contract).
        config: the loss settings (modes, group size, temperature, self-distillation, kd loss, cross-device
            negatives, sub-batch size, bf16 autocast); `LossConfig.from_train_config` takes a run's.
        state_cache: for a frozen encoder, a callable (ids, mask) -> (B, T, H) backbone states (e.g.
            `EncoderStateCache`); the model then runs only its pooling and heads on them (with
            `config.train_layers`: the states below the top layers, which run first).
    """

    def __init__(
        self,
        model: nn.Module,
        config: LossConfig = LossConfig(),
        state_cache: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.state_cache = state_cache

    @property
    def modes(self) -> tuple[str, ...]:
        return self.config.modes

    def forward(
        self,
        q_ids: Tensor,
        q_mask: Tensor,
        p_ids: Tensor,
        p_mask: Tensor,
        teacher_scores: Tensor | None = None,
        step: int = 0,
    ) -> M3LossOutput:
        """q_ids/q_mask (B, Tq), p_ids/p_mask (B·G, Tp), teacher_scores raw (B, G) or None."""
        q = self.encode(q_ids, q_mask)
        p = self.encode(p_ids, p_mask)
        return self.compute_loss_from_embeddings(q, p, q_ids, q_mask, p_ids, p_mask, teacher_scores, step)

    def encode(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Model outputs for a padded batch, in float32; sub-batched and checkpointed when configured."""
        size = self.config.sub_batch_size
        if size is None or ids.shape[0] <= size:
            return self._encode_chunk(ids, mask)
        recompute = torch.is_grad_enabled() and any(p.requires_grad for p in self.model.backbone.parameters())
        chunks, inverse = run_sub_batches(self._encode_chunk, (ids, mask), size, recompute)
        widths = {
            "token_weights": ids.shape[1],
            "colbert": ids.shape[1] - 1,
        }  # dense (n, h) has no token axis
        return {
            key: torch.cat([_pad_tokens(c[key], widths[key]) if key in widths else c[key] for c in chunks])[
                inverse
            ]
            for key in chunks[0]
        }

    def _encode_chunk(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        if self.state_cache is not None:  # frozen (lower) encoder: cached states, then the trained top layers
            h = self.state_cache(ids, mask)
            if self.config.train_layers:
                start = len(encoder_layers(self.model.backbone)) - self.config.train_layers
                with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
                    h = run_layers(self.model.backbone, h, mask, start)
            return self.model.heads_forward(h, mask, modes=self.modes)
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            out = self.model(ids, mask, modes=self.modes)
        return {k: v.float() for k, v in out.items()}

    def scores(
        self,
        q: Mapping[str, Tensor],
        p: Mapping[str, Tensor],
        q_ids: Tensor,
        q_mask: Tensor,
        p_ids: Tensor,
        p_mask: Tensor,
    ) -> dict[str, Tensor]:
        """Raw (B, B·G) in-batch scores of every trained mode, from `encode` outputs."""
        scores: dict[str, Tensor] = {}
        if "dense" in self.modes:
            scores["dense"] = dense_scores(q["dense"], p["dense"])
        if "sparse" in self.modes:
            scores["sparse"] = sparse_scores(
                self.model.sparse_embedding(q_ids, q["token_weights"]),
                self.model.sparse_embedding(p_ids, p["token_weights"]),
            )
        if "colbert" in self.modes:
            scores["colbert"] = colbert_score_matrix(q["colbert"], p["colbert"], q_mask[:, 1:], p_mask[:, 1:])
        return scores

    def compute_loss_from_embeddings(
        self,
        q: Mapping[str, Tensor],
        p: Mapping[str, Tensor],
        q_ids: Tensor,
        q_mask: Tensor,
        p_ids: Tensor,
        p_mask: Tensor,
        teacher_scores: Tensor | None = None,
        step: int = 0,
    ) -> M3LossOutput:
        """Scores of every trained mode on this process's batch (+ gathered dense), then `m3_loss`."""
        scores = self.scores(q, p, q_ids, q_mask, p_ids, p_mask)
        teacher = None if teacher_scores is None else torch.softmax(teacher_scores.float(), dim=-1).detach()
        dense_global = teacher_global = None
        if "dense" in self.modes and self.config.negatives_cross_device and distributed.get_world_size() > 1:
            dense_global = dense_scores(
                distributed.all_gather_with_grad(q["dense"]), distributed.all_gather_with_grad(p["dense"])
            )
            if teacher is not None:
                teacher_global = distributed.all_gather(teacher)
        cfg = self.config
        return m3_loss(
            scores,
            cfg.train_group_size,
            cfg.temperature,
            dense_global=dense_global,
            teacher_probs=teacher,
            teacher_probs_global=teacher_global,
            self_distill=cfg.self_distill and step > cfg.self_distill_start_step,
            kd_loss=cfg.kd_loss,
        )


def run_sub_batches(fn: Callable[..., Any], tensors: tuple[Tensor, ...], size: int, recompute: bool
                    ) -> tuple[list[Any], Tensor]:
    """`fn` over chunks of `size` rows, longest first, each cut to its own longest row (paper §3.5).

    `tensors` are (n, T) padded batches whose second one is the attention mask. With `recompute` each chunk
    runs under `torch.utils.checkpoint`: only its outputs are kept, and the backward pass re-runs one chunk at
    a time (gradients equal the full batch's). Returns the chunk outputs and the permutation that puts their
    concatenation back in input order.
    """
    chunks = []
    for idx, width in sub_batch_slices(tensors[1], size):
        part = tuple(t[idx, :width] for t in tensors)
        if recompute:
            chunks.append(checkpoint(fn, *part, use_reentrant=False))
        else:  # nothing to train below the outputs: no activations are kept anyway, so no need to re-run
            chunks.append(fn(*part))
    return chunks, torch.argsort(torch.cat([idx for idx, _ in sub_batch_slices(tensors[1], size)]))


def sub_batch_slices(mask: Tensor, size: int) -> list[tuple[Tensor, int]]:
    """(row indices, width) of each chunk of `size` rows of a (n, T) attention mask: longest rows first, each
    chunk as wide as its longest row."""
    lengths = mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    return [(idx, int(lengths[idx].max())) for idx in order.split(size)]


def _pad_tokens(t: Tensor, width: int) -> Tensor:
    """Zero-pad the token axis (dim 1) of (n, w) or (n, w, h) to `width`."""
    pad = width - t.shape[1]
    if pad <= 0:
        return t
    return F.pad(t, (0, pad) if t.dim() == 2 else (0, 0, 0, pad))
