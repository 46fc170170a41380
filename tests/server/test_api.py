"""The routes against a live server, through real clients (openai, httpx); results equal the library's own."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from m3embed.modes import MODES

from .conftest import MODEL_NAME

ATOL = 1e-5  # merged batches pad differently: float noise only


def _b64(data: str, dim: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype="<f4").reshape(-1, dim)


@pytest.fixture(scope="module")
def reference(m3_model, texts):
    return m3_model.encode(texts, modes=MODES)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_openai_client_embeddings_equal_library(shared_server, m3_model, texts, reference, encoding_format):
    client = openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key="unused", max_retries=0)
    res = client.embeddings.create(model=MODEL_NAME, input=texts, encoding_format=encoding_format)
    if encoding_format == "base64":  # asked for explicitly, the client hands the string through
        got = np.concatenate([_b64(d.embedding, m3_model.hidden_size) for d in res.data])
    else:
        got = np.array([d.embedding for d in res.data], dtype=np.float32)
    assert [d.index for d in res.data] == list(range(len(texts)))
    np.testing.assert_allclose(got, reference.dense, atol=ATOL)
    assert res.model == MODEL_NAME
    assert res.usage.prompt_tokens == res.usage.total_tokens == int(reference.n_tokens.sum())


def test_openai_client_default_format_and_single_string(shared_server, m3_model, texts, reference):
    client = openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key="unused", max_retries=0)
    res = client.embeddings.create(model=MODEL_NAME, input=texts[1])  # the client asks for base64 itself
    assert len(res.data) == 1
    np.testing.assert_allclose(np.array(res.data[0].embedding, dtype=np.float32), reference.dense[1], atol=ATOL)
    assert [m.id for m in client.models.list()] == [MODEL_NAME]


def test_openai_client_sees_errors(shared_server, texts):
    client = openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="text-embedding-3-small", input=texts[0])


def test_encode_all_modes_equal_library(shared_server, m3_model, texts, reference):
    r = httpx.post(f"{shared_server.url}/v1/encode", json={"input": texts, "modes": list(MODES)}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] == int(reference.n_tokens.sum())
    for i, item in enumerate(body["data"]):
        assert item["index"] == i and item["n_tokens"] == reference.n_tokens[i]
        np.testing.assert_allclose(np.array(item["dense"], np.float32), reference.dense[i], atol=ATOL)
        ref_sparse = reference.sparse_vector(i)
        assert item["sparse"]["indices"] == ref_sparse.ids.tolist()
        np.testing.assert_allclose(np.array(item["sparse"]["values"], np.float32), ref_sparse.weights, atol=ATOL)
        assert "tokens" not in item["sparse"]
        np.testing.assert_allclose(np.array(item["colbert"], np.float32), reference.colbert[i], atol=ATOL)


def test_encode_subset_base64_and_tokens(shared_server, m3_model, texts, reference):
    r = httpx.post(f"{shared_server.url}/v1/encode", timeout=60, json={
        "input": texts[:3], "modes": ["colbert", "sparse"], "encoding_format": "base64", "return_tokens": True,
        "model": MODEL_NAME})
    assert r.status_code == 200, r.text
    for i, item in enumerate(r.json()["data"]):
        assert "dense" not in item
        colbert = _b64(item["colbert"], m3_model.hidden_size)
        np.testing.assert_allclose(colbert, reference.colbert[i], atol=ATOL)
        ids = reference.sparse_vector(i).ids
        assert item["sparse"]["tokens"] == [m3_model.tokenizer.decode([int(t)]) for t in ids]


def test_score_equals_compute_score(shared_server, m3_model, texts):
    pairs = [(texts[i], texts[i + 1]) for i in range(0, 8, 2)]
    weights = (0.4, 0.2, 0.4)
    r = httpx.post(f"{shared_server.url}/v1/score", json={"pairs": pairs, "weights": weights}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["scores"]
    ref = m3_model.compute_score(pairs, weights=weights)
    assert set(got) == set(ref)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], atol=ATOL)


def test_health_metrics_openapi(shared_server):
    with httpx.Client(base_url=shared_server.url, timeout=30) as c:
        health = c.get("/health").json()
        assert health["status"] == "ok" and health["model"] == MODEL_NAME and health["modes"] == list(MODES)
        c.post("/v1/embeddings", json={"input": "hello", "model": MODEL_NAME}).raise_for_status()
        metrics = c.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert 'm3embed_http_requests_total{method="POST",route="/v1/embeddings",status="200"}' in text
        assert "m3embed_batch_requests_count" in text and "m3embed_queue_jobs" in text
        doc = c.get("/openapi.json").json()
        for path in ("/v1/embeddings", "/v1/encode", "/v1/score", "/health", "/metrics"):
            assert path in doc["paths"]
        assert "EmbeddingRequest" in doc["components"]["schemas"]
