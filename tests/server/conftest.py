"""Live servers for the HTTP tests: uvicorn on a free 127.0.0.1 port, in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from m3embed.model import M3Model
from m3embed.server import ServerSettings, create_app
from m3embed.server.app import Server
from m3testkit.checkpoints import sample_texts

MODEL_NAME = "tiny-m3"


class LiveServer:
    """Runs an app with uvicorn (as `m3embed serve` does) in a background thread; `url` is its base address."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = Server(app, log_level="warning", lifespan="on")
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self, timeout: float = 30.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url} within {timeout} s")
            time.sleep(0.01)
        return self

    def request_exit(self) -> None:
        """What SIGTERM does: stop accepting, finish in-flight requests, run the lifespan shutdown."""
        self.server.should_exit = True

    def stop(self, timeout: float = 60.0) -> None:
        self.request_exit()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"server {self.url} did not stop within {timeout} s")

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


@pytest.fixture(scope="session")
def m3_model(xlmr_ckpt: Path) -> M3Model:
    """The tiny XLM-R checkpoint with all three heads (read-only: servers and references share it)."""
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu")


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return sample_texts(24, seed=3)


@pytest.fixture
def live_server(m3_model: M3Model) -> Iterator[Callable[..., LiveServer]]:
    """`live_server(index=None, **settings)` starts a server for this test; all are stopped at teardown."""
    started: list[LiveServer] = []

    def start(index=None, **settings) -> LiveServer:
        settings.setdefault("model_name", MODEL_NAME)
        server = LiveServer(create_app(m3_model, index, ServerSettings(**settings))).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.running:
            server.stop()


@pytest.fixture(scope="module")
def shared_server(m3_model: M3Model) -> Iterator[LiveServer]:
    """One default server shared by the read-only tests of a module."""
    server = LiveServer(create_app(m3_model, None, ServerSettings(model_name=MODEL_NAME))).start()
    yield server
    server.stop()
