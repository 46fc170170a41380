"""m3embed: BGE-M3 end to end — one encoder pass for dense, sparse and ColBERT retrieval."""

from m3embed.types import MODES, M3Output, SparseVector

__all__ = ["MODES", "M3Output", "SparseVector"]
__version__ = "0.1.0"
