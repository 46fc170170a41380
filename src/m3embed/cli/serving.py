"""`m3embed serve`: the HTTP service over a model and, optionally, an index."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from m3embed._optional import require
from m3embed.cli._common import (
    DEFAULT_MODEL,
    DeviceOpt,
    DtypeOpt,
    PairMaxLengthOpt,
    _index_model,
    _load,
    _load_reranker,
    app,
    console,
)


def _mib(value: float) -> int:
    return int(value * 2**20)


@app.command()
def serve(  # the options named as ServerSettings fields fill it
    model: str | None = typer.Option(None, "--model", "-m", help="checkpoint dir, shipped name or hub id (default: "
                                     f"the model --index records, else {DEFAULT_MODEL})"),
    index: Path | None = typer.Option(None, help="index directory to serve /v1/search and /v1/documents"),
    reranker: str | None = typer.Option(None, help="cross-encoder (dir, shipped name or hub id) to serve /v1/rerank "
                                                   "and /v1/search's rerank; clients name it by this value"),
    pair_max_length: int | None = PairMaxLengthOpt,
    host: str = typer.Option("127.0.0.1", help="interface to listen on (loopback by default)"),
    port: int = typer.Option(8000, help="TCP port"),
    api_key: str | None = typer.Option(None, envvar="M3EMBED_API_KEY",
                                          help="require 'Authorization: Bearer KEY' on /v1/* and /metrics"),
    model_name: str | None = typer.Option(None, "--served-model-name",
                                          help="name clients pass as `model` (default: --model)"),
    max_length: int | None = typer.Option(None, help="tokens per text, longer ones truncated (default: model limit)"),
    max_items: int = typer.Option(2048, help="texts, pairs or documents per request"),
    max_chars: int = typer.Option(100_000, help="characters per text"),
    max_body_bytes: float = typer.Option(32.0, "--max-body-mb", callback=_mib, help="request body limit in MiB"),
    max_response_bytes: float = typer.Option(256.0, "--max-response-mb", callback=_mib,
                                             help="response limit in MiB (estimated before encoding; /v1/encode's "
                                             "ColBERT rows take ~21 bytes a float as JSON, ~5.4 in base64)"),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="merge concurrent requests"),
    max_batch_tokens: int | None = typer.Option(
        None, help="padded tokens (texts x longest) per model call; larger requests are split into chunks of this "
        "size that take turns with other requests, smaller ones merged (default: 1024 on CPU, 16384 on GPU)"),
    max_wait_ms: float = typer.Option(0.0, help="extra wait to fill a batch (0: merge what queued meanwhile)"),
    batch_tokens: int | None = typer.Option(None, help="padded tokens per forward pass inside a model call"),
    max_queue: int = typer.Option(4096, help="queued requests beyond which the server answers 503"),
    graceful_timeout: float = typer.Option(30.0, help="seconds queued and in-flight requests get on shutdown "
                                                      "(SIGTERM); what is left then gets a 503"),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Serve the model (and an index) over HTTP: OpenAI-compatible /v1/embeddings plus all of M3."""
    options = dict(locals())  # the parameters above, before any other local name exists
    import os
    import signal
    from dataclasses import fields

    require("uvicorn", "serve")  # also when m3embed.server was imported before (its own check ran then)
    from m3embed.server import Server, ServerSettings, create_app

    # tokenizers' own thread pool takes every core while it tokenizes: counting a 2,048-text request's tokens held
    # up the event loop and the model worker for over a second on 2 cores (every other client waited); tokenize on
    # the calling thread instead (TOKENIZERS_PARALLELISM=true overrides)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    settings = ServerSettings(**{f.name: options[f.name] for f in fields(ServerSettings) if f.name in options})
    _check_port_free(host, port)
    idx = None
    if index is not None:
        from m3embed.index import open_index

        idx = open_index(index)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:  # the model the index records unless --model says otherwise (another model is refused)
        m = _index_model(idx, model, dtype, device) if idx else _load(model or DEFAULT_MODEL, ("dense",), dtype, device)
        cross = _load_reranker(reranker, dtype, device, pair_max_length) if reranker else None
    except BaseException:
        if idx is not None:
            idx.close()
        raise
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the previous handler: make
    # that handler end `run` with an exception, so the index is closed below and the exit status is 0
    previous = signal.signal(signal.SIGTERM, _stop_serving)
    try:
        web = create_app(m, idx, settings, cross)
        console.print(f"serving {settings.model_name or m.name} ({', '.join(m.available_modes())}"
                      f"{'; index ' + str(index) if idx is not None else ''}"
                      f"{'; reranker ' + reranker if cross is not None else ''}) on http://{host}:{port}"
                      f"{' with an API key' if settings.api_key else ''}", markup=False)
        server = Server(web, host=host, port=port, log_level=log_level)
        server.run()
        if not server.started:  # as uvicorn.run: the socket or the app's startup failed (uvicorn logged why)
            sys.exit(3)
    except (_StopServing, KeyboardInterrupt):
        console.print("server stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if idx is not None:
            idx.close()


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading anything when the address is taken (uvicorn would exit after start-up)."""
    import socket

    if not 1 <= port <= 65535:  # was a 40-line OverflowError traceback from bind()
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    try:
        socket.create_server((host, port)).close()
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or stop the "
                         "process using it") from None


class _StopServing(Exception):
    """Raised by the SIGTERM handler once uvicorn has finished its graceful shutdown."""


def _stop_serving(signum: int, frame: object) -> None:
    raise _StopServing
