"""NumpyEncoder: an M3 checkpoint's float32 CPU forward pass in NumPy, for commands that encode a few queries and exit.

`m3embed search` spends seconds importing torch and transformers before it encodes a 10-token query; this
module imports neither. It reads a BERT or XLM-R checkpoint (safetensors weights, `tokenizer.json`, the head
`.pt` files) and computes the outputs `M3Model.encode_queries` gives in float32 on CPU, within 1e-5 (tests).
Its `fingerprint` is the one an M3Model loaded from the same files computed (`identity.known_fingerprint`),
so an index refuses it until M3Model has loaded that checkpoint once (as `m3embed index build` does).
`NumpyEncoder.load` returns None for whatever it does not cover; the caller then loads M3Model.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy.special import erf

from m3embed import checkpoint, identity
from m3embed.modes import MODES, check_modes
from m3embed.scoring import normalize_lexical
from m3embed.sources import resolve
from m3embed.tokenize import check_texts, fold_case, resolve_max_length, tokenize, warn_truncated
from m3embed.types import M3Output, lexical_csr

ARCHITECTURES = ("bert", "xlm-roberta")  # post-LayerNorm encoders with learned absolute positions
_XLMR_POSITIONS = ("xlm-roberta",)  # positions count from pad_token_id + 1
_ACTIVATIONS = {
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))),
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu_new": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
}
_ACTIVATIONS["gelu_pytorch_tanh"] = _ACTIVATIONS["gelu_new"]


class _Tokenizer:
    """The `tokenizers` form of a checkpoint's tokenizer.json, called as m3embed.tokenize calls a HF tokenizer."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        special = [t for t in json.loads(path.read_text(encoding="utf-8")).get("added_tokens", []) if t["special"]]
        self.all_special_ids = sorted(t["id"] for t in special)
        names = {t["content"] for t in special}
        self.cls_token_id = next((self._tok.token_to_id(n) for n in ("[CLS]", "<s>") if n in names), None)

    def __call__(self, texts: list[str], *, truncation: bool, max_length: int, add_special_tokens: bool = True,
                 **_: object) -> dict[str, list[list[int]]]:
        self._tok.enable_truncation(max_length) if truncation else self._tok.no_truncation()
        return {"input_ids": [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]}


class NumpyEncoder:
    """The query side of an M3Model (`encode_queries`, `fingerprint`, `available_modes`) in NumPy float32."""

    def __init__(self, directory: Path, name: str, config: SimpleNamespace, weights: dict[str, np.ndarray],
                 heads: dict[str, tuple[np.ndarray, np.ndarray]], tokenizer: _Tokenizer,
                 settings: checkpoint.M3Config, fingerprint: str) -> None:
        self.name, self.fingerprint = name, fingerprint
        self.config, self._w, self._heads, self.tokenizer = config, weights, heads, tokenizer
        self.pooling, self.query_prefix, self.case_fold = settings.pooling, settings.query_prefix, settings.case_fold
        self.query_sparse_norm = settings.query_sparse_norm
        self.hidden_size: int = config.hidden_size
        self.vocab_size: int = config.vocab_size
        self.max_length = checkpoint.position_limit(config)
        self.query_max_length = resolve_max_length(settings.query_max_length, self.max_length,
                                                   name="query_max_length")
        self.special_ids = tuple(sorted(set(tokenizer.all_special_ids) | {config.pad_token_id}))
        self._act = _ACTIVATIONS[config.hidden_act]

    @classmethod
    def load(cls, name_or_path: str, fingerprint: str | None = None) -> NumpyEncoder | None:
        """The encoder of a local or cached checkpoint, or None where this module does not cover it: another
        architecture, weights not in safetensors, no tokenizer.json, no fingerprint known for its files, or
        (given `fingerprint`, an index's) another one; the weights are read only once all of that holds."""
        try:
            directory = resolve(name_or_path, None)
        except Exception:  # a hub id not yet downloaded, a shipped model not yet assembled: M3Model's business
            return None
        files = checkpoint.weight_files(directory) if (directory / "config.json").is_file() else []
        if not files or any(f.suffix != ".safetensors" for f in files) or not (directory / "tokenizer.json").is_file():
            return None
        config = SimpleNamespace(**json.loads((directory / "config.json").read_text()))
        if (getattr(config, "model_type", None) not in ARCHITECTURES
                or getattr(config, "position_embedding_type", "absolute") != "absolute"
                or getattr(config, "hidden_act", None) not in _ACTIVATIONS
                or getattr(config, "is_decoder", False)):
            return None
        settings = checkpoint.read_config(directory)
        known = identity.known_fingerprint(directory, settings.pooling,
                                           (settings.query_prefix, settings.passage_prefix), settings.case_fold)
        if known is None or fingerprint not in (None, known):
            return None
        try:
            heads = {mode: _read_head(directory / f) for mode, f in checkpoint.HEAD_FILES.items()
                     if (directory / f).is_file()}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError):
            return None  # M3Model reads it, or says what is wrong with it
        return cls(directory, str(name_or_path), config, _read_weights(files), heads,
                   _Tokenizer(directory / "tokenizer.json"), settings, known)

    def available_modes(self) -> tuple[str, ...]:
        return tuple(m for m in MODES if m == "dense" or m in self._heads)

    def encode_queries(self, texts: Sequence[str] | str, modes: Sequence[str] | str = ("dense",), *,
                       max_length: int | None = None) -> M3Output:
        """`M3Model.encode_queries` in float32 on CPU: the query prefix, the case folding, truncation at
        `query_max_length`, the lexical weights' `query_sparse_norm`."""
        modes = check_modes(modes)
        missing = [m for m in modes if m not in self.available_modes()]
        if missing:
            raise ValueError(f"this model has no {missing[0]} head ({checkpoint.HEAD_FILES[missing[0]]})")
        texts = fold_case([self.query_prefix + t for t in check_texts(texts)], self.case_fold)
        length = resolve_max_length(max_length, self.max_length, self.query_max_length)
        ids = tokenize(self.tokenizer, texts, length)
        warn_truncated(self.tokenizer, texts, ids, length, self.max_length)
        n_tokens = np.array([len(x) for x in ids], dtype=np.int64)
        input_ids = np.full((len(ids), int(n_tokens.max())), self.config.pad_token_id, dtype=np.int64)
        mask = np.zeros(input_ids.shape, dtype=np.float32)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)], mask[i, : len(x)] = x, 1.0
        h = self._backbone(input_ids, mask)  # (B, T, H)
        out = M3Output(n_tokens=n_tokens)
        if "dense" in modes:
            pooled = h[:, 0] if self.pooling == "cls" else (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out.dense = _normalize(pooled)
        if "sparse" in modes:
            w, b = self._heads["sparse"]
            weights = np.maximum(h @ w.T + b, 0.0)[..., 0] * mask
            keep = (weights > 0) & ~np.isin(input_ids, self.special_ids)
            rows, cols = keep.nonzero()
            out.sparse = normalize_lexical(lexical_csr(rows, input_ids[rows, cols], weights[rows, cols], len(ids),
                                                       self.vocab_size), self.query_sparse_norm)
        if "colbert" in modes:
            w, b = self._heads["colbert"]
            vecs = _normalize((h[:, 1:] @ w.T + b) * mask[:, 1:, None])
            out.colbert = [np.ascontiguousarray(vecs[i, : n - 1]) for i, n in enumerate(n_tokens)]
        return out

    def _backbone(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        cfg, w = self.config, self._w
        if cfg.model_type in _XLMR_POSITIONS:
            positions = (np.cumsum(mask, axis=1) * mask).astype(np.int64) + cfg.pad_token_id
        else:
            positions = np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)
        x = (w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][positions]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        heads = cfg.num_attention_heads
        key_bias = np.where(mask > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
        bsz, t, hidden = x.shape
        d = hidden // heads
        for i in range(cfg.num_hidden_layers):
            p = f"encoder.layer.{i}."
            q, k, v = (self._linear(x, p + f"attention.self.{n}").reshape(bsz, t, heads, d).transpose(0, 2, 1, 3)
                       for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(d)) + key_bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            ctx = (scores / scores.sum(-1, keepdims=True)) @ v
            ctx = ctx.transpose(0, 2, 1, 3).reshape(bsz, t, hidden)
            x = self._norm(x + self._linear(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            inner = self._act(self._linear(x, p + "intermediate.dense")).astype(np.float32)
            x = self._norm(x + self._linear(inner, p + "output.dense"), p + "output.LayerNorm")
        return x

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self._w[name + ".weight"].T + self._w[name + ".bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        eps = np.float32(self.config.layer_norm_eps)
        return (x - mean) / np.sqrt(var + eps) * self._w[name + ".weight"] + self._w[name + ".bias"]


def _normalize(x: np.ndarray) -> np.ndarray:
    """L2 rows as torch.nn.functional.normalize (norms clamped at 1e-12)."""
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _read_weights(files: list[Path]) -> dict[str, np.ndarray]:
    """Every tensor of the safetensors files as float32, named without the model's prefix ("bert.", "roberta.")."""
    from safetensors import safe_open

    weights: dict[str, np.ndarray] = {}
    for f in files:
        with safe_open(str(f), framework="numpy") as st:
            for key in st.keys():
                weights[key] = st.get_tensor(key)
    anchor = next(k for k in weights if k.endswith("embeddings.word_embeddings.weight"))
    prefix = anchor[: -len("embeddings.word_embeddings.weight")]
    return {k[len(prefix):]: v.astype(np.float32, copy=False) for k, v in weights.items() if k.startswith(prefix)}


_STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
             "BFloat16Storage": None}


class _HeadUnpickler(pickle.Unpickler):
    """Reads the state dict of an nn.Linear saved by torch.save (a zip of a pickle and raw storages), building
    NumPy arrays; any other global in the pickle is refused, as torch.load(weights_only=True) does."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self._archive, self._prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and _STORAGES.get(name) is not None:
            return _STORAGES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a saved head")

    def persistent_load(self, pid):
        _, dtype, key, _location, numel = pid
        raw = self._archive.read(f"{self._prefix}data/{key}")
        return np.frombuffer(raw, dtype=dtype, count=numel)


def _rebuild_tensor(storage, offset, size, stride, *_):
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * item for s in stride]).copy()


def _read_head(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) float32 of a head file (`checkpoint.save_head`'s format)."""
    with zipfile.ZipFile(path) as archive:
        pkl = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        state = _HeadUnpickler(archive, pkl[: -len("data.pkl")]).load()
    return state["weight"].astype(np.float32), state["bias"].astype(np.float32)
