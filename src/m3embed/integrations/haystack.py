"""Haystack 2: `M3TextEmbedder`, `M3DocumentEmbedder` (dense) and `M3Retriever` (a component over an m3embed
Index).

    from m3embed.integrations.haystack import M3Retriever
    retriever = M3Retriever(open_index("./idx", model), top_k=5, mode="all")
    retriever.run(query="what is BGE M3?", filters={"lang": "en"})["documents"]   # Document(id=hit.id, score=...)

Needs `pip install 'm3embed[haystack]'` (haystack-ai).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from m3embed._optional import require
from m3embed.integrations import SearchOptions, load_model

require("haystack", "haystack")

from haystack import Document, component  # noqa: E402


@component
class M3TextEmbedder:
    """A query's dense M3 vector (the query prompt): `run(text=...)` → {"embedding": list[float]}."""

    def __init__(self, model: Any, max_length: int | None = None) -> None:
        self.model = load_model(model)
        self.max_length = max_length

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, Any]:
        if not isinstance(text, str):
            raise TypeError(f"M3TextEmbedder takes one str; for documents use M3DocumentEmbedder, got "
                            f"{type(text).__name__}")
        return {"embedding": self.model.encode_queries([text], max_length=self.max_length).dense[0].tolist()}


@component
class M3DocumentEmbedder:
    """Documents' dense M3 vectors (the passage prompt): `run(documents=[...])` → {"documents": copies with
    `embedding` set}."""

    def __init__(self, model: Any, max_length: int | None = None) -> None:
        self.model = load_model(model)
        self.max_length = max_length

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        dense = self.model.encode_corpus([d.content or "" for d in documents], max_length=self.max_length).dense
        return {"documents": [replace(d, embedding=v.tolist()) for d, v in zip(documents, dense)]}


@component
class M3Retriever:
    """`Index.search` as a Haystack component: `run(query, top_k=None, filters=None)` → {"documents": [Document(
    id=hit.id, content=hit.text, meta=hit.metadata plus "scores", score=hit.score)]}.

    Args:
        index: an m3embed Index with its model attached.
        top_k, mode, weights, filters, reranker, rerank_top: as `Index.search` (k, filter; mode default: the
            fullest the index stores). Filters are m3embed's metadata conditions ({"lang": "en",
            "year": {"gte": 2000}}), not Haystack's filter syntax.
        search_options: candidates, hnsw_ef, colbert_top, explain.
    """

    def __init__(self, index: Any, top_k: int = 10, mode: str | None = None, weights: Sequence[float] | None = None,
                 filters: Mapping[str, Any] | None = None, reranker: Any = None, rerank_top: int | None = None,
                 search_options: Mapping[str, Any] | None = None) -> None:
        self.index = index
        self.options = SearchOptions(top_k, mode, weights, filters, reranker, rerank_top, dict(search_options or {}))

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        hits = self.options.search(self.index, query, k=top_k, filter=filters)
        return {"documents": [Document(id=hit.id, content=hit.text, meta={**(hit.metadata or {}), "scores": hit.scores},
                                       score=hit.score) for hit in hits]}
