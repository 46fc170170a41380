"""The BGE-M3 checkpoint directory: where it is, what it must hold, and our small config file.

Layout (BAAI/bge-m3 and every checkpoint fine-tuned from it):
    config.json                         Hugging Face encoder config (XLM-R or BERT)
    model.safetensors | pytorch_model.bin (or a sharded index of either)
    tokenizer files                     tokenizer.json, sentencepiece.bpe.model or vocab.txt
    colbert_linear.pt                   state dict of nn.Linear(hidden, hidden)
    sparse_linear.pt                    state dict of nn.Linear(hidden, 1)
    m3embed.json                        ours, optional: {"pooling": "cls" | "mean", "query_prefix": str,
                                        "passage_prefix": str}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from m3embed import backbones

if TYPE_CHECKING:
    import torch

HEAD_FILES = {"colbert": "colbert_linear.pt", "sparse": "sparse_linear.pt"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "vocab.txt", "tokenizer.model")
CONFIG_FILE = "m3embed.json"
POOLINGS = ("cls", "mean")


@dataclass
class M3Config:
    """m3embed's own settings stored beside a checkpoint."""

    pooling: str = "cls"  # the paper's dense pooling; MiniLM-style backbones use "mean"
    # prepended to every query / passage by encode_queries / encode_corpus (sentence-transformers' prompts);
    # e5 models are trained with "query: " and "passage: "; BGE-M3 uses none
    query_prefix: str = ""
    passage_prefix: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("query_prefix", "passage_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")

    def save(self, directory: Path) -> None:
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


SHIPPED_DIR = Path(__file__).parent / "models"  # heads (and trained layers) of models trained by m3embed
# a shipped model's trained tensors that replace or extend the backbone's (its metadata "backbone_prefix" maps
# the backbone's names to the model's, e.g. "bert."); merged into model.safetensors when assembled
TRAINED_WEIGHTS = "trained_weights.safetensors"


def cache_dir() -> Path:
    """m3embed's cache: $M3EMBED_CACHE, else ~/.cache/m3embed (assembled shipped models, converted backbones,
    weight digests)."""
    return backbones.cache_root()


def shipped_models() -> dict[str, str]:
    """Models available offline by name → the package backbone they are built on (a backbone maps to itself).

    Shipped models (M3 heads, or a reranker's config.json) name their backbone in train_config.json ("model");
    they are listed when it is installed.
    """
    have = backbones.installed()
    models = {name: name for name in have}
    for found in sorted(SHIPPED_DIR.glob("*/")):
        if (found / CONFIG_FILE).is_file() or (found / "config.json").is_file():
            base = _shipped_backbone(found)
            if base in have:
                models[found.name] = base
    return models


# the offline default, best first: the first one whose backbone package is installed
DEFAULT_MODELS = ("minilm-m3", backbones.MINILM)


def _shipped_backbone(directory: Path) -> str:
    """The package backbone a shipped model is assembled on: its train_config.json "model", else MiniLM."""
    config = directory / "train_config.json"
    name = json.loads(config.read_text()).get("model") if config.is_file() else None
    return name if name in backbones.PACKAGES else backbones.MINILM


def default_model() -> str:
    """The trained offline M3 model when its backbone is installed, else a dense-only backbone."""
    shipped = shipped_models()
    return next((name for name in DEFAULT_MODELS if name in shipped), backbones.MINILM)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link where the filesystem allows, else a copy."""
    if Path(src).is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def default_reranker() -> str | None:
    """The cross-encoder trained here when it ships with this install, else None."""
    return "minilm-reranker" if "minilm-reranker" in shipped_models() else None


def _assemble(heads_dir: Path, backbone: Path) -> Path:
    """A checkpoint directory joining a package's backbone and what we ship (made once in the cache).

    Our head files and config.json replace the backbone's; TRAINED_WEIGHTS is merged into its model.safetensors.
    """
    used = sorted(p for p in heads_dir.iterdir() if p.suffix in (".pt", ".json", ".safetensors"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in used))
    digest.update(str(backbone).encode())  # a backbone converted anew (new package version) is a new directory
    target = cache_dir() / "models" / f"{heads_dir.name}-{digest.hexdigest()[:12]}"
    if (target / "m3embed.json").is_file():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    # a backbone converted into our cache (470 MB for e5) is hard-linked, not duplicated; package files and our
    # heads are copied, so that nothing written into the cache can reach them
    link = backbone.is_relative_to(backbones.cache_root())
    for src in list(backbone.iterdir()) + used:
        dst = tmp / src.name
        if dst.exists() or dst.is_symlink():
            dst.unlink() if not dst.is_dir() else shutil.rmtree(dst)
        if link and src.parent == backbone:
            _link_or_copy(src, dst)
        else:
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    if (tmp / TRAINED_WEIGHTS).is_file():
        _merge_trained(tmp / "model.safetensors", tmp / TRAINED_WEIGHTS)
    os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    return target


# a trained tensor may ship as a row-wise quantised delta over the backbone's: NAME + QDELTA holds the codes
# (int8: one per value; uint8: two 4-bit codes per byte, even column in the low nibble, code = q + 8, q in
# -7..7), NAME + QSCALE the float16 scale per row (delta ≈ q · scale); see `quantize_delta`
QDELTA, QSCALE = ".qdelta", ".qscale"


def quantize_delta(delta: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """{QDELTA: codes, QSCALE: (rows, 1) float16 scales} of a 2-D delta, symmetric round-to-nearest per row
    with 2**(bits-1) - 1 levels each side (bits 8 or 4; 4 needs an even column count)."""
    import torch

    if bits not in (4, 8) or delta.dim() != 2 or (bits == 4 and delta.shape[1] % 2):
        raise ValueError(f"quantize_delta takes a 2-D tensor (even columns for 4 bits) and bits 4 or 8; got "
                         f"shape {tuple(delta.shape)}, bits {bits}")
    levels = 2 ** (bits - 1) - 1
    delta = delta.float()
    scale = (delta.abs().amax(dim=1, keepdim=True) / levels).to(torch.float16)
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    q = torch.clamp(torch.round(delta / safe), -levels, levels).to(torch.int8)
    if bits == 4:
        codes = (q + 8).to(torch.uint8)
        q = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return {QDELTA: q.contiguous(), QSCALE: scale.contiguous()}


def dequantize_delta(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 delta of `quantize_delta`'s codes (int8, or uint8 packed 4-bit) and row scales."""
    import torch

    if codes.dtype == torch.uint8:
        q = torch.stack(((codes & 0xF).to(torch.int8) - 8, (codes >> 4).to(torch.int8) - 8), dim=-1)
        codes = q.reshape(codes.shape[0], -1)
    elif codes.dtype != torch.int8:
        raise ValueError(f"quantised delta codes must be int8 or uint8, got {codes.dtype}")
    return codes.float() * scale.float()


def _merge_trained(weights: Path, trained: Path) -> None:
    """Rewrite `weights` (the backbone's) as the full model: prefixed backbone tensors, then ours, in float32.

    Ours replace the backbone's tensors, or, for a quantised delta (NAME + QDELTA / QSCALE), are added to them.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(trained, "pt") as f:
        prefix = (f.metadata() or {}).get("backbone_prefix", "")
    merged = {prefix + k: v for k, v in load_file(weights).items()}
    ours = load_file(trained)
    for key in [k for k in ours if k.endswith(QDELTA)]:
        name = key[: -len(QDELTA)]
        if name not in merged or name + QSCALE not in ours:
            raise ValueError(f"{trained}: {key} has no backbone tensor {name} or no {name + QSCALE}")
        delta = dequantize_delta(ours.pop(key), ours.pop(name + QSCALE))
        if delta.shape != merged[name].shape:
            raise ValueError(f"{trained}: {key} gives shape {tuple(delta.shape)}, the backbone's {name} is "
                             f"{tuple(merged[name].shape)}")
        merged[name] = merged[name].float() + delta
    merged.update(ours)
    weights.unlink()  # it may be a hard link to a cached backbone: write a new file, never through the link
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in merged.items()},
              str(weights), metadata={"format": "pt"})
    trained.unlink()


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint directory for a shipped model name, a path, or a Hugging Face hub id."""
    shipped = shipped_models()
    name = str(name_or_path)
    if name in shipped:
        base = backbones.backbone_dir(shipped[name])
        return base if name == shipped[name] else _assemble(SHIPPED_DIR / name, base)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is a file; a checkpoint is a directory holding config.json")
        return path
    text = str(name_or_path)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):  # not an "owner/name" hub id
        raise FileNotFoundError(f"checkpoint directory {text} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision,
                                      ignore_patterns=["flax_model.msgpack", "rust_model.ot", "tf_model.h5", "onnx/*"]))
    except Exception as e:  # the hub client raises many types; say what failed and how to fix it
        raise FileNotFoundError(
            f"{text} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {e}); pass a local checkpoint directory instead"
        ) from e


def check_layout(directory: Path, modes: Sequence[str]) -> None:
    """Raise FileNotFoundError naming every file the requested modes need but the directory lacks."""
    missing = []
    if not (directory / "config.json").is_file():
        missing.append("config.json")
    if not any((directory / f).is_file() for f in WEIGHT_FILES):
        missing.append("model weights (model.safetensors or pytorch_model.bin)")
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, sentencepiece.bpe.model or vocab.txt)")
    if missing:
        raise FileNotFoundError(f"{directory} is not a model checkpoint: missing {', '.join(missing)}")
    for mode in modes:
        if mode in HEAD_FILES and not (directory / HEAD_FILES[mode]).is_file():
            need = [m for m in modes if m != mode]
            hint = f"request only modes={tuple(need)!r}" if need else "request modes=('dense',)"
            raise FileNotFoundError(
                f"{directory / HEAD_FILES[mode]} is missing, so the {mode} output cannot be computed; {hint}"
            )


def position_limit(config) -> int:
    """Tokens a Hugging Face encoder config can take, special tokens included.

    XLM-R positions start after the padding index: 8194 embeddings leave 8192 usable tokens.
    """
    offset = config.pad_token_id + 1 if config.model_type in ("xlm-roberta", "roberta", "camembert") else 0
    return config.max_position_embeddings - offset


def read_config(directory: Path) -> M3Config:
    """m3embed.json if present; else the sentence-transformers pooling config; else CLS pooling."""
    ours = directory / CONFIG_FILE
    if ours.is_file():
        try:
            return M3Config(**json.loads(ours.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{ours} is not a valid m3embed config: {e}") from e
    st_pooling = directory / "1_Pooling" / "config.json"
    if st_pooling.is_file():
        cfg = json.loads(st_pooling.read_text())
        if cfg.get("pooling_mode_mean_tokens") and not cfg.get("pooling_mode_cls_token"):
            return M3Config(pooling="mean")
    return M3Config()


# safetensors dtype names; a checkpoint holding any other dtype is read by transformers instead
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_READ_CHUNK = 16 << 20  # bytes converted at a time: the only memory beyond the converted weights


def read_weights(directory: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The backbone's weights with floating tensors converted to `dtype`, read one chunk at a time.

    Loading through transformers memory-maps the float32 file and converts from the mapping, so every float32
    page is resident at once beside the converted copy (bge-m3 in bfloat16: 3.6 GB peak RSS). Reading
    safetensors with plain file reads into the converted tensors keeps the peak at the converted size plus one
    16 MB chunk. A `.bin` checkpoint is memory-mapped by torch and converted tensor by tensor (its float32 pages
    stay mapped until the end: convert it once with `save_pretrained` to get the lower peak).
    """
    import torch

    files = _weight_files(directory)
    out: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            out.update(_read_safetensors(file, dtype))
        else:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            for name in list(state):
                t = state.pop(name)
                out[name] = t.to(dtype) if t.is_floating_point() else t.clone()
    return out


def _weight_files(directory: Path) -> list[Path]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            shards = json.loads((directory / index).read_text())["weight_map"].values()
            return [directory / s for s in sorted(set(shards))]
    raise FileNotFoundError(f"{directory} holds no model weights (model.safetensors or pytorch_model.bin)")


def _read_safetensors(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    with open(path, "rb", buffering=0) as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        start = 8 + header_size
        chunk = torch.empty(_READ_CHUNK, dtype=torch.uint8)
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which m3embed cannot convert; "
                                 "load this checkpoint in float32")
            src = getattr(torch, _SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=dtype if src.is_floating_point else src)
            flat = tensor.view(-1)
            f.seek(start + begin)
            if tensor.dtype == src:  # read straight into place
                _read_into(f, flat.view(torch.uint8), path)
            else:
                step = _READ_CHUNK // src.itemsize * src.itemsize
                for offset in range(0, end - begin, step):
                    n = min(step, end - begin - offset)
                    _read_into(f, chunk[:n], path)
                    flat[offset // src.itemsize : (offset + n) // src.itemsize].copy_(chunk[:n].view(src))
            out[name] = tensor
    return out


def _read_into(f, buffer: torch.Tensor, path: Path) -> None:
    view = memoryview(buffer.numpy()).cast("B")
    while view:
        n = f.readinto(view)
        if not n:
            raise ValueError(f"{path} is truncated: a tensor runs past the end of the file")
        view = view[n:]


def load_head(path: Path, in_features: int, out_features: int) -> torch.nn.Linear:
    """Load an nn.Linear head saved as a state dict, checking keys and shapes."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable torch state dict: {e}") from e
    if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} must hold the keys 'weight' and 'bias' of nn.Linear, found {keys}")
    if tuple(state["weight"].shape) != (out_features, in_features):
        raise ValueError(
            f"{path}: weight shape {tuple(state['weight'].shape)} does not fit this backbone, "
            f"expected {(out_features, in_features)}"
        )
    head = torch.nn.Linear(in_features, out_features)
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head


def save_head(head: torch.nn.Linear, path: Path) -> None:
    import torch

    torch.save({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, path)


# ---- weight digests, cached by file identity ----

DIGEST_CACHE = "weight-digests.json"  # in cache_dir(): {key: digest}
DIGEST_CACHE_ENTRIES = 512  # the oldest entries beyond this are dropped


def weight_files(directory: Path) -> list[Path]:
    """The files the encoder's weights are loaded from: config.json, every weight file present, and the shards
    a sharded index lists."""
    files = [directory / "config.json"] + [directory / f for f in WEIGHT_FILES if (directory / f).is_file()]
    for index in [f for f in files if f.name.endswith(".index.json")]:
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            continue
        files += [directory / name for name in sorted(shards)]
    return files


def weights_key(directory: Path, scheme: str) -> str | None:
    """A key naming these exact weight files: real path, size, mtime (ns) and inode of each (None if one is
    unreadable). Rewriting a file changes its mtime, so the key changes with any change of content."""
    parts: list[object] = [scheme]
    try:
        for f in weight_files(directory):
            real = f.resolve()  # hub snapshots are links into a blob store
            st = real.stat()
            parts.append([str(real), st.st_size, st.st_mtime_ns, st.st_ino])
    except OSError:
        return None
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cached_digest(key: str) -> str | None:
    """The digest stored under `key` in the digest cache, or None."""
    try:
        data = json.loads((cache_dir() / DIGEST_CACHE).read_text())
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def store_digest(key: str, digest: str) -> None:
    """Remember a digest under `key` (best effort: an unwritable cache only costs recomputing it)."""
    path = cache_dir() / DIGEST_CACHE
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
