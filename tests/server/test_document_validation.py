"""/v1/documents validates ids and metadata as the index does (issue 9 items 6, 7, 11): 422s naming the
document and field instead of 500s; ids with "/" can be deleted; big integers come back exact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest

from m3embed.index import open_index
from m3embed.model import M3Model

BIG = 2**53 + 1  # a float64 cannot hold it


@pytest.fixture
def served(live_server, m3_model: M3Model, tmp_path: Path):
    index = open_index(tmp_path / "idx", m3_model, create=True)
    server = live_server(index)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client, index
    server.stop()
    index.close()


def _post(client: httpx.Client, *docs: dict) -> httpx.Response:
    body = json.dumps({"documents": list(docs)})  # allow_nan: a client may well send NaN
    return client.post("/v1/documents", content=body, headers={"content-type": "application/json"})


def test_http_documents_validation(served) -> None:
    client, index = served
    assert _post(client, {"id": "1", "text": "document one"}).status_code == 200
    for doc, param, message in [
        ({"id": "", "text": "x"}, "documents[0].id", "document id must be"),
        ({"id": True, "text": "x"}, "documents[0].id", "document id must be"),
        ({"id": "n", "text": "x", "metadata": {"v": math.nan}}, "documents[0].metadata",
         "document 'n': metadata field 'v' is nan"),
        ({"id": "n", "text": "x", "metadata": {"v": 2**70}}, "documents[0].metadata", "signed 64-bit"),
    ]:
        r = _post(client, doc)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert message in error["message"] and error["param"] == param, error
    assert index.search("document one", k=1)[0].text == "document one"  # `"id": true` did not overwrite "1"
    assert index.count() == 1
    r = _post(client, {"id": "a/b", "text": "slashed", "metadata": {"big": BIG}})
    assert r.status_code == 200, r.text
    hit = client.post("/v1/search", json={"query": "slashed", "k": 1}).json()["results"][0][0]
    assert hit["id"] == "a/b" and hit["metadata"] == {"big": BIG}
    assert client.delete("/v1/documents/a%2Fb").json() == {"id": "a/b", "deleted": True}
    assert client.delete("/v1/documents/a%2Fb").status_code == 404
    assert index.count() == 1
