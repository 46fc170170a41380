"""Lexical weights in each vector database's own form: one function per target, from the one sparse type.

Every function takes a `SparseVector` (`M3Output.sparse_vector(i)`, `M3Output.sparse_vectors()`) or
FlagEmbedding's `{str(token_id): weight}` dict (`BGEM3FlagModel.encode(...)["lexical_weights"][i]`):

- Qdrant: `to_qdrant` → `qdrant_client.models.SparseVector(indices, values)`.
- Milvus: `to_milvus` → `{token_id: weight}` per row; `to_milvus_batch` → a scipy CSR matrix for a batch
  (both what pymilvus takes for a `SPARSE_FLOAT_VECTOR` field).
- Pinecone: `to_pinecone` → `{"indices": [...], "values": [...]}` (`sparse_values` / `sparse_vector`).
- Elasticsearch, OpenSearch: `to_rank_features` → `{feature: weight}` for a `rank_features` (or ES
  `sparse_vector`) field; `rank_features_query` → the query whose score is the M3 lexical score.
- Vespa: `to_vespa_tensor` → the short form of a one-mapped-dimension tensor `tensor<float>(token{})`,
  `{"<id>": weight}`.

Weaviate has no field for user-supplied sparse vectors (its keyword side is its own BM25 over the text), so there
is no Weaviate form: store the dense (and ColBERT, as a multi-vector) there, and the lexical weights elsewhere.

Elasticsearch and OpenSearch key features by token string and refuse a dot in a `rank_features` feature name
("fields do not support dots in feature names"); the decoded token (FlagEmbedding's `convert_id_to_token`) is
also ambiguous ("▁the" and "the" can both decode to "the") and can be empty. `to_rank_features` therefore keys by
the tokenizer's own vocabulary entry (unique per id, never empty) with "%" and "." percent-escaped ("%25",
"%2E"); `feature_token` undoes it. Those engines store a feature in 9 significant bits, so their scores differ
from `m3embed.scoring.lexical_score` in the third digit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse as sp

from m3embed._optional import require
from m3embed.types import SparseVector

Lexical = SparseVector | dict[str, float]  # ours, or FlagEmbedding's lexical_weights dict


def as_sparse(weights: Lexical) -> SparseVector:
    """A SparseVector from either form (FlagEmbedding's dict: keys are token ids as strings)."""
    if isinstance(weights, SparseVector):
        return weights
    if isinstance(weights, dict):
        try:
            return SparseVector.from_flag(weights)
        except ValueError:
            raise ValueError("lexical weights dict must be keyed by token id ({'2041': 0.25, ...}); token-string "
                             "keys (convert_id_to_token) cannot be mapped back to ids") from None
    raise TypeError(f"expected a SparseVector or a {{token_id: weight}} dict, got {type(weights).__name__}")


def to_qdrant(weights: Lexical) -> Any:
    """`qdrant_client.models.SparseVector`: the ids as indices (sorted, unique), the weights as values."""
    models = require("qdrant_client.models", "qdrant")
    v = as_sparse(weights)
    return models.SparseVector(indices=v.ids.tolist(), values=v.weights.tolist())


def to_milvus(weights: Lexical) -> dict[int, float]:
    """One row of a Milvus `SPARSE_FLOAT_VECTOR` field as pymilvus takes it: `{token_id: weight}`."""
    v = as_sparse(weights)
    return dict(zip(v.ids.tolist(), v.weights.tolist()))


def to_milvus_batch(weights: sp.csr_array | list[Lexical]) -> sp.csr_array:
    """Rows for a Milvus insert in one piece: a scipy CSR matrix (`M3Output.sparse` already is one)."""
    if isinstance(weights, sp.csr_array | sp.csr_matrix):
        return sp.csr_array(weights)
    rows = [as_sparse(w) for w in weights]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    ids = np.concatenate([r.ids for r in rows]) if rows else np.zeros(0, np.int32)
    vals = np.concatenate([r.weights for r in rows]) if rows else np.zeros(0, np.float32)
    width = int(ids.max()) + 1 if len(ids) else 1
    return sp.csr_array((vals, ids, indptr), shape=(len(rows), width))


def to_pinecone(weights: Lexical) -> dict[str, list]:
    """Pinecone's `sparse_values` (upsert) / `sparse_vector` (query): `{"indices": [int], "values": [float]}`."""
    v = as_sparse(weights)
    return {"indices": v.ids.tolist(), "values": v.weights.tolist()}


def escape_feature(token: str) -> str:
    """A vocabulary token as a rank_features feature name: "%" → "%25", "." → "%2E" (dots are refused)."""
    return token.replace("%", "%25").replace(".", "%2E")


def feature_token(name: str) -> str:
    """The vocabulary token of a feature name written by `escape_feature`."""
    return name.replace("%2E", ".").replace("%25", "%")


def to_rank_features(weights: Lexical, tokenizer: Any) -> dict[str, float]:
    """`{feature name: weight}` for an Elasticsearch / OpenSearch `rank_features` field (or ES `sparse_vector`).

    Args:
        weights: one text's lexical weights.
        tokenizer: the model's tokenizer (`M3Model.tokenizer`, `BGEM3FlagModel.tokenizer`); a feature is its
            vocabulary entry for the id, escaped by `escape_feature`.
    """
    v = as_sparse(weights)
    tokens = tokenizer.convert_ids_to_tokens(v.ids.tolist())
    return {escape_feature(t): float(w) for t, w in zip(tokens, v.weights)}


def rank_features_query(weights: Lexical, tokenizer: Any, field: str) -> dict[str, Any]:
    """The Elasticsearch / OpenSearch query scoring Σ w_query · w_doc over the `rank_features` field `field`:
    one `rank_feature` clause per query token with a linear function, boosted by the query weight."""
    return {"bool": {"should": [
        {"rank_feature": {"field": f"{field}.{name}", "linear": {}, "boost": w}}
        for name, w in to_rank_features(weights, tokenizer).items()
    ]}}


def to_vespa_tensor(weights: Lexical) -> dict[str, float]:
    """Vespa's short form for a tensor with one mapped dimension (`tensor<float>(token{})`): `{"<id>": weight}`;
    the same dict is the query tensor for a `sum(query(q) * attribute(lexical))` rank expression."""
    v = as_sparse(weights)
    return {str(i): float(w) for i, w in zip(v.ids.tolist(), v.weights)}
