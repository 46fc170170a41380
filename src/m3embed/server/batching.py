"""Dynamic batching: one worker thread owns the model and merges concurrent requests into token-budget batches.

Requests queue as jobs. The worker takes the oldest job, then keeps taking queued encode jobs (waiting at most
`max_wait_s` for more) while their tokens fit in `max_batch_tokens`; it runs ONE encode over the merged texts
with the union of the requested modes and hands each job its own rows. Other work that needs the model or must
not overlap (scoring, index writes) runs as an exclusive call job, in queue order.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from m3embed.modes import MODES
from m3embed.types import M3Output

log = logging.getLogger(__name__)
T = TypeVar("T")


class QueueFullError(RuntimeError):
    """The request queue holds `max_queue` jobs; the client should retry later."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new jobs."""


class EncodeFn(Protocol):
    def __call__(self, texts: list[str], modes: tuple[str, ...]) -> M3Output: ...


@dataclass
class BatchRecord:
    """What one model call did (passed to `on_batch`, e.g. for metrics)."""

    requests: int
    texts: int
    tokens: int
    seconds: float


@dataclass
class _EncodeJob:
    texts: list[str]
    modes: tuple[str, ...]
    tokens: int
    future: Future = field(default_factory=Future)


@dataclass
class _CallJob:
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


_STOP = object()


class Batcher:
    """Owns a worker thread that runs every model call; merges concurrent encode requests.

    Args:
        encode: runs one model encode of texts with the given modes (called on the worker thread only).
        max_batch_tokens: merge queued encode jobs while their token counts sum to at most this.
        max_wait_s: how long the worker waits for more jobs once it has one (0: take only what is queued).
        enabled: False runs one request at a time (no merging), the baseline batching is measured against.
        max_queue: jobs allowed to wait; beyond that `submit_*` raises QueueFullError.
        on_batch: called on the worker thread after each model call with a BatchRecord.
    """

    def __init__(self, encode: EncodeFn, *, max_batch_tokens: int = 16384, max_wait_s: float = 0.0,
                 enabled: bool = True, max_queue: int = 4096,
                 on_batch: Callable[[BatchRecord], None] | None = None) -> None:
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._encode = encode
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.enabled = enabled
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # makes "check closed, then enqueue" atomic against close()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="m3embed-model-worker", daemon=True)

    # ---- client side (any thread) ----

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker (not counting the batch it is running)."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit_encode(self, texts: list[str], modes: tuple[str, ...], tokens: int) -> Future:
        """Queue texts for encoding; the future resolves to their M3Output (input order)."""
        return self._put(_EncodeJob(list(texts), tuple(modes), max(int(tokens), 1)))

    def submit_call(self, fn: Callable[[], T]) -> Future:
        """Queue `fn()` to run alone on the worker thread, after the jobs queued before it."""
        return self._put(_CallJob(fn))

    async def encode(self, texts: list[str], modes: tuple[str, ...], tokens: int) -> M3Output:
        return await asyncio.wrap_future(self.submit_encode(texts, modes, tokens))

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.submit_call(fn))

    def _put(self, job: _EncodeJob | _CallJob) -> Future:
        with self._lock:
            if self._closed:
                raise BatcherClosedError("the server is shutting down; retry on another replica or later")
            if self._queue.qsize() >= self.max_queue:
                raise QueueFullError(f"{self.max_queue} requests are already queued (--max-queue); retry later")
            self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish every queued one, then stop the worker (waits up to `timeout` s)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- worker thread ----

    def _run(self) -> None:
        held = None  # a job taken while filling a batch that did not fit; it starts the next round
        while True:
            job = held if held is not None else self._queue.get()
            held = None
            if job is _STOP:
                return
            if isinstance(job, _CallJob):
                self._run_call(job)
                continue
            batch, held = self._collect(job)
            self._run_batch(batch)

    def _collect(self, first: _EncodeJob) -> tuple[list[_EncodeJob], object | None]:
        batch, tokens = [first], first.tokens
        if not self.enabled:
            return batch, None
        deadline = time.monotonic() + self.max_wait_s
        while tokens < self.max_batch_tokens:
            wait = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(job, _EncodeJob) or tokens + job.tokens > self.max_batch_tokens:
                return batch, job
            batch.append(job)
            tokens += job.tokens
        return batch, None

    def _run_call(self, job: _CallJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn())
        except BaseException as e:  # noqa: BLE001 - handed to the waiting request
            job.future.set_exception(e)

    def _run_batch(self, batch: list[_EncodeJob]) -> None:
        batch = [j for j in batch if j.future.set_running_or_notify_cancel()]  # drop cancelled requests
        if not batch:
            return
        try:
            out = self._timed_encode(batch)
        except Exception as e:  # noqa: BLE001
            if len(batch) == 1:
                batch[0].future.set_exception(e)
                return
            # one request's texts may be what failed: retry each alone so the others still succeed
            log.warning("merged batch of %d requests failed (%s); retrying them one by one", len(batch), e)
            for job in batch:
                try:
                    job.future.set_result(self._timed_encode([job]))
                except Exception as e1:  # noqa: BLE001
                    job.future.set_exception(e1)
            return
        start = 0
        for job in batch:
            end = start + len(job.texts)
            job.future.set_result(_only(out.select(range(start, end)), job.modes))
            start = end

    def _timed_encode(self, batch: list[_EncodeJob]) -> M3Output:
        texts = [t for job in batch for t in job.texts]
        modes = tuple(m for m in MODES if any(m in job.modes for job in batch))
        t0 = time.perf_counter()
        out = self._encode(texts, modes)
        if self._on_batch is not None:
            self._on_batch(BatchRecord(len(batch), len(texts), sum(j.tokens for j in batch),
                                       time.perf_counter() - t0))
        return out


def _only(out: M3Output, modes: tuple[str, ...]) -> M3Output:
    """Drop the outputs a job did not ask for (merged batches compute the union of modes)."""
    return M3Output(
        dense=out.dense if "dense" in modes else None,
        sparse=out.sparse if "sparse" in modes else None,
        colbert=out.colbert if "colbert" in modes else None,
        n_tokens=out.n_tokens,
    )
