"""Every model route against a real `m3embed serve` on 127.0.0.1: /v1/score and /v1/rerank split into chunks that
take turns with other requests, dropped when the client hangs up, and answered 503 (not 500) at SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from m3testkit.checkpoints import sample_texts

MODEL_NAME = "tiny-m3"
LONG = [" ".join(sample_texts(2000, seed=4)[i * 12:(i + 1) * 12]) for i in range(160)]  # ~300-500 tokens each


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


class Serve:
    """`m3embed serve` in a subprocess, with this tree on PYTHONPATH."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", "from m3embed.cli import main; main()", "serve", "--port", str(self.port),
               "--served-model-name", MODEL_NAME, "--log-level", "warning", "--device", "cpu", *args]
        self.proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.proc.stdout.read()}")
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 120, "server up")

    def queued(self) -> int:
        return httpx.get(f"{self.url}/health", timeout=10).json()["queued"]

    def in_flight(self) -> bool:
        """A request besides this /metrics one is in progress."""
        return "m3embed_http_requests_in_progress 2.0" in httpx.get(f"{self.url}/metrics", timeout=10).text

    def send_raw(self, path: str, body: dict) -> socket.socket:
        """POST on a plain socket, so the test can hang up without reading the answer."""
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return sock

    def small(self) -> float:
        """Seconds a one-word /v1/embeddings takes."""
        t0 = time.monotonic()
        r = httpx.post(f"{self.url}/v1/embeddings", json={"input": "one word", "model": MODEL_NAME}, timeout=60)
        assert r.status_code == 200, r.text
        return time.monotonic() - t0

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return self.proc.stdout.read()


BIG = {"/v1/score": {"pairs": [[t, u] for t in LONG[:32] for u in LONG[32:64]][:1024]},
       "/v1/rerank": {"query": LONG[0], "documents": [LONG[i % 160] for i in range(2048)]}}


@pytest.fixture(scope="module")
def serve(bert_ckpt, bert_reranker) -> Iterator[Serve]:
    server = Serve("--model", str(bert_ckpt), "--reranker", str(bert_reranker), "--max-batch-tokens", "512")
    yield server
    server.stop()


@pytest.mark.parametrize("route", ["/v1/score", "/v1/rerank"])
def test_a_large_request_takes_turns_and_is_dropped_when_its_client_leaves(serve: Serve, route: str) -> None:
    """Was one unsplit worker call: other clients waited until their timeout, and the work went on after the large
    client hung up (a one-word request three minutes later waited 80 s / 143 s)."""
    sock = serve.send_raw(route, BIG[route])
    try:
        _wait(serve.in_flight, 30, f"the {route} request in flight")
        time.sleep(0.5)  # it is being worked on
        waits = [serve.small() for _ in range(3)]
        sock.settimeout(0.01)
        with pytest.raises((TimeoutError, BlockingIOError)):  # the large request is still going
            assert not sock.recv(1)
    finally:
        sock.close()  # the client gives up
    _wait(lambda: serve.queued() == 0, 10, "the abandoned request dropped")
    assert max(waits) < 3.0, waits  # about one chunk each, beside a request of many seconds
    assert serve.small() < 1.0  # the abandoned work is not done


def test_sigterm_during_a_large_score_is_503_and_bounded(bert_ckpt) -> None:
    """Was HTTP 500 with a CancelledError traceback and an exit 124 s after SIGTERM with --graceful-timeout 30; new
    requests during the drain got "connection refused"."""
    graceful = 2.0
    server = Serve("--model", str(bert_ckpt), "--max-batch-tokens", "512", "--graceful-timeout", str(graceful))
    result: dict = {}

    def big() -> None:
        result["r"] = httpx.post(f"{server.url}/v1/score", json=BIG["/v1/score"], timeout=60)

    thread = threading.Thread(target=big, daemon=True)
    try:
        thread.start()
        _wait(server.in_flight, 30, "the score request in flight")
        time.sleep(0.3)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        during = httpx.post(f"{server.url}/v1/embeddings", json={"input": "x", "model": MODEL_NAME}, timeout=10)
        thread.join(30)
        answered = time.monotonic() - t0
        code = server.proc.wait(30)
        exited = time.monotonic() - t0
    finally:
        log = server.stop()
    assert during.status_code == 503 and during.json()["error"]["code"] == "shutting_down", during.text
    r = result["r"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", r.text
    assert answered < graceful + 2, answered
    assert code == 0 and exited < graceful + 8, (exited, log)
    assert "Traceback" not in log and "CancelledError" not in log, log
