"""Batched inference: texts → token-budget batches → one forward pass each → an M3Output in input order.

It runs any `Forward` (M3Model is one) and knows nothing else of the model: `model.py` builds on this module,
checks the arguments of its public calls and passes them here checked. `run_batches` is the loop itself, shared
with the cross-encoder (`m3embed.rerank`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from m3embed._progress import Progress
from m3embed.tokenize import budget_batches, insert_cls, pad, tokenize, warn_truncated
from m3embed.types import M3Output, lexical_csr

MCLS_EVERY = 256  # the paper's interval between inserted CLS tokens (Appendix B.2)
AUTO_PROGRESS_TOKENS = 200_000  # show a progress bar by default above this many tokens


class Forward(Protocol):
    """What `encode` needs of a model: its tokenizer, sizes, and the forward pass for checked arguments."""

    tokenizer: Any
    hidden_size: int
    vocab_size: int
    special_ids: tuple[int, ...]  # dropped from lexical weights
    training: bool

    @property
    def device(self) -> torch.device: ...

    def train(self, mode: bool = True) -> Any: ...

    def infer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[str],
              cls_positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]: ...


def default_batch_tokens(device: torch.device, hidden_size: int = 1024) -> int:
    """Padded tokens per forward pass: 8,192 on CPU (cache-friendly); on a GPU, chosen from its free memory.

    The GPU budget gives each token 64 bytes per hidden unit (one layer's activations, the float32 heads, the
    attention mask at long lengths) within a quarter of the free memory, between 16,384 and 262,144 tokens: an
    estimate, not measured on a GPU here (about 262,144 on an 80 GB card, 90,000 on 24 GB for bge-m3).
    """
    if device.type != "cuda":
        return 8_192
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(262_144, max(16_384, free // 4 // (64 * hidden_size))))


def encode(model: Forward, texts: list[str], modes: tuple[str, ...], max_length: int, *,
           batch_tokens: int | None = None, max_batch_size: int = 256, mcls: bool | int = False,
           progress: bool | None = None) -> M3Output:
    """Encode texts with one forward pass per batch, computing only the requested modes.

    Args:
        model: the model (an M3Model), holding a head for every mode.
        texts: the texts, checked (`m3embed.tokenize.check_texts`).
        modes: representations, checked (`m3embed.modes.check_modes`).
        max_length: truncation length in tokens, specials included, within the model's limit.
        batch_tokens: budget of padded tokens per forward pass (texts are sorted longest first).
        max_batch_size: cap on texts per forward pass.
        mcls: multiple-CLS dense pooling for long texts (paper §3.4): True inserts a CLS every 256 tokens,
            an int sets the interval; the dense output is the mean of all CLS states.
        progress: show a progress bar; None shows one only for long runs.

    Texts longer than `max_length` are cut to it, with one `TruncationWarning` per call counting them.
    """
    every = (MCLS_EVERY if mcls is True else int(mcls)) if mcls else 0
    ids = tokenize(model.tokenizer, texts, max_length)
    warn_truncated(model.tokenizer, texts, ids, max_length, getattr(model, "max_length", None))
    cls_positions: list[list[int]] | None = None
    if every:
        pairs = [insert_cls(x, model.tokenizer.cls_token_id, every, max_length) for x in ids]
        ids, cls_positions = [p[0] for p in pairs], [p[1] for p in pairs]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    device = model.device

    n, h = len(texts), model.hidden_size
    dense = np.zeros((n, h), dtype=np.float32) if "dense" in modes else None
    colbert: list[np.ndarray] | None = [None] * n if "colbert" in modes else None  # type: ignore[list-item]
    lexical: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    special = torch.tensor(model.special_ids, dtype=torch.long)

    def step(batch: np.ndarray) -> None:
        input_ids, mask = pad([ids[i] for i in batch], model.tokenizer.pad_token_id)
        positions = None
        if cls_positions is not None:
            k = max(len(cls_positions[i]) for i in batch)
            positions = torch.tensor([cls_positions[i] + [-1] * (k - len(cls_positions[i])) for i in batch])
            positions = positions.to(device)
        out = model.infer(input_ids.to(device), mask.to(device), modes, positions)
        if dense is not None:
            dense[batch] = out["dense"].cpu().numpy()
        if "sparse" in modes:
            w = out["token_weights"].cpu()  # (B, T)
            keep = (w > 0) & ~torch.isin(input_ids, special)
            rows, cols = keep.nonzero(as_tuple=True)
            lexical.append((batch[rows.numpy()], input_ids[rows, cols].numpy(), w[rows, cols].numpy()))
        if colbert is not None:
            vecs = out["colbert"].cpu().numpy()  # (B, T-1, H)
            for j, i in enumerate(batch):
                rows_i = vecs[j, : lengths[i] - 1]
                if cls_positions is not None and len(cls_positions[i]) > 1:  # drop inserted CLS rows
                    rows_i = np.delete(rows_i, np.array(cls_positions[i][1:]) - 1, axis=0)
                colbert[i] = np.ascontiguousarray(rows_i, dtype=np.float32)

    run_batches(model, lengths, batch_tokens or default_batch_tokens(device, model.hidden_size), max_batch_size,
                step, progress=progress, label="encoding tokens")
    n_tokens = lengths if cls_positions is None else lengths - np.array([len(p) - 1 for p in cls_positions])
    sparse = None
    if "sparse" in modes:
        triples = [np.concatenate(p) for p in zip(*lexical)] if lexical else [np.zeros(0, np.int64)] * 3
        sparse = lexical_csr(*triples, n, model.vocab_size)
    return M3Output(dense=dense, sparse=sparse, colbert=colbert, n_tokens=n_tokens)


def run_batches(model: Any, lengths: np.ndarray, batch_tokens: int, max_batch_size: int,
                step: Callable[[np.ndarray], None], *, progress: bool | None, label: str) -> None:
    """Call `step(indices)` for each token-budget batch of the sequences of `lengths`, longest first, with
    `model` in eval mode under inference mode (its training flag restored after), advancing one progress bar
    by each batch's tokens (`progress` None: shown from AUTO_PROGRESS_TOKENS tokens on)."""
    total = int(lengths.sum())
    show = progress if progress is not None else total >= AUTO_PROGRESS_TOKENS
    was_training = model.training
    model.train(False)
    try:
        with torch.inference_mode(), Progress(show, label, total) as bar:
            for batch in budget_batches(lengths, batch_tokens, max_batch_size):
                step(batch)
                bar.advance(int(lengths[batch].sum()))
    finally:
        model.train(was_training)
