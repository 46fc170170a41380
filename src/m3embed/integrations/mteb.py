"""MTEB: `M3Encoder`, an encoder for `mteb.evaluate` (dense M3 vectors, the model's query / passage prompts by
the task's prompt type, token-budget batches).

    import mteb
    from m3embed.integrations.mteb import M3Encoder
    mteb.evaluate(M3Encoder(M3Model.from_pretrained("BAAI/bge-m3")), mteb.get_tasks(["NFCorpus"]))

Sparse, ColBERT and hybrid retrieval through the index are not wired into mteb's search protocol yet (issue 20);
`m3embed eval` evaluates those modes on BEIR-layout data. Needs `pip install 'm3embed[mteb]'`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from m3embed._optional import require
from m3embed.integrations import load_model

require("mteb", "mteb")

from mteb.types import PromptType  # noqa: E402


class M3Encoder:
    """mteb's EncoderProtocol over an M3Model: queries get `encode_queries` (the query prompt), documents and
    symmetric tasks (prompt type None) `encode_corpus` (the passage prompt); similarity is the dot product of
    the normalised dense vectors (cosine).

    Args:
        model: an M3Model, or a name / directory to load one from.
        max_length: truncation in tokens (default: the model's query / passage defaults).
    """

    def __init__(self, model: Any, max_length: int | None = None, **kwargs: Any) -> None:
        from mteb.models.model_meta import ModelMeta

        self.model = load_model(model)
        self.max_length = max_length
        name = str(getattr(self.model, "name", "") or "m3embed").rstrip("/")
        hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={  # mteb names results by it ("org/model")
            "name": name if hub_id else f"m3embed/{name.rsplit('/', 1)[-1]}", "revision": "local",
            "similarity_fn_name": "dot", "embed_dim": self.model.hidden_size, "framework": ["PyTorch"],
        })

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
