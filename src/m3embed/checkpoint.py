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


SHIPPED_DIR = Path(__file__).parent / "models"  # heads (and adapters) of models trained by m3embed


def cache_dir() -> Path:
    """m3embed's cache: $M3EMBED_CACHE, else ~/.cache/m3embed (assembled shipped models, converted backbones,
    weight digests)."""
    return backbones.cache_root()


def shipped_models() -> dict[str, str]:
    """Models available offline by name → the package backbone they are built on (a backbone maps to itself).

    Shipped heads name their backbone in their train_config.json ("model"); they are listed when it is installed.
    """
    have = backbones.installed()
    models = {name: name for name in have}
    for heads in sorted(SHIPPED_DIR.glob("*/m3embed.json")):
        base = json.loads((heads.parent / "train_config.json").read_text())["model"]
        if base in have:
            models[heads.parent.name] = base
    return models


# the offline default, best first: the first one whose backbone package is installed
DEFAULT_MODELS = ("minilm-m3", backbones.MINILM)


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


def _assemble(heads_dir: Path, backbone: Path) -> Path:
    """A checkpoint directory joining a package's backbone and our shipped heads (made once in the cache)."""
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
    os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    return target


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
