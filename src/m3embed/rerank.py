"""Cross-encoder rerankers in the bge-reranker layout: (query, passage) pairs → one relevance logit each.

A reranker checkpoint is a Hugging Face `*ForSequenceClassification` model with one label (BAAI/bge-reranker-base,
-large, -v2-m3: XLM-R; MiniLM-style: BERT). Scores equal FlagEmbedding 1.4.2's `FlagReranker.compute_score`:
the raw logit, or its sigmoid with `normalize=True`; pairs are built and truncated as it builds them
(`m3embed.tokenize.tokenize_pairs`). Unlike FlagReranker, pairs run in token-budget batches sorted by length,
with no probe pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from m3embed import checkpoint
from m3embed.checkpoint import quiet_hf
from m3embed.encode import default_batch_tokens, run_batches
from m3embed.sources import resolve
from m3embed.tokenize import check_pairs, check_texts, pad, resolve_max_length, tokenize_pairs

RERANK_MAX_LENGTH = 512  # FlagReranker's default max_length (pair tokens, special tokens included)


class Reranker(nn.Module):
    """A cross-encoder: `compute_score` for inference (FlagReranker's numbers), `forward` for training.

    Build it with `Reranker.from_pretrained(...)`.

    Attributes:
        model: the `*ForSequenceClassification` model; tokenizer: its tokenizer; name: what it was loaded as.
        max_length: the model's position limit in tokens (the pair's special tokens included).
        pair_max_length: the default truncation of a pair (FlagReranker's 512, capped at max_length); set it to
            change every call's default (an explicit max_length above the limit is an error).
    """

    def __init__(self, model: nn.Module, tokenizer, name: str = "") -> None:
        super().__init__()
        labels = getattr(model.config, "num_labels", None)
        if labels != 1:
            raise ValueError(f"a reranker scores a pair with one logit; this model has {labels} labels")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_length: int = checkpoint.position_limit(model.config)
        self.pair_max_length: int = min(RERANK_MAX_LENGTH, self.max_length)
        self.pair_specials: int = tokenizer.num_special_tokens_to_add(pair=True)  # <s> q </s></s> p </s>: 4

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | str = torch.float32, revision: str | None = None,
                        new_head: bool = False) -> Reranker:
        """Load a reranker from a local directory, a shipped name ("minilm-reranker") or a hub id.

        Args:
            name_or_path: e.g. "BAAI/bge-reranker-v2-m3" or a directory holding config.json, weights, tokenizer.
            device: "cpu", "cuda", ...; None picks cuda when available.
            dtype: float32 (exact), bfloat16 (CPU with AVX512-BF16, GPU) or float16 (GPU only).
            new_head: accept a plain encoder and give it a random one-label classification head (to train it).
        """
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        directory = resolve(name_or_path, revision)
        checkpoint.check_layout(directory, ())
        device, dtype = checkpoint.resolve_device_dtype(device, dtype)
        config = AutoConfig.from_pretrained(directory)
        archs = list(getattr(config, "architectures", None) or [])
        is_reranker = any(a.endswith("ForSequenceClassification") for a in archs) and config.num_labels == 1
        if not is_reranker and not new_head:
            raise ValueError(
                f"{name_or_path} is not a cross-encoder reranker: its config.json declares "
                f"{archs or 'no architecture'}"
                f" with {config.num_labels} labels; a reranker is a *ForSequenceClassification model with one "
                "label (e.g. BAAI/bge-reranker-v2-m3); for an embedding model use M3Model")
        tokenizer = AutoTokenizer.from_pretrained(directory)
        with quiet_hf():
            model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=dtype, num_labels=1)
        return cls(model, tokenizer, name=str(name_or_path)).to(device).eval()

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the Hugging Face layout (config, model.safetensors, tokenizer): loadable by FlagReranker."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with quiet_hf():
            self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        return directory

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) right-padded pairs → (B,) float32 logits (differentiable)."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits  # (B, 1)
        return logits.view(-1).float()

    def lengths(self, max_length: int | None = None, query_max_length: int | None = None) -> tuple[int, int]:
        """(max_length, query_max_length) by the length policy, with FlagReranker's defaults.

        max_length defaults to `pair_max_length` (512 capped at the model's limit, unless set); query_max_length to
        3/4 of it, capped so that the query and the pair's special tokens fit. Explicit values that cannot fit
        are errors.
        """
        max_length = resolve_max_length(max_length, self.max_length, self.pair_max_length)
        room = max_length - self.pair_specials  # the query's share when the passage gets nothing
        if room < 1:
            raise ValueError(f"max_length={max_length} leaves no room for text: a pair takes "
                             f"{self.pair_specials} special tokens; pass at least {self.pair_specials + 2}")
        if query_max_length is None:
            return max_length, min(max_length * 3 // 4, room)
        if not 1 <= query_max_length <= room:
            raise ValueError(f"query_max_length={query_max_length} must be between 1 and {room}: max_length="
                             f"{max_length} holds the query, {self.pair_specials} special tokens and the passage")
        return max_length, int(query_max_length)

    @torch.inference_mode()
    def compute_score(self, pairs: Sequence[tuple[str, str]] | tuple[str, str], normalize: bool = False, *,
                      max_length: int | None = None, query_max_length: int | None = None,
                      batch_tokens: int | None = None, max_batch_size: int = 256,
                      progress: bool | None = None) -> list[float]:
        """Relevance scores of (query, passage) pairs, in input order: FlagReranker.compute_score's numbers.

        Args:
            pairs: (query, passage) pairs, or one pair (a list of one score comes back).
            normalize: apply a sigmoid (scores in (0, 1)) instead of returning the raw logits.
            max_length: pair tokens, special tokens included (default `pair_max_length`: 512 capped at the limit).
            query_max_length: query tokens (default 3/4 of max_length); the passage is cut to fit.
            batch_tokens: budget of padded tokens per forward pass (pairs are sorted longest first).
            max_batch_size: cap on pairs per forward pass.
            progress: show a progress bar; None shows one only for long runs.
        """
        pairs = check_pairs(pairs)
        max_length, query_max_length = self.lengths(max_length, query_max_length)
        ids, types = tokenize_pairs(self.tokenizer, pairs, max_length, query_max_length)
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        device = self.device
        scores = np.zeros(len(pairs), dtype=np.float32)

        def step(batch: np.ndarray) -> None:
            input_ids, mask = pad([ids[i] for i in batch], self.tokenizer.pad_token_id)
            type_ids = None if types is None else pad([types[i] for i in batch], 0)[0].to(device)
            scores[batch] = self(input_ids.to(device), mask.to(device), type_ids).cpu().numpy()

        run_batches(self, lengths, batch_tokens or default_batch_tokens(device), max_batch_size, step,
                    progress=progress, label="reranking tokens")
        if normalize:
            scores = 1.0 / (1.0 + np.exp(-scores.astype(np.float64)))
        return [float(x) for x in scores]

    def rank(self, queries: Sequence[str], passages: Sequence[Sequence[str]], top_n: int | None = None,
             normalize: bool = False, *, max_length: int | None = None, query_max_length: int | None = None,
             batch_tokens: int | None = None, max_batch_size: int = 256,
             progress: bool | None = None) -> list[list[tuple[int, float]]]:
        """For each query, its passages as (index in its list, score), best first (ties keep list order).

        All pairs are scored in one `compute_score` call (shared batches), with its options; `top_n` keeps that
        many per query (default all).
        """
        queries = check_texts(queries)
        if len(passages) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(passages)} passage lists; give one list per query")
        lists = [check_texts(list(p)) for p in passages]
        pairs = [(q, p) for q, ps in zip(queries, lists) for p in ps]
        scores = self.compute_score(pairs, normalize=normalize, max_length=max_length,
                                    query_max_length=query_max_length, batch_tokens=batch_tokens,
                                    max_batch_size=max_batch_size, progress=progress) if pairs else []
        out, start = [], 0
        for ps in lists:
            out.append(best_first(scores[start : start + len(ps)], top_n))
            start += len(ps)
        return out


def best_first(scores: Sequence[float], top_n: int | None = None) -> list[tuple[int, float]]:
    """(index, score) best first, ties in input order (a stable sort), the first `top_n` (default all): the
    order `Reranker.rank` gives, for scores computed elsewhere (the server scores pairs chunk by chunk)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [(i, scores[i]) for i in order[:top_n]]
