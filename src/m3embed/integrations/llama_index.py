"""LlamaIndex: `M3Embedding` (a dense `BaseEmbedding`) and `M3Retriever` (a `BaseRetriever` over an m3embed Index).

    from m3embed.integrations.llama_index import M3Embedding, M3Retriever
    retriever = M3Retriever(open_index("./idx", model), k=5, mode="all",
                            filter=MetadataFilters(filters=[MetadataFilter(key="lang", value="en")]))
    nodes = retriever.retrieve("what is BGE M3?")   # NodeWithScore(node=TextNode(id_=hit.id, ...), score=hit.score)

Filters are LlamaIndex's `MetadataFilters` (the ==, in, >, >=, <, <= and AND subset, `llama_index_filter`) or
m3embed's metadata conditions.

Needs `pip install 'm3embed[llamaindex]'` (llama-index-core).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from m3embed._optional import require
from m3embed.integrations import SearchOptions, conditions_filter, hit_metadata, load_model

require("llama_index.core", "llamaindex")

from llama_index.core.base.base_retriever import BaseRetriever  # noqa: E402
from llama_index.core.embeddings import BaseEmbedding  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import FilterCondition, MetadataFilter, MetadataFilters  # noqa: E402
from pydantic import PrivateAttr  # noqa: E402


def llama_index_filter(filters: MetadataFilters | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """m3embed's metadata filter for LlamaIndex `MetadataFilters` (a dict is taken as m3embed's own form).

    Filters with ==, in, >, >=, <, <= joined by AND (nested too) map onto it; any other operator (!=, nin, any,
    contains, text_match, ...) or condition (OR, NOT) is refused with a ValueError naming it.
    """
    if not isinstance(filters, MetadataFilters):
        return dict(filters) if filters else None
    return conditions_filter(_conditions(filters), "LlamaIndex")


def _conditions(filters: MetadataFilters) -> Iterator[tuple[str, str, Any]]:
    if filters.condition not in (None, FilterCondition.AND):
        raise ValueError(f"LlamaIndex filter condition {filters.condition.value!r} has no m3embed equivalent; "
                         "m3embed filters take ==, in, >, >=, <, <= joined by AND")
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            yield from _conditions(f)
        elif isinstance(f, MetadataFilter):
            yield f.key, f.operator.value, f.value
        else:
            raise TypeError(f"MetadataFilters holds MetadataFilter or MetadataFilters, got {type(f).__name__}")


class M3Embedding(BaseEmbedding):
    """Dense M3 vectors: texts get the passage prompt, queries the query prompt.

    Args:
        model: an M3Model, or a name / directory to load one from.
        max_length: truncation in tokens (default: the model's query / passage defaults).
        embed_batch_size: texts LlamaIndex hands over at once (its own batching; the model batches by tokens).
    """

    max_length: int | None = None
    _model: Any = PrivateAttr()

    def __init__(self, model: Any, max_length: int | None = None, **kwargs: Any) -> None:
        loaded = load_model(model)
        kwargs.setdefault("model_name", getattr(loaded, "name", "") or "m3embed")
        super().__init__(max_length=max_length, **kwargs)
        self._model = loaded

    @classmethod
    def class_name(cls) -> str:
        return "M3Embedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._model.encode_queries([query], max_length=self.max_length).dense[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._model.encode_corpus(list(texts), max_length=self.max_length).dense.tolist()


class M3Retriever(BaseRetriever):
    """`Index.search` as a LlamaIndex retriever: NodeWithScore with `node.id_` = the hit's id, `node.text` = its
    stored text, `node.metadata` = its metadata plus "score" and "scores", and `score` = the hit's score.

    Args:
        index: an m3embed Index with its model attached.
        k, mode, weights, reranker, rerank_top: as `Index.search` (mode default: the fullest stored).
        filter: LlamaIndex `MetadataFilters` (see `llama_index_filter`) or m3embed's metadata conditions.
        search_options: candidates, hnsw_ef, colbert_top, explain.
    """

    def __init__(self, index: Any, k: int = 4, mode: str | None = None, weights: Sequence[float] | None = None,
                 filter: MetadataFilters | Mapping[str, Any] | None = None, reranker: Any = None,
                 rerank_top: int | None = None, search_options: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.options = SearchOptions(k, mode, weights, llama_index_filter(filter), reranker, rerank_top,
                                     dict(search_options or {}))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.options.search(self.index, query_bundle.query_str)
        return [NodeWithScore(node=TextNode(id_=hit.id, text=hit.text or "", metadata=hit_metadata(hit)),
                              score=hit.score) for hit in hits]
