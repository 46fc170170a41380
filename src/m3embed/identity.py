"""A model's identity as an index records it: the fingerprint, the encoder weight digest and its cache.

The fingerprint (FINGERPRINT_VERSION 2) is 16 hex digits of sha256 over the encoder config, the pooling, the
prompts (when set), every encoder weight and the head weights, by value (float32, by name), whatever the file
format, dtype or device. Hashing an encoder's weights takes seconds for bge-m3, so the digest of the weight files
a model was loaded from is cached in `<cache>/weight-digests.json` under a key of their path, size, mtime and
inode (`weights_key`): loading the same checkpoint again costs a few stat calls. A model built in memory, or
changed since it was loaded (training, a weight edited in place), is hashed from its tensors instead, which gives
the digest of saving it and loading the saved copy. The same cache keeps the fingerprint of each checkpoint an
M3Model computed while holding its files unchanged (`checkpoint_key`), so that `m3embed.numpy_encoder` knows
a model's identity without torch.

Imports no torch: `m3embed.index` reads FINGERPRINT_VERSION from here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3embed.checkpoint import HEAD_FILES, weight_files
from m3embed.sources import cache_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

FINGERPRINT_VERSION = 2  # 1: config + heads (indexes of format 1); 2: also every encoder weight
DIGEST_SCHEME = "m3embed-weights-v1"  # how `tensors_digest` hashes; part of the digest cache key
DIGEST_CACHE = "weight-digests.json"  # in cache_dir(): {key: digest}
DIGEST_CACHE_ENTRIES = 512  # the oldest entries beyond this are dropped


def fingerprint(model: Any) -> str:
    """The identity of what shapes an M3Model's outputs (FINGERPRINT_VERSION 2), see the module docstring."""
    digest = hashlib.sha256(_config_json(model.backbone.config))
    digest.update(model.pooling.encode())
    if model.query_prefix or model.passage_prefix:  # prompts change the outputs; none keeps older fingerprints
        digest.update(json.dumps([model.query_prefix, model.passage_prefix]).encode())
    if model.case_fold != "none":  # folding changes the outputs; none keeps older fingerprints
        digest.update(f"case_fold:{model.case_fold}".encode())
    digest.update(b"encoder" + model.encoder_digest.digest(model.backbone).encode())
    for mode, head in (("colbert", model.colbert_linear), ("sparse", model.sparse_linear)):
        digest.update(mode.encode())
        if head is not None:
            digest.update(tensors_digest(head.state_dict()).encode())
    value = digest.hexdigest()[:16]
    directory = model.encoder_digest.checkpoint(model.backbone, (model.colbert_linear, model.sparse_linear))
    if directory is not None:  # as loaded from its files: remember it for models that do not load torch
        model.encoder_digest.remember(directory, model.pooling, (model.query_prefix, model.passage_prefix),
                                      model.case_fold, value)
    return value


def checkpoint_key(directory: Path, pooling: str, prompts: tuple[str, str], case_fold: str) -> str | None:
    """A key naming a checkpoint's files as M3Model reads them (the encoder's, as `weights_key`, and the head
    files) with the pooling, prompts and case folding in use; None if a file is unreadable."""
    parts: list[object] = ["m3embed-fingerprint-v1", weights_key(directory), pooling, list(prompts), case_fold]
    if parts[1] is None:
        return None
    for name in HEAD_FILES.values():
        try:
            st = (directory / name).resolve().stat()
            parts.append([name, st.st_size, st.st_mtime_ns, st.st_ino])
        except FileNotFoundError:
            parts.append([name, None])
        except OSError:
            return None
    return "fingerprint:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def known_fingerprint(directory: Path, pooling: str, prompts: tuple[str, str], case_fold: str) -> str | None:
    """The fingerprint an M3Model loaded from these files (unchanged) computed, or None if none has."""
    key = checkpoint_key(directory, pooling, prompts, case_fold)
    return cached_digest(key) if key is not None else None


def legacy_fingerprint(model: Any) -> str:
    """FINGERPRINT_VERSION 1 (config, pooling and head weights only): indexes of format 1 recorded it."""
    digest = hashlib.sha256(_config_json(model.backbone.config))
    digest.update(model.pooling.encode())
    for mode, head in (("colbert", model.colbert_linear), ("sparse", model.sparse_linear)):
        digest.update(mode.encode())
        if head is not None:
            for t in (head.weight, head.bias):
                digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _config_json(config: Any) -> bytes:
    config = {k: v for k, v in config.to_dict().items()
              if not k.startswith("_") and k not in ("dtype", "torch_dtype", "transformers_version")}
    return json.dumps(config, sort_keys=True, default=str).encode()


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict: each tensor's name, shape and float32 values, in name order."""
    import numpy as np

    digest = hashlib.sha256(DIGEST_SCHEME.encode())
    for name in sorted(state):
        t = state[name].detach()
        digest.update(f"{name}:{tuple(t.shape)};".encode())
        if t.is_floating_point():
            t = t.float()
        arr = t.cpu().contiguous().numpy()
        digest.update(str(arr.dtype).encode())
        digest.update(arr.reshape(-1).view(np.uint8) if arr.size else b"")
    return digest.hexdigest()


class EncoderDigest:
    """The digest of one model's encoder weights: of the files it was loaded from while its tensors are as
    loaded (through the cache), else of its tensors; memoised per tensor versions."""

    def __init__(self) -> None:
        self._source: tuple[Path, str | None, tuple] | None = None  # (directory, weights_key, versions)
        self._heads: tuple | None = None  # versions of the heads read from the directory's files
        self._memo: tuple[tuple, str] | None = None  # (versions, digest)
        self._remembered: tuple[str, str] | None = None  # (checkpoint_key, fingerprint) last stored

    def loaded(self, backbone: nn.Module, directory: Path, key: str | None,
               heads: tuple[nn.Module | None, ...] | None = None) -> None:
        """Record that `backbone` holds the weights of `directory`'s files, named by `key` (taken before they
        were read; None if unreadable); a key that no longer names the files means they changed meanwhile.
        `heads` are the (colbert, sparse) heads when each was read from its file or is absent with its file."""
        if key is not None and key != weights_key(directory):
            key = None  # the files changed while being read: hash what was loaded, cache nothing
        self._source = (directory, key, _versions(backbone))
        self._heads = None if heads is None else _head_versions(heads)

    def remember(self, directory: Path, pooling: str, prompts: tuple[str, str], case_fold: str,
                 fingerprint: str) -> None:
        """Store `fingerprint` as the checkpoint's (`known_fingerprint`), once per model and settings."""
        key = checkpoint_key(directory, pooling, prompts, case_fold)
        if key is not None and self._remembered != (key, fingerprint):
            if cached_digest(key) != fingerprint:
                store_digest(key, fingerprint)
            self._remembered = (key, fingerprint)

    def checkpoint(self, backbone: nn.Module, heads: tuple[nn.Module | None, ...]) -> Path | None:
        """The directory whose files the model holds, while its encoder and heads are unchanged since read."""
        source = self._source
        if (source is None or source[1] is None or self._heads is None or source[2] != _versions(backbone)
                or self._heads != _head_versions(heads)):
            return None
        return source[0]

    def digest(self, backbone: nn.Module) -> str:
        versions = _versions(backbone)
        if self._memo is not None and self._memo[0] == versions:
            return self._memo[1]
        source = self._source
        if source is not None and source[2] == versions:  # unchanged since loaded from these files
            digest = _files_digest(backbone, source[0], source[1])
        else:
            digest = tensors_digest(backbone.state_dict())
        self._memo = (versions, digest)
        return digest


def _versions(backbone: nn.Module) -> tuple:
    """Which tensors the encoder holds and how often each was changed in place (torch's version counter,
    bumped by optimizer steps, load_state_dict and in-place edits; not by .to(device or dtype))."""
    return tuple((name, id(t), _version(t)) for name, t in backbone.state_dict(keep_vars=True).items())


def _head_versions(heads: tuple[nn.Module | None, ...]) -> tuple:
    return tuple(None if h is None else _versions(h) for h in heads)


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference tensor (made under torch.inference_mode) has no version counter
        return None


def _files_digest(backbone: nn.Module, directory: Path, key: str | None) -> str:
    """The encoder digest of the weight files loaded (named by `key`, taken when they were read): from the
    cache, else from their float32 values."""
    import torch

    found = cached_digest(key) if key else None
    if found:
        return found
    if all(t.dtype == torch.float32 for t in backbone.state_dict().values() if t.is_floating_point()):
        digest = tensors_digest(backbone.state_dict())
    elif key is not None and key == weights_key(directory):
        # loaded in a lower precision from files still as they were: hash their values as float32
        from m3embed.checkpoint import load_backbone

        full = load_backbone(directory, torch.float32)
        if key != weights_key(directory):
            key = None
        digest = tensors_digest(full.state_dict())
        del full
    else:  # the files changed since: only the loaded tensors are known (a lower precision's digest)
        key = None
        digest = tensors_digest(backbone.state_dict())
    if key:
        store_digest(key, digest)
    return digest


# ---- the digest cache, keyed by file identity ----


def weights_key(directory: Path) -> str | None:
    """A key naming the exact files the encoder is loaded from (config.json and the weights): real path, size,
    mtime (ns) and inode of each (None if one is unreadable). Rewriting a file changes its mtime, so the key
    changes with any change of content."""
    parts: list[object] = [DIGEST_SCHEME]
    try:
        for f in [directory / "config.json", *weight_files(directory)]:
            real = f.resolve()  # hub snapshots are links into a blob store
            st = real.stat()
            parts.append([str(real), st.st_size, st.st_mtime_ns, st.st_ino])
    except (OSError, ValueError, KeyError):  # unreadable, or a damaged shard index (loading will say so)
        return None
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _cache_file() -> Path:
    return cache_dir() / DIGEST_CACHE


def cached_digest(key: str) -> str | None:
    """The digest stored under `key` in the digest cache, or None."""
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def store_digest(key: str, digest: str) -> None:
    """Remember a digest under `key` (best effort: an unwritable cache only costs recomputing it)."""
    path = _cache_file()
    try:
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data.pop(key, None)
        data[key] = digest  # newest last
        data = dict(list(data.items())[-DIGEST_CACHE_ENTRIES:])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=0) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
