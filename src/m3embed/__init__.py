"""m3embed: BGE-M3 end to end — one encoder pass for dense, sparse and ColBERT retrieval."""

from m3embed.index import Index, open_index
from m3embed.model import M3Model
from m3embed.modes import MODES
from m3embed.types import Hit, M3Output, SparseVector

__all__ = ["MODES", "Hit", "Index", "M3Model", "M3Output", "SparseVector", "open_index"]
__version__ = "0.1.0"
