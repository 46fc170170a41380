"""Adapters for other frameworks, each an optional extra: `langchain`, `llama_index`, `haystack`, `mteb`.

Each gives dense embeddings with the model's query / passage prompts on the right side (`M3Model.encode_queries`
/ `encode_corpus`) and a retriever over an m3embed `Index` that searches with any M3 mode (default: the fullest
the index stores, "all" for dense + sparse + ColBERT), metadata filters and an optional cross-encoder rerank: the
hits are `Index.search`'s, same ids, same scores. Nothing here is imported by `import m3embed`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from m3embed.types import Hit


def load_model(model: Any) -> Any:
    """An M3Model as given, or loaded from a name or directory (`M3Model.from_pretrained`)."""
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from m3embed.model import M3Model

        return M3Model.from_pretrained(model)
    return model


def load_index(index: Any, model: Any = None) -> Any:
    """An Index as given, or opened at a location (directory or URL) with `model`, by default the model the
    index records (loaded by name)."""
    if not (isinstance(index, str) or hasattr(index, "__fspath__")):
        return index
    from m3embed.index import open_index

    opened = open_index(index)
    try:
        name = model or opened.manifest.model_name
        if not name:
            raise ValueError(f"index {opened.location} records no model name; pass the model it was built with")
        opened.attach(load_model(name))
    except BaseException:
        opened.close()
        raise
    return opened


def name_of(obj: Any, what: str) -> str:
    """The name or directory a model, reranker or index can be loaded again from (for pipeline serialisation)."""
    if isinstance(obj, str) or hasattr(obj, "__fspath__"):
        return str(obj)
    if hasattr(obj, "manifest"):  # an Index: its directory, or the URL of its Qdrant server
        remote = str(obj.location).startswith(("http://", "https://"))
        name = str(obj.directory) if obj.directory is not None else obj.location if remote else ""
    else:
        name = str(getattr(obj, "name", "") or "")
    if not name:
        raise ValueError(f"this {what} cannot be serialised: it has no name or location to load it from again "
                         f"(got {name!r}); load it by name or directory (from_pretrained, open_index on a directory)")
    return name


RANGE_OPS = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
FILTER_OPS = ("==", "in", *RANGE_OPS)  # what a framework's filter may use: all joined by AND


def conditions_filter(conditions: Iterable[tuple[str, str, Any]], source: str) -> dict[str, Any]:
    """m3embed's metadata filter for conditions that must all hold, each (field, operator, value) with the
    operator among FILTER_OPS; `source` (the framework) names the filter in errors."""
    out: dict[str, Any] = {}
    for field_name, op, value in conditions:
        if op not in FILTER_OPS:
            raise ValueError(f"{source} filter operator {op!r} (on {field_name!r}) has no m3embed equivalent; "
                             f"m3embed filters take {', '.join(FILTER_OPS)} joined by AND")
        if op in RANGE_OPS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{source} filter on {field_name!r}: {op} needs a number (m3embed ranges are "
                                 f"numeric), got {value!r}")
            bounds = out.setdefault(field_name, {})
            if isinstance(bounds, dict) and RANGE_OPS[op] not in bounds:
                bounds[RANGE_OPS[op]] = value
                continue
        elif op == "in" and not isinstance(value, (list, tuple, set)):
            raise ValueError(f"{source} filter on {field_name!r}: in needs a list of values, got {value!r}")
        elif field_name not in out:
            out[field_name] = list(value) if op == "in" else value
            continue
        raise ValueError(f"{source} filter: a second condition on {field_name!r} ({op} {value!r}); an m3embed "
                         "filter takes one ==, one in, or bounds of different kinds per field")
    return out


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
