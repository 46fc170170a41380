"""/v1/documents and /v1/search against a live server with an attached index; results equal the library's."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from m3embed.index import open_index
from m3testkit.checkpoints import sample_texts

from .conftest import MODEL_NAME


@pytest.fixture
def indexed(live_server, m3_model, tmp_path):
    index = open_index(tmp_path / "idx", m3_model, create=True)
    server = live_server(index)
    yield server, index, httpx.Client(base_url=server.url, timeout=60)
    server.stop()
    index.close()


def _docs(n: int = 40) -> list[dict]:
    return [{"id": f"d{i}", "text": t, "metadata": {"lang": "even" if i % 2 == 0 else "odd", "n": i}}
            for i, t in enumerate(sample_texts(n, seed=11))]


def test_upsert_search_delete(indexed, m3_model):
    _, index, c = indexed
    docs = _docs()
    r = c.post("/v1/documents", json={"documents": docs, "model": MODEL_NAME})
    assert r.status_code == 200, r.text
    assert r.json()["upserted"] == len(docs) and r.json()["count"] == len(docs)
    assert c.get("/v1/index").json()["count"] == len(docs)

    queries = [docs[3]["text"][:40], docs[10]["text"][:30]]
    for mode in ("all", "dense", "sparse", "dense+sparse", "colbert"):
        r = c.post("/v1/search", json={"query": queries, "k": 5, "mode": mode, "weights": [0.4, 0.2, 0.4]})
        assert r.status_code == 200, r.text
        got = r.json()["results"]
        ref = index.search(queries, k=5, mode=mode, weights=(0.4, 0.2, 0.4))
        for hits, ref_hits in zip(got, ref):
            assert [h["id"] for h in hits] == [h.id for h in ref_hits], mode
            np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in ref_hits], atol=1e-4)
    # the library's stored document equals what the server encoded for it
    assert index.search(docs[3]["text"], k=1, mode="dense")[0].id == "d3"

    r = c.post("/v1/search", json={"query": queries[0], "k": 10, "filter": {"lang": "odd"}, "explain": True})
    hits = r.json()["results"][0]
    assert hits and all(h["metadata"]["lang"] == "odd" for h in hits)
    assert set(hits[0]["scores"]) == {"dense", "sparse", "colbert"} and hits[0]["text"]

    assert c.delete("/v1/documents/d3").json() == {"id": "d3", "deleted": True}
    r = c.delete("/v1/documents/d3")
    assert r.status_code == 404 and r.json()["error"]["code"] == "document_not_found"
    assert "d3" not in index and index.count() == len(docs) - 1

    # upsert replaces by id
    r = c.post("/v1/documents", json={"documents": [{"id": "d4", "text": "replaced text", "metadata": {"v": 2}}]})
    assert r.json()["count"] == len(docs) - 1
    top = index.search("replaced text", k=1, mode="dense")[0]
    assert top.id == "d4" and top.text == "replaced text" and top.metadata == {"v": 2}


def test_a_repeated_id_keeps_its_last_copy(indexed):
    """One duplicate policy everywhere: a request holding an id twice stores its last copy, as `index build`
    (tests/index/test_documents.py) and `Index.add_outputs` do (it used to be a 422 here)."""
    _, index, c = indexed
    docs = [{"id": "a", "text": "the first copy"}, {"id": "b", "text": "another document"},
            {"id": "a", "text": "the last copy", "metadata": {"v": 2}}]
    r = c.post("/v1/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    assert (r.json()["upserted"], r.json()["ids"], r.json()["count"]) == (2, ["a", "b"], 2)
    hit = index.search("the last copy", k=1, mode="dense")[0]
    assert (hit.id, hit.text, hit.metadata) == ("a", "the last copy", {"v": 2})


def test_index_request_errors(indexed):
    _, _, c = indexed
    for body, code in [
        ({"documents": []}, "empty_input"),
        ({"documents": [{"id": "a", "text": "x", "extra": 1}]}, "invalid_request"),
        ({"documents": [{"id": "a", "text": "x"}], "model": "other"}, "model_not_found"),
    ]:
        r = c.post("/v1/documents", json=body)
        assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == code, r.text
    for body, code in [
        ({"query": "x", "filter": {"year": {"around": 3}}}, "invalid_search"),
        ({"query": "x", "mode": "bm25"}, "invalid_request"),
        ({"query": "x", "k": 0}, "invalid_request"),
        ({"query": []}, "empty_input"),
    ]:
        r = c.post("/v1/search", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text


def test_search_defaults_to_the_fullest_stored_mode_and_checks_weights(live_server, m3_model, tmp_path):
    """A dense-only index answers /v1/search without a mode (the library's default), and NaN, all-zero or negative
    weights are 422."""
    index = open_index(tmp_path / "dense", m3_model, create=True, modes=("dense",))
    index.add(["a", "b"], ["the quick brown fox", "a slow green turtle"])
    server = live_server(index)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/v1/search", json={"query": "fox", "k": 2})
            assert r.status_code == 200, r.text
            assert [h["id"] for h in r.json()["results"][0]] == [h.id for h in index.search("fox", k=2)]
            r = c.post("/v1/search", json={"query": "fox", "mode": "all"})
            assert r.status_code == 422 and "needs sparse, colbert" in r.json()["error"]["message"]
            r = c.post("/v1/search", content=b'{"query": "fox", "weights": [NaN, 0.2, 0.4]}',
                       headers={"content-type": "application/json"})
            assert r.status_code == 422 and r.json()["error"]["param"] == "weights", r.text
            for weights in ([0, 0, 0], [-1, 0, 0]):  # one weights rule (all 0 was 200, every score 0)
                r = c.post("/v1/search", json={"query": "fox", "weights": weights})
                assert r.status_code == 422 and r.json()["error"]["param"] == "weights", r.text
    finally:
        server.stop()
        index.close()
