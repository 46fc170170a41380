"""M3 retrieval indexes: dense, sparse and ColBERT vectors in one engine, searched with M3's hybrid score.

    from m3embed.index import open_index
    index = open_index("./idx", model, create=True)      # Qdrant Edge, embedded, on disk
    index = open_index("http://qdrant:6333", model)       # a Qdrant server or cluster
    index.add(ids, texts, metadata)
    hits = index.search("query", k=10, mode="all")

The names are imported on first use, so `m3embed.index.directory.DEFAULT_COLLECTION` is cheap for the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3embed.index.directory import DEFAULT_COLLECTION, is_remote
from m3embed.index.manifest import MANIFEST_NAME

if TYPE_CHECKING:
    from m3embed.index.core import Index, SearchSpec
    from m3embed.index.manifest import ColbertStorage, IndexBusyError, Manifest
    from m3embed.index.store import DEFAULT_CANDIDATES, Store

__all__ = ["DEFAULT_CANDIDATES", "ColbertStorage", "Index", "IndexBusyError", "Manifest", "SearchSpec",
           "Store", "open_index"]

_HOMES = {"Index": "core", "SearchSpec": "core", "ColbertStorage": "manifest", "IndexBusyError": "manifest",
          "Manifest": "manifest", "DEFAULT_CANDIDATES": "store", "Store": "store"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'm3embed.index' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"m3embed.index.{_HOMES[name]}"), name)


def open_index(location: str | Path | Any, model: Any = None, *, create: bool = False,
               collection: str = DEFAULT_COLLECTION, client_options: Mapping[str, Any] | None = None,
               engine: str | None = None, modes: Sequence[str] | str | None = None,
               colbert_storage: ColbertStorage | None = None, colbert_store: str | None = None,
               store_text: bool | None = None,
               collection_options: Mapping[str, Any] | None = None, fingerprint: str | None = None,
               model_name: str | None = None, dim: int | None = None, colbert_dim: int | None = None) -> Index:
    """Open the index at a directory, a Qdrant URL or ":memory:"; create it first if asked.

    Args:
        location: an index directory (Qdrant Edge by default), "http(s)://host:6333" (a Qdrant server or
            cluster), ":memory:" or a QdrantClient.
        model: the M3Model the index was (or is to be) built with; needed to add or search texts.
        create: create the index when it does not exist yet.
        collection: the collection name on Qdrant.
        client_options: extra QdrantClient arguments (api_key, prefer_grpc, ...).
        engine, modes, colbert_storage, colbert_store, store_text, collection_options, fingerprint, model_name,
            dim, colbert_dim: how to create it (see `Index.create`; None: its default, and modes: all the model
            has); only with create=True. An existing index given engine, modes, colbert_storage, colbert_store or
            store_text other than its own is refused (`Manifest.check_options`).
    """
    from m3embed.index.core import Index

    options = {"engine": engine, "modes": modes, "colbert_storage": colbert_storage, "colbert_store": colbert_store,
               "store_text": store_text,
               "collection_options": collection_options, "fingerprint": fingerprint, "model_name": model_name,
               "dim": dim, "colbert_dim": colbert_dim}
    given = {name: value for name, value in options.items() if value is not None}
    if create:
        index = None
        if is_remote(location):
            try:
                index = Index.open(location, model, collection=collection, client_options=client_options)
            except FileNotFoundError:
                pass
        elif (Path(location) / MANIFEST_NAME).exists():
            index = Index.open(location, model, collection=collection)
        if index is not None:  # an existing index: options that differ from its own would be silently ignored
            try:
                index.manifest.check_options(index.location, given)
            except ValueError:
                index.close()
                raise
            return index
        if "modes" not in given and model is not None:
            given["modes"] = model.available_modes()
        return Index.create(location, model, collection=collection, client_options=client_options, **given)
    if given:
        raise TypeError(f"{', '.join(sorted(given))} only apply when creating an index; pass create=True")
    return Index.open(location, model, collection=collection, client_options=client_options)
