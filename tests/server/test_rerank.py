"""/v1/rerank and /v1/search's rerank against a live server, through httpx; results equal the library's."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from m3embed.index import open_index
from m3embed.rerank import Reranker
from m3embed.server import ServerSettings, create_app
from m3embed.server import schemas as s
from m3embed.tokenize import tokenize_pairs
from m3testkit.checkpoints import sample_texts

from .conftest import MODEL_NAME, LiveServer

RERANKER = "tiny-reranker"
DOCS = sample_texts(30, seed=5)
QUERY = DOCS[4][:40]


@pytest.fixture(scope="module")
def reranker(xlmr_reranker: Path) -> Reranker:
    return Reranker.from_pretrained(xlmr_reranker, device="cpu")


@pytest.fixture(scope="module")
def server(m3_model, reranker, tmp_path_factory):
    index = open_index(tmp_path_factory.mktemp("rr") / "idx", m3_model, create=True)
    index.add([f"d{i}" for i in range(len(DOCS))], DOCS)
    settings = ServerSettings(model_name=MODEL_NAME, reranker_name=RERANKER, api_key="k3y", max_items=20,
                              max_chars=500)
    live = LiveServer(create_app(m3_model, index, settings, reranker)).start()
    yield live, index, httpx.Client(base_url=live.url, timeout=60, headers={"Authorization": "Bearer k3y"})
    live.stop()
    index.close()


def _error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    return err


def test_rerank_shape_and_scores_equal_the_library(server, reranker):
    _, _, c = server
    docs = DOCS[:12]
    r = c.post("/v1/rerank", json={"model": RERANKER, "query": QUERY, "documents": docs, "top_n": 5,
                                   "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    s.RerankResponse.model_validate(body)  # the documented shape
    assert set(body) == {"object", "model", "results", "usage"} and body["model"] == RERANKER
    assert all(set(x) == {"index", "relevance_score", "document"} for x in body["results"])
    ref = reranker.compute_score([(QUERY, d) for d in docs], normalize=True)
    want = sorted(range(len(docs)), key=lambda i: -ref[i])[:5]
    assert [x["index"] for x in body["results"]] == want
    np.testing.assert_allclose([x["relevance_score"] for x in body["results"]], [ref[i] for i in want], atol=1e-5)
    assert [x["document"]["text"] for x in body["results"]] == [docs[i] for i in want]
    ids, _ = tokenize_pairs(reranker.tokenizer, [(QUERY, d) for d in docs], *reranker.lengths())  # as scored
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] == sum(map(len, ids))

    raw = c.post("/v1/rerank", json={"query": QUERY, "documents": docs, "raw_scores": True}).json()
    assert "document" not in raw["results"][0] and len(raw["results"]) == len(docs)
    logits = reranker.compute_score([(QUERY, d) for d in docs])
    np.testing.assert_allclose(sorted((x["relevance_score"] for x in raw["results"]), reverse=True),
                               sorted(logits, reverse=True), atol=1e-5)
    assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL_NAME, RERANKER]
    assert c.get("/health").json()["reranker"] == RERANKER


def test_rerank_limits_key_and_errors(server, m3_model, live_server):
    url, _, c = server[0].url, None, server[2]
    _error(httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["d"]}), 401, "invalid_api_key")
    _error(c.post("/v1/rerank", json={"query": "q", "documents": ["d"] * 21}), 413, "max_items")
    err = _error(c.post("/v1/rerank", json={"query": "q", "documents": ["d", "x" * 501]}), 413, "max_chars")
    assert err["param"] == "documents[1]"
    _error(c.post("/v1/rerank", json={"query": "x" * 501, "documents": ["d"]}), 413, "max_chars")
    assert c.post("/v1/rerank", json={"query": "q", "documents": []}).status_code == 422
    _error(c.post("/v1/rerank", json={"query": "q", "documents": ["d"], "model": MODEL_NAME}), 404,
           "model_not_found")
    plain = live_server()  # started without --reranker
    _error(httpx.post(f"{plain.url}/v1/rerank", json={"query": "q", "documents": ["d"]}), 404, "no_reranker")


def test_search_with_rerank_equals_the_library(server, reranker):
    _, index, c = server
    queries = [QUERY, DOCS[17][:30]]
    r = c.post("/v1/search", json={"query": queries, "k": 4, "rerank": {"top": 10}})
    assert r.status_code == 200, r.text
    got = s.SearchResponse.model_validate(r.json()).results
    ref = index.search(queries, k=4, reranker=reranker, rerank_top=10)
    for hits, ref_hits in zip(got, ref):
        assert [h.id for h in hits] == [h.id for h in ref_hits]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in ref_hits], atol=1e-4)
        assert all(set(h.scores) == {"all", "rerank"} and h.text for h in hits)
    err = _error(c.post("/v1/search", json={"query": QUERY, "k": 20, "rerank": {"top": 10}}), 422, "invalid_search")
    assert err["param"] == "rerank" and "rerank_top (10) must be at least k (20)" in err["message"]
