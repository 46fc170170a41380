"""Optional dependencies: when an extra is not installed, say in one line which `pip install` brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"serve": "the HTTP service (m3embed serve)", "eval": "evaluation (m3embed eval)",
          "ray": "encoding and loading on Ray (--ray)",
          "parquet": "Parquet input and encoded shards",
          "qdrant": "the qdrant engine (a Qdrant server, --engine qdrant)",
          "langchain": "the LangChain integration (m3embed.integrations.langchain)",
          "llamaindex": "the LlamaIndex integration (m3embed.integrations.llama_index)",
          "haystack": "the Haystack integration (m3embed.integrations.haystack)",
          "mteb": "the MTEB encoder (m3embed.integrations.mteb)"}


class MissingExtra(ImportError):
    """A module of an optional extra is not installed; the message names the extra to install."""


def require(module: str, extra: str) -> ModuleType:
    """Import `module` and return it, or raise MissingExtra naming the extra (a key of EXTRAS) that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or module
        raise MissingExtra(f"{EXTRAS[extra]} needs {missing}, which is not installed: "
                           f"pip install 'm3embed[{extra}]'", name=missing) from e
