"""MTEB: `M3Encoder`, an encoder for `mteb.evaluate` (dense M3 vectors, the model's query / passage prompts by
the task's prompt type, token-budget batches), and `M3Search`, mteb's search protocol over an m3embed Index, so
retrieval tasks run with any M3 mode (sparse, ColBERT, dense+sparse, all).

    import mteb
    from m3embed.integrations.mteb import M3Encoder, M3Search
    model = M3Model.from_pretrained("BAAI/bge-m3")
    mteb.evaluate(M3Encoder(model), mteb.get_tasks(["NFCorpus"]))                 # dense, any task
    mteb.evaluate(M3Search(model, mode="all"), mteb.get_tasks(["NFCorpus"]))      # retrieval, through an index

Needs `pip install 'm3embed[mteb]'`.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import numpy as np

from m3embed._optional import require
from m3embed.integrations import load_model
from m3embed.modes import check_search_mode, check_search_modes

require("mteb", "mteb")

from mteb.types import PromptType  # noqa: E402


def model_meta(model: Any, suffix: str = "") -> Any:
    """The ModelMeta mteb names results by: the model's hub id ("org/model") or "m3embed/<directory name>",
    plus `suffix`."""
    from mteb.models.model_meta import ModelMeta

    name = str(getattr(model, "name", "") or "m3embed").rstrip("/")
    hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    return ModelMeta.create_empty(overwrites={
        "name": (name if hub_id else f"m3embed/{name.rsplit('/', 1)[-1]}") + suffix, "revision": "local",
        "similarity_fn_name": "dot", "embed_dim": model.hidden_size, "framework": ["PyTorch"],
    })


class M3Encoder:
    """mteb's EncoderProtocol over an M3Model: queries get `encode_queries` (the query prompt), documents and
    symmetric tasks (prompt type None) `encode_corpus` (the passage prompt); similarity is the dot product of
    the normalised dense vectors (cosine).

    Args:
        model: an M3Model, or a name / directory to load one from.
        max_length: truncation in tokens (default: the model's query / passage defaults).
    """

    def __init__(self, model: Any, max_length: int | None = None, **kwargs: Any) -> None:
        self.model = load_model(model)
        self.max_length = max_length
        self.mteb_model_meta = model_meta(self.model)

    def encode(self, inputs: Any, *, task_metadata: Any = None, hf_split: str = "", hf_subset: str = "",
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        """The dense vectors (n, h) of every text the DataLoader yields, in its order."""
        texts = [t for batch in inputs for t in batch["text"]]
        run = self.model.encode_queries if prompt_type == PromptType.query else self.model.encode_corpus
        return run(texts, max_length=self.max_length, progress=kwargs.get("show_progress_bar")).dense

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        return np.asarray(embeddings1) @ np.asarray(embeddings2).T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        return (np.asarray(embeddings1) * np.asarray(embeddings2)).sum(-1)


class M3Search:
    """mteb's SearchProtocol over an m3embed Index: `index` encodes the task's corpus into a temporary Qdrant
    Edge index (what `m3embed eval` builds), `search` runs `Index.search`'s path with one M3 mode, so a
    retrieval task scores exactly the hits and scores `Index.search` gives.

    Documents are "title text" as mteb's encoder path reads them, queries their text plus the task's instruction.
    mteb names the results `<model name>-<mode>`. For reranking tasks (`top_ranked`), the index's `top_k` best
    are kept when they are among the query's candidates, as mteb's BM25 does. One corpus is held at a time: the
    next `index` call (or `close`) deletes the previous index.

    Args:
        model: an M3Model, or a name / directory to load one from.
        mode: one of `m3embed.modes.SEARCH_MODES` (default "all": dense + sparse + ColBERT).
        weights, candidates: as `Index.search` (hybrid weights (dense, sparse, colbert), candidates per route).
        max_length: truncation in tokens of queries and documents (default: the model's query / passage ones).
        batch_size: documents encoded and added, and queries encoded and searched, per batch.
    """

    def __init__(self, model: Any, mode: str = "all", weights: tuple[float, float, float] | None = None,
                 candidates: int | None = None, max_length: int | None = None, batch_size: int = 256,
                 **kwargs: Any) -> None:
        self.model = load_model(model)
        check_search_modes([mode])  # one known mode, which the model's heads can serve
        self.mode = check_search_mode(mode, self.model.available_modes())
        self.weights, self.candidates, self.max_length, self.batch_size = weights, candidates, max_length, batch_size
        self.mteb_model_meta = model_meta(self.model, f"-{self.mode}")
        self.index_: Any = None  # the Index of the corpus last given to `index`
        self._open = ExitStack()

    def index(self, corpus: Any, *, task_metadata: Any = None, hf_split: str = "", hf_subset: str = "",
              encode_kwargs: dict[str, Any] | None = None, num_proc: int | None = None, **kwargs: Any) -> None:
        """Encode the corpus (a Dataset of id, text, optional title) into a fresh index."""
        from m3embed.evaluate.runs import eval_index, fill_index

        self.close()
        self.index_ = self._open.enter_context(eval_index(self.model, [self.mode]))
        fill_index(self.index_, self.model, [str(i) for i in corpus["id"]], document_texts(corpus),
                   max_length=self.max_length, batch_size=self.batch_size, progress=_progress(encode_kwargs))
        self.index_.optimize()

    def search(self, queries: Any, *, task_metadata: Any = None, hf_split: str = "", hf_subset: str = "",
               top_k: int = 1000, encode_kwargs: dict[str, Any] | None = None, top_ranked: Any = None,
               num_proc: int | None = None, **kwargs: Any) -> dict[str, dict[str, float]]:
        """`{query id: {document id: score}}`: each query's `top_k` best hits by `Index.search` with the mode."""
        from m3embed.evaluate.runs import index_runs

        if self.index_ is None:
            raise RuntimeError("M3Search.search before M3Search.index: index the task's corpus first")
        texts = dict(zip((str(i) for i in queries["id"]), query_texts(queries)))
        runs, _ = index_runs(self.index_, self.model, texts, [self.mode], top_k, weights=self.weights,
                             candidates=self.candidates, max_length=self.max_length, batch_size=self.batch_size,
                             progress=_progress(encode_kwargs))
        run = runs[self.mode]
        for q, allowed in (top_ranked or {}).items():
            if q in run:
                allowed = set(allowed)
                run[q] = {d: s for d, s in run[q].items() if d in allowed}
        return run

    def close(self) -> None:
        """Close and delete the index of the last corpus (idempotent)."""
        self._open.close()
        self.index_ = None


def document_texts(corpus: Any) -> list[str]:
    """Each corpus row as mteb's encoders read it: "title text", stripped, or the text alone."""
    titles = corpus["title"] if "title" in corpus.column_names else [None] * len(corpus)
    return [f"{title} {text}".strip() if title else text.strip() for title, text in zip(titles, corpus["text"])]


def query_texts(queries: Any) -> list[str]:
    """Each query's text, followed by its instruction when the task gives one (mteb's rule)."""
    texts = list(queries["text"])
    if texts and not isinstance(texts[0], str):
        raise TypeError(f"M3Search takes text queries, got {type(texts[0]).__name__} (a conversation task?); "
                        "evaluate such tasks with M3Encoder")
    if "instruction" not in queries.column_names:
        return texts
    return [t if instr is None else f"{t} {instr}" for t, instr in zip(texts, queries["instruction"])]


def _progress(encode_kwargs: dict[str, Any] | None) -> bool:
    return bool((encode_kwargs or {}).get("show_progress_bar", False))
