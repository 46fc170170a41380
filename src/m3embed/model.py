"""M3Model: a Hugging Face encoder with BGE-M3's dense pooling, sparse head and ColBERT head."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m3embed import checkpoint
from m3embed.encode import encode
from m3embed.modes import MODES, SCORE_WEIGHTS, check_modes
from m3embed.onednn import use_onednn
from m3embed.quantize import quantize_int8
from m3embed.scoring import compute_score
from m3embed.tokenize import check_pairs, check_texts, resolve_max_length
from m3embed.types import M3Output

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INT8 = "int8"  # int8 encoder linear layers over a float32 model (CPU only); see m3embed.quantize
FINGERPRINT_VERSION = 2  # 1: config + heads (indexes of format 1); 2: also every encoder weight
_DIGEST_SCHEME = "m3embed-weights-v1"  # how `tensors_digest` hashes; part of the digest cache key


def resolve_device_dtype(device: str | torch.device | None, dtype: torch.dtype | str
                         ) -> tuple[torch.device, torch.dtype]:
    """The device (None: cuda when available) and a checked dtype for loading a model on it.

    float16 on CPU is an error; bfloat16 on a CPU without native bf16 matmul warns that it will be slow.
    "int8" loads float32 weights (quantized afterwards, CPU only).
    """
    int8 = dtype == INT8
    if not isinstance(dtype, torch.dtype):
        if dtype not in DTYPES and not int8:
            raise ValueError(f"dtype must be one of {', '.join([*DTYPES, INT8])}, got {dtype!r}")
        dtype = torch.float32 if int8 else DTYPES[dtype]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if int8 and device.type != "cpu":
        raise ValueError(f"dtype='int8' runs on CPU only, got device={str(device)!r}; on a GPU use bfloat16")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("float16 is for GPUs; on CPU use dtype='bfloat16' (or float32)")
    if dtype == torch.bfloat16 and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn("this CPU has no native bfloat16 matmul (AVX512-BF16/AMX): bfloat16 will be slower "
                      "than float32", stacklevel=3)
    return device, dtype


def _load_backbone(directory: Path, dtype: torch.dtype) -> nn.Module:
    """The encoder without its pooler; float32 memory-maps the file, other dtypes convert while reading it."""
    from transformers import MODEL_MAPPING, AutoConfig, AutoModel

    if dtype == torch.float32:
        return AutoModel.from_pretrained(directory, dtype=dtype, add_pooling_layer=False)
    config = AutoConfig.from_pretrained(directory)
    state = checkpoint.read_weights(directory, dtype)  # peak = the converted weights, not float32 + converted
    return MODEL_MAPPING[type(config)].from_pretrained(None, config=config, state_dict=state, dtype=dtype,
                                                       add_pooling_layer=False)


class M3Model(nn.Module):
    """One encoder pass → dense, sparse (lexical) and ColBERT representations.

    Build it with `M3Model.from_pretrained(...)`. `forward` is the differentiable training view (torch);
    `encode`, `encode_queries`, `encode_corpus` and `compute_score` are the inference API (numpy).
    """

    fingerprint_version = FINGERPRINT_VERSION

    def __init__(self, backbone: nn.Module, tokenizer, colbert_linear: nn.Linear | None,
                 sparse_linear: nn.Linear | None, pooling: str = "cls", name: str = "", query_prefix: str = "",
                 passage_prefix: str = "") -> None:
        super().__init__()
        if pooling not in checkpoint.POOLINGS:
            raise ValueError(f"pooling must be one of {checkpoint.POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.colbert_linear = colbert_linear
        self.sparse_linear = sparse_linear
        self.pooling = pooling
        self.name = name
        # prepended by encode_queries / encode_corpus (and so by index, search, eval, mine, train)
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        cfg = backbone.config
        self.hidden_size: int = cfg.hidden_size
        self.vocab_size: int = cfg.vocab_size
        self.max_length: int = checkpoint.position_limit(cfg)
        # default truncation of queries and passages (capped at max_length); an explicit max_length overrides
        self.query_max_length: int = self.max_length
        self.passage_max_length: int = self.max_length
        # dropped from lexical weights, as FlagEmbedding does: cls, eos, pad and unk where the tokenizer has them
        self.special_ids: tuple[int, ...] = tuple(sorted({
            i for i in (tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                        tokenizer.unk_token_id) if i is not None
        }))
        # where the encoder weights were loaded from (set by from_pretrained): (directory, key of the weight
        # files when read, tensor versions just after)
        self._weights_source: tuple[Path, str | None, tuple] | None = None
        self._weights_memo: tuple[tuple, str] | None = None  # (tensor versions, digest)

    # ---- loading and saving ----

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | str = torch.float32, modes: Sequence[str] | str = MODES,
                        pooling: str | None = None, new_heads: bool = False, revision: str | None = None,
                        query_prefix: str | None = None, passage_prefix: str | None = None) -> M3Model:
        """Load a checkpoint in the BGE-M3 layout from a local directory or a hub id.

        Args:
            name_or_path: local directory, or a hub id such as "BAAI/bge-m3".
            device: "cpu", "cuda", "cuda:1"...; None picks cuda when available.
            dtype: float32 (exact), bfloat16 (CPU with AVX512-BF16, GPU), float16 (GPU only) or "int8" (CPU:
                int8 encoder linear layers, calibrated at load; `m3embed.quantize`).
            modes: the outputs this model must be able to produce; a head file they need must exist.
            pooling: override the dense pooling ("cls" or "mean") recorded beside the checkpoint.
            new_heads: create missing heads with random weights (to fine-tune a plain encoder into M3).
            query_prefix, passage_prefix: override the prompts recorded in m3embed.json (e.g. "query: " for
                an e5 checkpoint that has none).
        """
        from transformers import AutoTokenizer

        modes = check_modes(modes)
        directory = checkpoint.resolve(name_or_path, revision)
        checkpoint.check_layout(directory, () if new_heads else modes)
        int8 = dtype == INT8
        device, dtype = resolve_device_dtype(device, dtype)
        config = checkpoint.read_config(directory)
        prompts = {"query_prefix": config.query_prefix if query_prefix is None else query_prefix,
                   "passage_prefix": config.passage_prefix if passage_prefix is None else passage_prefix}
        checkpoint.M3Config(pooling=config.pooling, **prompts)  # checks the overrides
        tokenizer = AutoTokenizer.from_pretrained(directory)
        key = checkpoint.weights_key(directory, _DIGEST_SCHEME)  # the files as they are when read
        with quiet_hf():  # the unused pooler weights are expected; don't report them
            backbone = _load_backbone(directory, dtype)
        hidden = backbone.config.hidden_size
        heads = {}
        for mode, (file, out_features) in {"colbert": (checkpoint.HEAD_FILES["colbert"], hidden),
                                          "sparse": (checkpoint.HEAD_FILES["sparse"], 1)}.items():
            path = directory / file
            if path.is_file():
                heads[mode] = checkpoint.load_head(path, hidden, out_features)
            elif new_heads:
                heads[mode] = nn.Linear(hidden, out_features)
            else:
                heads[mode] = None
        model = cls(backbone, tokenizer, heads["colbert"], heads["sparse"], pooling=pooling or config.pooling,
                    name=str(name_or_path), **prompts)
        use_onednn(model)
        model = model.to(device).eval()
        if int8:
            quantize_int8(backbone, lambda texts: model.encode(texts, max_length=min(128, model.max_length)))
        if key is not None and key != checkpoint.weights_key(directory, _DIGEST_SCHEME):
            key = None  # the files changed while being read: hash what was loaded, cache nothing
        model._weights_source = (directory, key, model._backbone_versions())
        return model

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the official layout (weights, tokenizer, head .pt files) plus m3embed.json.

        Hugging Face's progress bars ("Writing model shards") stay off, as they do when loading.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with quiet_hf():
            self.backbone.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        for mode, head in (("colbert", self.colbert_linear), ("sparse", self.sparse_linear)):
            if head is not None:
                checkpoint.save_head(head, directory / checkpoint.HEAD_FILES[mode])
        checkpoint.M3Config(pooling=self.pooling, query_prefix=self.query_prefix,
                            passage_prefix=self.passage_prefix).save(directory)
        return directory

    @property
    def fingerprint(self) -> str:
        """Identity of what shapes the outputs: 16 hex digits of sha256 over the encoder config, the pooling,
        every encoder weight and the head weights (their float32 values by name, whatever the file format,
        dtype or device).

        The encoder's digest is computed once per weight files and cached by their path, size and mtime (see
        `m3embed.checkpoint.weights_key`), so loading the same checkpoint again costs a few stat calls. A model
        built in memory, or changed since it was loaded (training, a weight edited in place), is hashed from
        its tensors instead, which gives the same digest as saving it and loading the saved copy.
        """
        digest = hashlib.sha256(self._config_json())
        digest.update(self.pooling.encode())
        if self.query_prefix or self.passage_prefix:  # prompts change the outputs; none keeps older fingerprints
            digest.update(json.dumps([self.query_prefix, self.passage_prefix]).encode())
        digest.update(b"encoder" + self._backbone_digest().encode())
        for mode, head in (("colbert", self.colbert_linear), ("sparse", self.sparse_linear)):
            digest.update(mode.encode())
            if head is not None:
                digest.update(tensors_digest(head.state_dict()).encode())
        return digest.hexdigest()[:16]

    @property
    def legacy_fingerprint(self) -> str:
        """The fingerprint of m3embed before FINGERPRINT_VERSION 2 (config, pooling and head weights only):
        indexes of format 1 recorded it, and are still checked with it."""
        digest = hashlib.sha256(self._config_json())
        digest.update(self.pooling.encode())
        for mode, head in (("colbert", self.colbert_linear), ("sparse", self.sparse_linear)):
            digest.update(mode.encode())
            if head is not None:
                for t in (head.weight, head.bias):
                    digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def _config_json(self) -> bytes:
        config = {k: v for k, v in self.backbone.config.to_dict().items()
                  if not k.startswith("_") and k not in ("dtype", "torch_dtype", "transformers_version")}
        return json.dumps(config, sort_keys=True, default=str).encode()

    def _backbone_versions(self) -> tuple:
        """Which tensors the encoder holds and how often each was changed in place (torch's version counter,
        bumped by optimizer steps, load_state_dict and in-place edits; not by .to(device or dtype))."""
        return tuple((name, id(t), _version(t)) for name, t in self.backbone.state_dict(keep_vars=True).items())

    def _backbone_digest(self) -> str:
        versions = self._backbone_versions()
        if self._weights_memo is not None and self._weights_memo[0] == versions:
            return self._weights_memo[1]
        source = self._weights_source
        if source is not None and source[2] == versions:  # unchanged since loaded from these files
            digest = self._files_digest(source[0], source[1])
        else:
            digest = tensors_digest(self.backbone.state_dict())
        self._weights_memo = (versions, digest)
        return digest

    def _files_digest(self, directory: Path, key: str | None) -> str:
        """The encoder digest of the weight files loaded (named by `key`, taken when they were read): from the
        cache, else from the float32 values."""
        found = checkpoint.cached_digest(key) if key else None
        if found:
            return found
        if all(t.dtype == torch.float32 for t in self.backbone.state_dict().values() if t.is_floating_point()):
            digest = tensors_digest(self.backbone.state_dict())
        elif key is not None and key == checkpoint.weights_key(directory, _DIGEST_SCHEME):
            # loaded in a lower precision from files still as they were: hash their values as float32
            from transformers import AutoModel

            with quiet_hf():
                full = AutoModel.from_pretrained(directory, dtype=torch.float32, add_pooling_layer=False)
            if key != checkpoint.weights_key(directory, _DIGEST_SCHEME):
                key = None
            digest = tensors_digest(full.state_dict())
            del full
        else:  # the files changed since: only the loaded tensors are known (a lower precision's digest)
            key = None
            digest = tensors_digest(self.backbone.state_dict())
        if key:
            checkpoint.store_digest(key, digest)
        return digest

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def available_modes(self) -> tuple[str, ...]:
        """The representations this model can produce: dense, and each mode whose head is loaded."""
        heads = {"colbert": self.colbert_linear, "sparse": self.sparse_linear}
        return tuple(m for m in MODES if m == "dense" or heads[m] is not None)

    def check_heads(self, modes: Sequence[str]) -> None:
        """Raise a ValueError naming the head file when a requested mode's head is not loaded."""
        have = self.available_modes()
        for mode in modes:
            if mode not in have:
                raise ValueError(f"this model has no {mode} head ({checkpoint.HEAD_FILES[mode]} was not loaded); "
                                 f"request modes={have!r}")

    # ---- the forward pass ----

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[str] = MODES,
                cls_positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Differentiable outputs for a padded batch.

        Args:
            input_ids, attention_mask: (B, T) right-padded.
            modes: any of "dense", "sparse", "colbert".
            cls_positions: (B, K) positions of CLS tokens to average for the dense output (MCLS), -1 = none.

        Returns:
            "dense": (B, h) L2-normalised; "token_weights": (B, T) relu(sparse_linear(H)), 0 on padding;
            "colbert": (B, T-1, h) L2-normalised colbert_linear(H[:, 1:]), zero rows on padding.
        """
        self.check_heads(modes)
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return self.heads_forward(h, attention_mask, modes, cls_positions)

    def heads_forward(self, h: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[str] = MODES,
                      cls_positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`forward` from the backbone's last hidden states h (B, T, H) on: pooling and heads (same outputs)."""
        self.check_heads(modes)
        h = h.float()  # heads and pooling run in float32 whatever the backbone dtype
        mask = attention_mask.to(h.dtype)  # (B, T)
        out: dict[str, torch.Tensor] = {}
        if "dense" in modes:
            out["dense"] = F.normalize(self._pool(h, mask, cls_positions), dim=-1)  # (B, H)
        if "sparse" in modes:
            out["token_weights"] = torch.relu(self.sparse_linear(h)).squeeze(-1) * mask  # (B, T)
        if "colbert" in modes:
            c = self.colbert_linear(h[:, 1:]) * mask[:, 1:, None]  # (B, T-1, H)
            out["colbert"] = F.normalize(c, dim=-1)
        return out

    def _pool(self, h: torch.Tensor, mask: torch.Tensor, cls_positions: torch.Tensor | None) -> torch.Tensor:
        if cls_positions is not None:  # MCLS: mean of the CLS states
            valid = (cls_positions >= 0).to(h.dtype)  # (B, K)
            states = torch.gather(h, 1, cls_positions.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1]))
            return (states * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        if self.pooling == "cls":
            return h[:, 0]
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    def sparse_embedding(self, input_ids: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
        """(B, vocab) lexical vectors: max weight per token id, special ids zeroed (differentiable)."""
        emb = token_weights.new_zeros(input_ids.shape[0], self.vocab_size)
        emb = emb.scatter_reduce(1, input_ids, token_weights, reduce="amax", include_self=True)
        keep = torch.ones(self.vocab_size, dtype=emb.dtype, device=emb.device)
        keep[list(self.special_ids)] = 0
        return emb * keep

    # ---- inference API (numpy); the batching lives in encode.py ----

    def encode(self, texts: Sequence[str] | str, modes: Sequence[str] | str = ("dense",), *,
               max_length: int | None = None, batch_tokens: int | None = None, max_batch_size: int = 256,
               mcls: bool | int = False, progress: bool | None = None) -> M3Output:
        """Encode texts into an M3Output (input order kept); the options are those of `m3embed.encode.encode`.

        `max_length` defaults to the model's position limit; a larger explicit value is an error.
        """
        return encode(self, texts, modes, max_length=max_length, batch_tokens=batch_tokens,
                      max_batch_size=max_batch_size, mcls=mcls, progress=progress)

    def with_prefix(self, texts: Sequence[str] | str, role: str) -> list[str]:
        """The texts with the model's prefix for `role` ("query" or "passage") prepended, checked as `encode` does."""
        if role not in ("query", "passage"):
            raise ValueError(f"role must be 'query' or 'passage', got {role!r}")
        prefix = self.query_prefix if role == "query" else self.passage_prefix
        return [prefix + t for t in check_texts(texts)]

    def encode_queries(self, texts: Sequence[str] | str, modes: Sequence[str] | str = ("dense",), *,
                       max_length: int | None = None, batch_tokens: int | None = None, max_batch_size: int = 256,
                       mcls: bool | int = False, progress: bool | None = None) -> M3Output:
        """`encode` of `query_prefix + text`, truncating at `max_length`, by default `self.query_max_length`."""
        return encode(self, self.with_prefix(texts, "query"), modes, batch_tokens=batch_tokens,
                      max_batch_size=max_batch_size, mcls=mcls,
                      max_length=resolve_max_length(max_length, self.max_length, self.query_max_length),
                      progress=progress)

    def encode_corpus(self, texts: Sequence[str] | str, modes: Sequence[str] | str = ("dense",), *,
                      max_length: int | None = None, batch_tokens: int | None = None, max_batch_size: int = 256,
                      mcls: bool | int = False, progress: bool | None = None) -> M3Output:
        """`encode` of `passage_prefix + text`, truncating at `max_length`, by default `self.passage_max_length`."""
        return encode(self, self.with_prefix(texts, "passage"), modes, batch_tokens=batch_tokens,
                      max_batch_size=max_batch_size, mcls=mcls,
                      max_length=resolve_max_length(max_length, self.max_length, self.passage_max_length),
                      progress=progress)

    def compute_score(self, pairs: Sequence[tuple[str, str]], weights: Sequence[float] = SCORE_WEIGHTS, *,
                      query_max_length: int | None = None, passage_max_length: int | None = None,
                      batch_tokens: int | None = None, progress: bool | None = None) -> dict[str, list[float]]:
        """FlagEmbedding's `compute_score`: per pair dense, sparse, colbert and the weighted hybrids.

        `weights` (dense, sparse, colbert) default to `m3embed.modes.SCORE_WEIGHTS` (1, 1, 1), as FlagEmbedding.
        A model without some head scores the modes it has (see `m3embed.scoring.compute_score`).
        """
        pairs = check_pairs(pairs)
        modes = self.available_modes()
        q = self.encode_queries([p[0] for p in pairs], modes=modes, max_length=query_max_length,
                                batch_tokens=batch_tokens, progress=progress)
        p = self.encode_corpus([p[1] for p in pairs], modes=modes, max_length=passage_max_length,
                               batch_tokens=batch_tokens, progress=progress)
        return compute_score(q, p, weights)

    def convert_id_to_token(self, weights: dict[str, float] | M3Output) -> list[dict[str, float]] | dict[str, float]:
        """Map lexical weights keyed by token id to the decoded token strings."""
        if isinstance(weights, M3Output):
            return [self.convert_id_to_token(w) for w in weights.lexical_weights]
        return {self.tokenizer.decode([int(k)]): v for k, v in weights.items()}



@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Hugging Face's warnings and progress bars off (loading and saving report through m3embed instead)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference tensor (made under torch.inference_mode) has no version counter
        return None


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict: each tensor's name, shape and float32 values, in name order."""
    digest = hashlib.sha256(_DIGEST_SCHEME.encode())
    for name in sorted(state):
        t = state[name].detach()
        digest.update(f"{name}:{tuple(t.shape)};".encode())
        if t.is_floating_point():
            t = t.float()
        arr = t.cpu().contiguous().numpy()
        digest.update(str(arr.dtype).encode())
        digest.update(arr.reshape(-1).view(np.uint8) if arr.size else b"")
    return digest.hexdigest()
