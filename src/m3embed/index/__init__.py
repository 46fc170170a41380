"""M3 retrieval indexes: dense, sparse and ColBERT vectors in one engine, searched with M3's hybrid score.

    from m3embed.index import open_index
    index = open_index("./idx", model, create=True)      # Qdrant Edge, embedded, on disk
    index = open_index("http://qdrant:6333", model)       # a Qdrant server or cluster
    index.add(ids, texts, metadata)
    hits = index.search("query", k=10, mode="all")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3embed.index.core import DEFAULT_COLLECTION, Index, SearchSpec, is_remote
from m3embed.index.manifest import MANIFEST_NAME, ColbertStorage, IndexBusyError, Manifest
from m3embed.index.store import DEFAULT_CANDIDATES, Store

__all__ = ["DEFAULT_CANDIDATES", "ColbertStorage", "Index", "IndexBusyError", "Manifest", "SearchSpec",
           "Store", "open_index"]


def open_index(location: str | Path | Any, model: Any = None, *, create: bool = False,
               collection: str = DEFAULT_COLLECTION, **create_options: Any) -> Index:
    """Open the index at a directory, a Qdrant URL or ":memory:"; create it first if asked.

    Args:
        location: an index directory (Qdrant Edge by default), "http(s)://host:6333" (a Qdrant server or
            cluster), ":memory:" or a QdrantClient.
        model: the M3Model the index was (or is to be) built with; needed to add or search texts.
        create: create the index when it does not exist yet (with `create_options`, see `Index.create`).
        collection: the collection name on Qdrant.
    """
    client_options = create_options.pop("client_options", None)
    if create:
        if is_remote(location):
            try:
                return Index.open(location, model, collection=collection, client_options=client_options)
            except FileNotFoundError:
                pass
        elif (Path(location) / MANIFEST_NAME).exists():
            return Index.open(location, model, collection=collection)
        return Index.create(location, model, collection=collection, client_options=client_options,
                            **create_options)
    if create_options:
        raise TypeError(f"{', '.join(sorted(create_options))} only apply when creating an index; pass create=True")
    return Index.open(location, model, collection=collection, client_options=client_options)
