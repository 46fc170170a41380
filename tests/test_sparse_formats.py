"""Lexical weights in each database's form, checked with that database's own client types and parsers
(qdrant-client, pymilvus, pinecone, elasticsearch, opensearch-py) or, for Vespa, its documented JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3embed import sparse_formats as sf
from m3embed.model import M3Model
from m3embed.scoring import lexical_score
from m3embed.types import M3Output

TEXTS = ["e.g. 3.14 is pi... www.example.com", "50% off: 100 %% done.", "the the cat sat on the mat", "",
         "Кошка читает длинное письмо.", "猫在雨中读一封长信。"]


@pytest.fixture(scope="module")
def encoded(xlmr_ckpt: Path) -> tuple[M3Model, M3Output]:
    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    return model, model.encode(TEXTS, modes="sparse")


def test_both_input_forms_agree(encoded: tuple[M3Model, M3Output]) -> None:
    _, out = encoded
    for v, flag in zip(out.sparse_vectors(), out.lexical_weights):
        assert sf.to_pinecone(v) == sf.to_pinecone(flag)
    with pytest.raises(ValueError, match="keyed by token id"):
        sf.as_sparse({"cat": 0.5})
    with pytest.raises(TypeError, match="SparseVector"):
        sf.to_milvus([1, 2])


def test_qdrant(encoded: tuple[M3Model, M3Output]) -> None:
    """Through qdrant-client's local mode: its sparse dot product is the M3 lexical score."""
    from qdrant_client import QdrantClient, models

    _, out = encoded
    vectors = out.sparse_vectors()
    client = QdrantClient(":memory:")
    client.create_collection("c", vectors_config={}, sparse_vectors_config={"lex": models.SparseVectorParams()})
    client.upsert("c", [models.PointStruct(id=i, vector={"lex": sf.to_qdrant(v)}) for i, v in enumerate(vectors)])
    hits = client.query_points("c", query=sf.to_qdrant(vectors[2]), using="lex", limit=len(TEXTS)).points
    assert hits[0].id == 2
    for h in hits:
        assert h.score == pytest.approx(lexical_score(vectors[2], vectors[h.id]), rel=1e-5)


def test_milvus(encoded: tuple[M3Model, M3Output]) -> None:
    """pymilvus accepts the rows and the CSR batch, and its wire form decodes to the same weights."""
    from pymilvus.client import entity_helper as eh

    _, out = encoded
    rows = [sf.to_milvus(v) for v in out.sparse_vectors()]
    assert eh.entity_is_sparse_matrix(rows)
    assert all(isinstance(k, int) and isinstance(w, float) for r in rows for k, w in r.items())
    for batch in (sf.to_milvus_batch(out.sparse), sf.to_milvus_batch(out.sparse_vectors())):
        assert eh.entity_is_sparse_matrix(batch)
        back = eh.sparse_proto_to_rows(eh.sparse_rows_to_proto(batch))
        assert [dict(r) for r in back] == [{k: np.float32(w) for k, w in r.items()} for r in rows]


def test_pinecone(encoded: tuple[M3Model, M3Output]) -> None:
    from pinecone import SparseValues
    from pinecone._internal.vector_factory import _parse_sparse  # what Index.upsert runs on a dict

    _, out = encoded
    for v in out.sparse_vectors():
        d = sf.to_pinecone(v)
        assert _parse_sparse(d) == SparseValues(indices=v.ids.tolist(), values=v.weights.tolist())


@pytest.mark.parametrize("dsl", ["elasticsearch.dsl", "opensearchpy.helpers"])
def test_rank_features(encoded: tuple[M3Model, M3Output], dsl: str) -> None:
    """No feature name holds a dot or is empty; names are unique per id and map back to the vocabulary; the
    document and query bodies are what each client's DSL writes."""
    model, out = encoded
    if dsl == "elasticsearch.dsl":
        from elasticsearch.dsl import Document, Q, RankFeatures
    else:
        from opensearchpy.helpers.document import Document
        from opensearchpy.helpers.field import RankFeatures
        from opensearchpy.helpers.query import Q

    class Doc(Document):
        lex = RankFeatures()

    escaped = 0
    for v in out.sparse_vectors():
        feats = sf.to_rank_features(v, model.tokenizer)
        assert len(feats) == len(v) and all(name and "." not in name for name in feats)
        assert [model.tokenizer.convert_tokens_to_ids(sf.feature_token(n)) for n in feats] == v.ids.tolist()
        escaped += sum("%2E" in n for n in feats)
        if not feats:  # the empty text
            continue
        assert Doc(lex=feats).to_dict() == {"lex": feats}
        query = sf.rank_features_query(v, model.tokenizer, "lex")
        clauses = [Q("rank_feature", field=f"lex.{n}", linear={}, boost=w) for n, w in feats.items()]
        assert query == Q("bool", should=clauses).to_dict()
    assert escaped, "no token with a dot in the fixture: the escaping is untested"
    assert sf.feature_token(sf.escape_feature("a.%2E%")) == "a.%2E%"


def test_vespa(encoded: tuple[M3Model, M3Output]) -> None:
    """Vespa's documented short form for `tensor<float>(token{})`: labels are strings, values numbers, and the
    verbose form (cells with addresses) holds the same cells."""
    _, out = encoded
    v = out.sparse_vector(0)
    short = sf.to_vespa_tensor(v)
    verbose = [{"address": {"token": str(i)}, "value": float(w)} for i, w in zip(v.ids, v.weights)]
    assert {c["address"]["token"]: c["value"] for c in verbose} == short
    assert all(isinstance(k, str) and isinstance(w, float) for k, w in short.items())
