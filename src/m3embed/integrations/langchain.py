"""LangChain: `M3Embeddings` (dense `Embeddings`) and `M3Retriever` (a `BaseRetriever` over an m3embed Index).

    from m3embed.integrations.langchain import M3Embeddings, M3Retriever
    retriever = M3Retriever(index=open_index("./idx", model), k=5, mode="all", filter={"lang": "en"})
    docs = retriever.invoke("what is BGE M3?")   # Document(id=hit.id, page_content=hit.text, metadata=...)

Needs `pip install 'm3embed[langchain]'` (langchain-core).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from m3embed._optional import require
from m3embed.integrations import SearchOptions, hit_metadata, load_model

require("langchain_core", "langchain")

from langchain_core.callbacks import CallbackManagerForRetrieverRun  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import ConfigDict  # noqa: E402


class M3Embeddings(Embeddings):
    """Dense M3 vectors: `embed_documents` with the passage prompt, `embed_query` with the query prompt.

    Args:
        model: an M3Model, or a name / directory to load one from.
        max_length: truncation in tokens (default: the model's query / passage defaults).
    """

    def __init__(self, model: Any, max_length: int | None = None) -> None:
        self.model = load_model(model)
        self.max_length = max_length

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode_corpus(list(texts), max_length=self.max_length).dense.tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.model.encode_queries([text], max_length=self.max_length).dense[0].tolist()


class M3Retriever(BaseRetriever):
    """`Index.search` as a LangChain retriever: Documents with `id` = the hit's id, `page_content` = its stored
    text and `metadata` = its metadata plus "score" and "scores".

    Fields: index (an m3embed Index with its model attached), k, mode (default: the fullest the index stores),
    weights, filter (metadata conditions, as `Index.search`), reranker / rerank_top (a cross-encoder), and
    search_options (candidates, hnsw_ef, colbert_top, explain). `invoke(query, k=..., filter=...)` overrides
    k and filter for one call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    k: int = 4
    mode: str | None = None
    weights: Sequence[float] | None = None
    filter: Mapping[str, Any] | None = None
    reranker: Any = None
    rerank_top: int | None = None
    search_options: dict[str, Any] = {}

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, filter: Mapping[str, Any] | None = None) -> list[Document]:
        options = SearchOptions(self.k, self.mode, self.weights, self.filter, self.reranker, self.rerank_top,
                                dict(self.search_options))
        return [Document(id=hit.id, page_content=hit.text or "", metadata=hit_metadata(hit))
                for hit in options.search(self.index, query, k=k, filter=filter)]
