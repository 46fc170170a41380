"""Prometheus metrics of one app: HTTP traffic (an ASGI middleware) and the model worker's batches."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from m3embed.server.batching import BatchRecord

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class ServerMetrics:
    """The instruments, in a registry of their own (so several apps can live in one process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queued: Callable[[], int]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("m3embed_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("m3embed_http_request_duration_seconds", "HTTP request latency", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.in_progress = Gauge("m3embed_http_requests_in_progress", "HTTP requests being handled", registry=r)
        self.tokens = Counter("m3embed_tokens", "tokens encoded for clients (usage)", ["route"], registry=r)
        self.batches = Counter("m3embed_batches", "model encode calls made by the worker", registry=r)
        self.batch_requests = Histogram("m3embed_batch_requests", "requests merged into one model call",
                                        buckets=_SIZE_BUCKETS, registry=r)
        self.batch_texts = Histogram("m3embed_batch_texts", "texts per model call", buckets=_SIZE_BUCKETS,
                                     registry=r)
        self.batch_tokens = Histogram("m3embed_batch_tokens", "tokens per model call", buckets=_TOKEN_BUCKETS,
                                      registry=r)
        self.batch_seconds = Histogram("m3embed_batch_duration_seconds", "time of one model call",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        queue = Gauge("m3embed_queue_jobs", "jobs waiting for the model worker", registry=r)
        queue.set_function(lambda: float(queued()))

    def on_batch(self, rec: BatchRecord) -> None:
        self.batches.inc()
        self.batch_requests.observe(rec.requests)
        self.batch_texts.observe(rec.texts)
        self.batch_tokens.observe(rec.tokens)
        self.batch_seconds.observe(rec.seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of every instrument."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (not raw path, to keep label sets small)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.in_progress.dec()
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - t0)
