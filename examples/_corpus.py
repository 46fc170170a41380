"""The small corpus the framework examples index (shared so each example stays about its framework)."""

from __future__ import annotations

DOCS = [
    ("bge-m3", "BGE-M3 is an embedding model that gives dense, sparse and multi-vector (ColBERT) representations.",
     {"topic": "models", "lang": "en"}),
    ("bm25", "BM25 is a bag-of-words ranking function based on the query terms appearing in each document.",
     {"topic": "lexical", "lang": "en"}),
    ("colbert", "ColBERT scores a passage by late interaction: each query token takes its best matching token.",
     {"topic": "models", "lang": "en"}),
    ("qdrant", "Qdrant is a vector database with named dense, sparse and multi-vector fields.",
     {"topic": "databases", "lang": "en"}),
    ("panda", "Der Große Panda ist eine Bärenart aus China, die sich fast nur von Bambus ernährt.",
     {"topic": "animals", "lang": "de"}),
    ("fox", "The quick brown fox jumps over the lazy dog.", {"topic": "animals", "lang": "en"}),
]


def build_index(path: str, model: object) -> object:
    """A new m3embed index at `path` holding DOCS (dense, sparse and ColBERT)."""
    from m3embed import open_index

    index = open_index(path, model, create=True)
    index.add([d[0] for d in DOCS], [d[1] for d in DOCS], [d[2] for d in DOCS])
    return index
