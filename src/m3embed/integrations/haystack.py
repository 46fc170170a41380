"""Haystack 2: `M3TextEmbedder`, `M3DocumentEmbedder` (dense) and `M3Retriever` (a component over an m3embed
Index).

    from m3embed.integrations.haystack import M3Retriever
    retriever = M3Retriever("./idx", top_k=5, mode="all")   # an Index, or its directory (opened with its model)
    retriever.run(query="what is BGE M3?", filters={"field": "meta.lang", "operator": "==", "value": "en"})

Filters are Haystack's own syntax (the ==, in, >, >=, <, <= and AND subset, `haystack_filter`) or m3embed's
metadata conditions. The components serialise (`to_dict` / `from_dict`, so `Pipeline.dumps` / `loads`) by the
names they load from: the model's name or directory, the index's directory or URL, the reranker's name; loading
opens them again with `from_pretrained` / `open_index` defaults (close the original index first: an index
directory has one user at a time). Haystack loads classes only from modules its allowlist names:
`Pipeline.loads(text, allowed_modules=["m3embed.integrations.haystack"])`.
Needs `pip install 'm3embed[haystack]'` (haystack-ai).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from m3embed._optional import require
from m3embed.integrations import SearchOptions, conditions_filter, load_index, load_model, name_of

require("haystack", "haystack")

from haystack import Document, component, default_from_dict, default_to_dict  # noqa: E402


def haystack_filter(filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """m3embed's metadata filter for a Haystack filter; one without "operator" is taken as m3embed's own form.

    Haystack comparisons on "meta.<field>" with ==, in, >, >=, <, <= joined by AND map onto it; any other
    operator (OR, NOT, !=, not in, ...) or field is refused with a ValueError naming it.
    """
    if not filters or "operator" not in filters:
        return dict(filters) if filters else None
    return conditions_filter(_conditions(filters), "Haystack")


def _conditions(f: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    op = f.get("operator")
    if "conditions" in f:
        if op != "AND":
            raise ValueError(f"Haystack filter operator {op!r} has no m3embed equivalent; m3embed filters take "
                             "==, in, >, >=, <, <= joined by AND")
        for condition in f["conditions"]:
            yield from _conditions(condition)
        return
    name = f.get("field")
    if not isinstance(name, str) or not name.startswith("meta.") or name == "meta.":
        raise ValueError(f"Haystack filter field {name!r}: m3embed filters on metadata fields, 'meta.<name>'")
    yield name.removeprefix("meta."), op, f.get("value")


class _Embedder:
    """What both embedders hold and how they serialise: the model (saved by name) and its truncation."""

    def __init__(self, model: Any, max_length: int | None = None) -> None:
        self.model = load_model(model)
        self.max_length = max_length

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, model=name_of(self.model, "model"), max_length=self.max_length)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return default_from_dict(cls, data)


@component
class M3TextEmbedder(_Embedder):
    """A query's dense M3 vector (the query prompt): `run(text=...)` → {"embedding": list[float]}."""

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, Any]:
        if not isinstance(text, str):
            raise TypeError(f"M3TextEmbedder takes one str; for documents use M3DocumentEmbedder, got "
                            f"{type(text).__name__}")
        return {"embedding": self.model.encode_queries([text], max_length=self.max_length).dense[0].tolist()}


@component
class M3DocumentEmbedder(_Embedder):
    """Documents' dense M3 vectors (the passage prompt): `run(documents=[...])` → {"documents": copies with
    `embedding` set}."""

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        dense = self.model.encode_corpus([d.content or "" for d in documents], max_length=self.max_length).dense
        return {"documents": [replace(d, embedding=v.tolist()) for d, v in zip(documents, dense)]}


@component
class M3Retriever:
    """`Index.search` as a Haystack component: `run(query, top_k=None, filters=None)` → {"documents": [Document(
    id=hit.id, content=hit.text, meta=hit.metadata plus "scores", score=hit.score)]}.

    Args:
        index: an m3embed Index with its model attached, or its directory / URL (opened with `model`).
        model: the model (or its name) to open `index` with; default the one the index records.
        top_k, mode, weights, reranker, rerank_top: as `Index.search` (k; mode default: the fullest the index
            stores); reranker may be a name (`Reranker.from_pretrained`).
        filters: Haystack filters (see `haystack_filter`) or m3embed's ({"lang": "en", "year": {"gte": 2000}});
            filters given to `run` replace them.
        search_options: candidates, hnsw_ef, colbert_top, explain.
    """

    def __init__(self, index: Any, top_k: int = 10, mode: str | None = None, weights: Sequence[float] | None = None,
                 filters: Mapping[str, Any] | None = None, reranker: Any = None, rerank_top: int | None = None,
                 search_options: Mapping[str, Any] | None = None, model: Any = None) -> None:
        if isinstance(reranker, str) or hasattr(reranker, "__fspath__"):
            from m3embed.rerank import Reranker

            reranker = Reranker.from_pretrained(reranker)
        self.index = load_index(index, model)
        self.filters = filters
        self.options = SearchOptions(top_k, mode, weights, haystack_filter(filters), reranker, rerank_top,
                                     dict(search_options or {}))

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        return default_to_dict(
            self, index=name_of(self.index, "index"), model=name_of(self.index.model, "model"), top_k=o.k,
            mode=o.mode, weights=None if o.weights is None else list(o.weights), filters=self.filters,
            reranker=None if o.reranker is None else name_of(o.reranker, "reranker"), rerank_top=o.rerank_top,
            search_options=o.extra or None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> M3Retriever:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        hits = self.options.search(self.index, query, k=top_k, filter=haystack_filter(filters))
        return {"documents": [Document(id=hit.id, content=hit.text, meta={**(hit.metadata or {}), "scores": hit.scores},
                                       score=hit.score) for hit in hits]}
