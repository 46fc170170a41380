"""m3embed: BGE-M3 end to end — one encoder pass for dense, sparse and ColBERT retrieval.

Names are imported on first use, so `import m3embed` (and `m3embed.types`, `m3embed.index`) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m3embed.flag import BGEM3FlagModel, FlagReranker
    from m3embed.index import Index, open_index
    from m3embed.model import M3Model
    from m3embed.modes import MODES
    from m3embed.types import Hit, M3Output, SparseVector

_EXPORTS = {
    "BGEM3FlagModel": "m3embed.flag",
    "FlagReranker": "m3embed.flag",
    "Index": "m3embed.index",
    "open_index": "m3embed.index",
    "M3Model": "m3embed.model",
    "MODES": "m3embed.modes",
    "Hit": "m3embed.types",
    "M3Output": "m3embed.types",
    "SparseVector": "m3embed.types",
}

__all__ = ["MODES", "BGEM3FlagModel", "FlagReranker", "Hit", "Index", "M3Model", "M3Output", "SparseVector",
           "open_index"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'm3embed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
