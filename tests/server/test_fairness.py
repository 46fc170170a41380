"""Large requests over HTTP: split into chunks that take turns with other requests, dropped when the client leaves."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpx
import numpy as np

from .conftest import MODEL_NAME


def _wait(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


class _GatedModel:
    """Wraps the worker's encode: records each call's texts and holds the first call until `release` is set."""

    def __init__(self, batcher) -> None:
        self.real, self.calls = batcher._encode, []
        self.in_first, self.release = threading.Event(), threading.Event()
        batcher._encode = self

    def __call__(self, texts, modes, role):
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.in_first.set()
            assert self.release.wait(30), "the test never released the model"
        return self.real(texts, modes, role)


def _send_raw(url: str, body: dict) -> socket.socket:
    """POST /v1/embeddings on a plain socket (so the test can hang up without reading the answer)."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_small_request_waits_for_one_chunk_of_a_large_one(live_server, m3_model, texts):
    server = live_server(max_batch_tokens=1)  # every text of the large request is a chunk of its own
    batcher = server.app.state.service.batcher
    model = _GatedModel(batcher)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        big = threading.Thread(target=lambda: client.post(
            "/v1/embeddings", json={"input": texts, "model": MODEL_NAME}))
        big.start()
        assert model.in_first.wait(30)  # the first chunk is in the model
        result: dict = {}
        small = threading.Thread(target=lambda: result.update(r=httpx.post(
            f"{server.url}/v1/embeddings", json={"input": "one word", "model": MODEL_NAME}, timeout=60)))
        small.start()
        _wait(lambda: batcher.queued == 2, what="the small request queued behind the large one")
        model.release.set()
        small.join(60)
        big.join(60)
    assert result["r"].status_code == 200
    # the large request's first chunk was running; one more chunk of it ran, then the small request had its turn
    assert [len(c) for c in model.calls[:3]] == [1, 1, 1] and model.calls[2] == ["one word"], model.calls[:4]
    assert sum(len(c) for c in model.calls) == len(texts) + 1


def test_client_disconnect_drops_the_remaining_chunks(live_server, m3_model, texts):
    server = live_server(max_batch_tokens=1)
    batcher = server.app.state.service.batcher
    model = _GatedModel(batcher)
    sock = _send_raw(server.url, {"input": texts, "model": MODEL_NAME})
    assert model.in_first.wait(30)  # chunk 1 of 24 is in the model
    assert batcher.queued == 1
    sock.close()  # the client gives up
    _wait(lambda: batcher.queued == 0, what="the abandoned request dropped from the queue")
    model.release.set()
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts[3], "model": MODEL_NAME}, timeout=60)
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], m3_model.encode(texts[3:4]).dense[0], atol=1e-5)
    metrics = httpx.get(f"{server.url}/metrics").text
    # the worker encoded the chunk it was running and the later request, none of the 23 dropped chunks
    assert model.calls == [texts[:1], texts[3:4]]
    assert _metric(metrics, "m3embed_batches_total") == 2 and _metric(metrics, "m3embed_batch_texts_sum") == 2
    assert re.search(r'm3embed_http_requests_total\{method="POST",route="/v1/embeddings",status="499"\} 1.0',
                     metrics), "the abandoned request is counted as 499"
