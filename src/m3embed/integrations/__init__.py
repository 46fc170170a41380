"""Adapters for other frameworks, each an optional extra: `langchain`, `llama_index`, `haystack`, `mteb`.

Each gives dense embeddings with the model's query / passage prompts on the right side (`M3Model.encode_queries`
/ `encode_corpus`) and a retriever over an m3embed `Index` that searches with any M3 mode (default: the fullest
the index stores, "all" for dense + sparse + ColBERT), metadata filters and an optional cross-encoder rerank: the
hits are `Index.search`'s, same ids, same scores. Nothing here is imported by `import m3embed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from m3embed.types import Hit


def load_model(model: Any) -> Any:
    """An M3Model as given, or loaded from a name or directory (`M3Model.from_pretrained`)."""
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from m3embed.model import M3Model

        return M3Model.from_pretrained(model)
    return model


@dataclass
class SearchOptions:
    """What a framework retriever passes to `Index.search` (see it for each option)."""

    k: int = 4
    mode: str | None = None  # None: the fullest mode the index stores ("all" for all three)
    weights: Sequence[float] | None = None
    filter: Mapping[str, Any] | None = None
    reranker: Any = None
    rerank_top: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # candidates, hnsw_ef, colbert_top, explain

    def search(self, index: Any, query: str, *, k: int | None = None,
               filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """`index.search(query, ...)` with these options; `k` and `filter` override them for one call."""
        return index.search(query, k=k or self.k, mode=self.mode, weights=self.weights,
                            filter=self.filter if filter is None else filter, reranker=self.reranker,
                            rerank_top=self.rerank_top, **self.extra)


def hit_metadata(hit: Hit) -> dict[str, Any]:
    """A hit's metadata with its score and per-mode scores added (the frameworks' documents carry them)."""
    return {**(hit.metadata or {}), "score": hit.score, "scores": hit.scores}
