"""Encoder-state cache for frozen-encoder training: run the backbone once per distinct text, reuse its states.

With the whole encoder frozen (FlagEmbedding's fix_encoder, i.e. heads-only training) the backbone's output for
a text never changes, yet an uncached loop recomputes it every time the text is sampled: on CPU that is nearly
all of a step. `EncoderStateCache` maps a token-id sequence (what the tokenizer made of a text at its max length)
to the backbone's last hidden states on its real tokens, computed once in eval mode (no dropout) under no_grad
and stored compactly (float16 by default). Each step then only runs pooling and the heads on cached states.
When only the top encoder layers train, the cache holds the states below them (`stop_layer`) and a step runs
those layers and the heads.

The cache fills lazily: the sequences of a batch that are not cached yet are encoded together, longest first,
in token-budget batches, so an epoch costs one backbone pass over the texts it actually samples.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from m3embed.model import backbone_states
from m3embed.tokenize import budget_batches, pad


class EncoderStateCache:
    """Hidden states of a frozen backbone (its last, or those below its trained layers), one per distinct text.

    Args:
        backbone: the (frozen) Hugging Face encoder; called as backbone(input_ids=..., attention_mask=...).
        pad_id: the tokenizer's padding id, used when batching sequences to encode.
        dtype: storage dtype of the states (float16 halves memory; float32 keeps them exact).
        autocast_dtype: run the backbone under this autocast dtype (e.g. torch.bfloat16); None = as loaded.
        batch_tokens: padded tokens per backbone call when filling the cache.
        stop_layer: cache the states after this many encoder layers (the frozen ones); None = the last.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pad_id: int,
        dtype: torch.dtype = torch.float16,
        autocast_dtype: torch.dtype | None = None,
        batch_tokens: int = 16_384,
        stop_layer: int | None = None,
    ) -> None:
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype={dtype}: choose torch.float16, torch.bfloat16 or torch.float32")
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens={batch_tokens} must be >= 1")
        self.backbone = backbone
        self.pad_id = pad_id
        self.dtype = dtype
        self.autocast_dtype = autocast_dtype
        self.batch_tokens = batch_tokens
        self.stop_layer = stop_layer
        self._states: dict[tuple[int, ...], Tensor] = {}  # token ids -> (n_tokens, H) states
        self.fill_seconds = 0.0  # wall time spent running the backbone
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._states)

    @property
    def n_tokens(self) -> int:
        """Tokens whose states are stored."""
        return sum(s.shape[0] for s in self._states.values())

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T) right-padded ids and mask -> (B, T, H) float32 states, zeros on padding (no gradient)."""
        lengths = attention_mask.sum(1).tolist()
        keys = [tuple(row[:n].tolist()) for row, n in zip(input_ids.cpu(), lengths)]
        missing = list(dict.fromkeys(k for k in keys if k not in self._states))  # unique, in order
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            self._fill(missing, input_ids.device)
        hidden = self._states[keys[0]].shape[-1]
        out = torch.zeros(len(keys), input_ids.shape[1], hidden, dtype=torch.float32, device=input_ids.device)
        for i, (key, n) in enumerate(zip(keys, lengths)):
            out[i, :n] = self._states[key].to(out.device, torch.float32)
        return out

    def _fill(self, keys: list[tuple[int, ...]], device: torch.device) -> None:
        """Encode `keys` (token-id sequences) with the backbone in eval mode and store their states."""
        start = time.perf_counter()
        lengths = torch.tensor([len(k) for k in keys])
        was_training = self.backbone.training
        self.backbone.eval()  # no dropout: a cached state is the encoder's deterministic output
        enabled = self.autocast_dtype is not None
        try:
            with (
                torch.no_grad(),  # not inference_mode: cached tensors later feed modules that need grads
                torch.autocast(device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=enabled),
            ):
                for batch in budget_batches(lengths.numpy(), self.batch_tokens, max_batch_size=256):
                    ids, mask = pad([list(keys[i]) for i in batch], self.pad_id)
                    h = backbone_states(self.backbone, ids.to(device), mask.to(device), self.stop_layer)
                    h = h.to("cpu", self.dtype)  # (b, T, H)
                    for j, i in enumerate(batch):
                        self._states[keys[i]] = h[j, : len(keys[i])].clone()
        finally:
            self.backbone.train(was_training)
        self.fill_seconds += time.perf_counter() - start

    def stats(self) -> dict[str, float]:
        """Cached texts, tokens, hit rate and backbone seconds so far (for the training log)."""
        total = self.hits + self.misses
        return {
            "cache_texts": len(self),
            "cache_hit_rate": self.hits / total if total else 0.0,
            "cache_fill_s": self.fill_seconds,
        }
