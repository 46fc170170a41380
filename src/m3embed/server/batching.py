"""Dynamic batching: one worker thread owns the model; requests are split into chunks and served in turn.

Sizes are padded tokens, texts × the longest text's tokens, as a forward pass pads every text to the longest
one (so a chunk of 400-token texts does not take in short queries that would be padded to 400 tokens). An
encode request is split, at submit time, into chunks of consecutive texts of at most `max_batch_tokens` padded
tokens (a longer text is a chunk of its own). Requests wait in one queue. For each model call the worker walks
the queue from the front and takes the next chunk of each request of the first one's role (query, passage or
none: one model method each) that still fits in `max_batch_tokens` (stopping at a call job), runs ONE encode
over them with the union of the requested modes, and sends the
requests that have chunks left to the back of the queue. So requests take turns chunk by chunk (round-robin):
a small request queued behind a 2,048-text one waits for about one chunk, not for the whole request, and
small requests queued together still share one model call. Each request's chunk outputs are joined in input
order once its last chunk is done.

A request whose future is cancelled (the client went away) leaves the queue at once; its remaining chunks are
never encoded. Other work that needs the model or must not overlap (scoring, index writes) runs as an exclusive
call job, in queue order among calls.

Shutdown has a deadline: `begin_shutdown(timeout)` (at SIGTERM) starts the clock while the work of requests
already in flight goes on (an upsert still queues its index write); at the deadline the worker fails what is
left with BatcherClosedError (the server answers 503) and takes no more jobs. `close` stops the worker once
the server has no requests left; only the model call in progress at the deadline still finishes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from m3embed.modes import MODES
from m3embed.types import M3Output

log = logging.getLogger(__name__)
T = TypeVar("T")


class QueueFullError(RuntimeError):
    """The request queue holds `max_queue` jobs; the client should retry later."""


class BatcherClosedError(RuntimeError):
    """The batcher has stopped taking jobs (shutdown), or its shutdown deadline came before the job was done."""


class EncodeFn(Protocol):
    def __call__(self, texts: list[str], modes: tuple[str, ...], role: str | None) -> M3Output: ...


@dataclass
class BatchRecord:
    """What one model call did (passed to `on_batch`, e.g. for metrics)."""

    requests: int
    texts: int
    tokens: int
    seconds: float


class _Chunk(NamedTuple):
    start: int  # texts[start:end] of its request
    end: int
    tokens: int  # of all its texts
    longest: int  # tokens of its longest text


def _padded(texts: int, longest: int) -> int:
    return texts * longest


@dataclass(eq=False)
class _Job:
    future: Future = field(default_factory=Future, init=False)
    finished: bool = field(default=False, init=False)  # answered, failed or cancelled (set under Batcher._lock)


@dataclass(eq=False)
class _EncodeJob(_Job):
    texts: list[str]
    modes: tuple[str, ...]
    role: str | None  # "query", "passage" or None: requests of one role share a model call
    chunks: deque[_Chunk]  # the chunks not yet handed to the model
    n_chunks: int
    parts: list[M3Output] = field(default_factory=list)  # outputs of the chunks done so far, in order


@dataclass(eq=False)
class _CallJob(_Job):
    fn: Callable[[], Any]


def split_chunks(counts: Sequence[int], budget: int) -> list[_Chunk]:
    """Consecutive runs of texts of at most `budget` padded tokens (a longer text forms its own run)."""
    chunks, start, total, longest = [], 0, 0, 0
    for i, n in enumerate(counts):
        if i > start and _padded(i - start + 1, max(longest, n)) > budget:
            chunks.append(_Chunk(start, i, total, longest))
            start, total, longest = i, 0, 0
        total, longest = total + n, max(longest, n)
    chunks.append(_Chunk(start, len(counts), total, longest))
    return chunks


class Batcher:
    """Owns a worker thread that runs every model call; splits large requests and merges small ones.

    Args:
        encode: runs one model encode of texts with the given modes, for a role (called on the worker thread only).
        max_batch_tokens: padded tokens (texts × longest text) per model call: requests are split into chunks
            of at most this size, and chunks of queued requests are merged while they fit.
        max_wait_s: how long the worker waits for more jobs once it has one (0: take only what is queued).
        enabled: False runs one chunk of one request per call (no merging), the baseline batching is measured
            against.
        max_queue: requests allowed to wait; beyond that `submit_*` raises QueueFullError.
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
        self._lock = threading.Lock()  # guards the queue, `_running`, `_closed` and every job's `finished`
        self._wakeup = threading.Condition(self._lock)  # a job arrived, or the batcher closed
        self._queue: deque[_Job] = deque()  # waiting jobs; an encode job stays here while it has chunks left
        self._running: list[_Job] = []  # the jobs of the model call in progress
        self._shutting_down = False  # begin_shutdown was called: the deadline is set
        self._closed = False  # no new jobs; the worker stops once the queue is empty
        self._deadline_timer: threading.Timer | None = None
        self._thread = threading.Thread(target=self._run, name="m3embed-model-worker", daemon=True)

    # ---- client side (any thread) ----

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        """Requests and calls waiting for the worker (a request counts while it has chunks left to encode)."""
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        """Shutdown has begun: the server takes no new requests, the ones in flight may still queue work."""
        return self._shutting_down

    @property
    def closed(self) -> bool:
        """No new jobs are taken (after `close`, or once the shutdown deadline has passed)."""
        return self._closed

    def submit_encode(self, texts: list[str], modes: tuple[str, ...], tokens: int | Sequence[int],
                      role: str | None = None) -> Future:
        """Queue texts of one `role` for encoding; the future resolves to their M3Output (input order).

        `tokens` is each text's token count (or their total, taken as spread evenly); it decides the chunks.
        Cancelling the future drops the chunks not yet encoded.
        """
        texts = list(texts)
        if isinstance(tokens, int):
            q, r = divmod(max(tokens, 1), max(len(texts), 1))
            tokens = [q + (i < r) for i in range(len(texts))]
        if len(tokens) != len(texts):
            raise ValueError(f"{len(tokens)} token counts for {len(texts)} texts")
        chunks = split_chunks([max(int(n), 1) for n in tokens], self.max_batch_tokens)
        return self._put(_EncodeJob(texts, tuple(modes), role, deque(chunks), len(chunks)))

    def submit_call(self, fn: Callable[[], T]) -> Future:
        """Queue `fn()` to run alone on the worker thread, after the calls (and chunks) queued before it."""
        return self._put(_CallJob(fn))

    async def encode(self, texts: list[str], modes: tuple[str, ...], tokens: int | Sequence[int],
                     role: str | None = None) -> M3Output:
        """`submit_encode`, awaited; cancelling the awaiting task drops the request's remaining chunks."""
        return await asyncio.wrap_future(self.submit_encode(texts, modes, tokens, role))

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.submit_call(fn))

    def _put(self, job: _Job) -> Future:
        with self._lock:
            if self._closed:
                raise BatcherClosedError("the server is shutting down; retry on another replica or later")
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(f"{self.max_queue} requests are already queued (--max-queue); retry later")
            self._queue.append(job)
            self._wakeup.notify()
        job.future.add_done_callback(lambda _: self._forget_if_cancelled(job))
        return job.future

    def _forget_if_cancelled(self, job: _Job) -> None:
        """Done-callback of every job: a cancelled one leaves the queue now, so none of its chunks runs."""
        if job.future.cancelled():
            with self._lock:
                job.finished = True
                self._remove(job)

    def begin_shutdown(self, timeout: float | None = None) -> None:
        """Start the shutdown clock: after `timeout` s (None: never) fail every job left and take no more.

        Jobs are still taken until then, so the requests in flight finish (an upsert queues its index write
        after its encode); refusing new requests is the server's part. Returns at once; only the first call
        sets the deadline.
        """
        with self._lock:
            if self._shutting_down:
                return
            self._shutting_down = True
            if timeout is not None:
                self._deadline_timer = threading.Timer(max(timeout, 0.0), self._expire)
                self._deadline_timer.daemon = True
                self._deadline_timer.start()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, run the queued ones (until the shutdown deadline, if any), then stop the worker.

        `timeout` starts the shutdown clock if `begin_shutdown` has not. At the deadline every request still
        waiting or being encoded fails with BatcherClosedError, and so does every call not yet started; the
        model call in progress (one chunk, or one call such as an index write) finishes before this returns.
        """
        self.begin_shutdown(timeout)
        with self._lock:
            self._closed = True
            self._wakeup.notify_all()
        if self._thread.ident is None:  # never started: nothing will run what is queued
            self._expire()
        else:
            self._thread.join()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()

    def _expire(self) -> None:
        """The shutdown deadline: fail the waiting jobs and the encode requests of the call in progress."""
        with self._lock:
            self._closed = True
            left = [*self._queue, *(j for j in self._running if isinstance(j, _EncodeJob))]
            self._queue.clear()
            self._wakeup.notify_all()
        if left:
            log.warning("shutdown deadline reached: failing %d unfinished request(s)", len(left))
        for job in left:
            self._finish(job, error=BatcherClosedError(
                "the server shut down before this request finished (--graceful-timeout); retry on another "
                "replica or later"))

    def _remove(self, job: _Job) -> None:  # under the lock
        try:
            self._queue.remove(job)
        except ValueError:
            pass

    def _finish(self, job: _Job, result: Any = None, error: BaseException | None = None) -> None:
        """Answer a job exactly once (the worker, a cancel and the deadline may race for it)."""
        with self._lock:
            if job.finished:
                return
            job.finished = True
            self._remove(job)
        # a started call is RUNNING already; anything else may have been cancelled by its client meanwhile
        if job.future.running() or job.future.set_running_or_notify_cancel():
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

    # ---- worker thread ----

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if not self._queue:  # closed, and nothing is left to run
                    return
                work = self._take()
            try:
                if isinstance(work, _CallJob):
                    self._run_call(work)
                elif work:
                    self._run_batch(work)
            finally:
                with self._lock:
                    self._running = []

    def _take(self) -> _CallJob | list[tuple[_EncodeJob, _Chunk]]:
        """Under the lock: a call job from the front, or the next chunk of each queued request that fits."""
        if isinstance(self._queue[0], _CallJob):
            job = self._queue.popleft()
            self._running = [job]
            return job
        if self.enabled and self.max_wait_s > 0:
            deadline = time.monotonic() + self.max_wait_s
            while (not self._closed and self._queued_size() < self.max_batch_tokens
                   and (wait := deadline - time.monotonic()) > 0):
                self._wakeup.wait(wait)
        batch: list[tuple[_EncodeJob, _Chunk]] = []
        texts = longest = 0
        for job in self._queue:
            if isinstance(job, _CallJob):  # calls keep their turn: what is queued behind one waits for it
                break
            chunk = job.chunks[0]
            size = _padded(texts + chunk.end - chunk.start, max(longest, chunk.longest))
            if batch and (size > self.max_batch_tokens or job.role != batch[0][0].role):
                continue  # does not fit this call; it keeps its place for the next one
            batch.append((job, job.chunks.popleft()))
            texts, longest = texts + chunk.end - chunk.start, max(longest, chunk.longest)
            if not self.enabled or size >= self.max_batch_tokens:
                break
        # round-robin: a request that gave a chunk goes to the back of the queue, or leaves it if none are left
        taken = {id(job) for job, _ in batch}
        self._queue = deque(j for j in self._queue if id(j) not in taken)
        self._queue.extend(job for job, _ in batch if job.chunks)
        self._running = [job for job, _ in batch]
        return batch

    def _queued_size(self) -> int:
        """Padded size of the next chunks of the queued requests up to the first call (a call: a full batch)."""
        texts = longest = 0
        for job in self._queue:
            if isinstance(job, _CallJob):
                return self.max_batch_tokens
            texts, longest = texts + job.chunks[0].end - job.chunks[0].start, max(longest, job.chunks[0].longest)
        return _padded(texts, longest)

    def _run_call(self, job: _CallJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            result = job.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting request
            self._finish(job, error=e)
        else:
            self._finish(job, result)

    def _run_batch(self, batch: list[tuple[_EncodeJob, _Chunk]]) -> None:
        batch = [(job, chunk) for job, chunk in batch if not job.finished]  # cancelled or expired meanwhile
        if not batch:
            return
        try:
            out = self._timed_encode(batch)
        except Exception as e:  # noqa: BLE001
            if len(batch) == 1:
                self._finish(batch[0][0], error=e)
                return
            # one request's texts may be what failed: retry each chunk alone so the others still succeed
            log.warning("merged batch of %d requests failed (%s); retrying them one by one", len(batch), e)
            for piece in batch:
                try:
                    self._deliver(piece[0], self._timed_encode([piece]))
                except Exception as e1:  # noqa: BLE001
                    self._finish(piece[0], error=e1)
            return
        start = 0
        for job, chunk in batch:
            size = chunk.end - chunk.start
            self._deliver(job, out.select(range(start, start + size)))
            start += size

    def _deliver(self, job: _EncodeJob, part: M3Output) -> None:
        """Store one chunk's output; the request is answered, in input order, with its last chunk."""
        if job.finished:
            return
        job.parts.append(_only(part, job.modes))
        if len(job.parts) == job.n_chunks:
            self._finish(job, M3Output.concat(job.parts) if job.n_chunks > 1 else job.parts[0])

    def _timed_encode(self, batch: list[tuple[_EncodeJob, _Chunk]]) -> M3Output:
        texts = [t for job, chunk in batch for t in job.texts[chunk.start:chunk.end]]
        modes = tuple(m for m in MODES if any(m in job.modes for job, _ in batch))
        t0 = time.perf_counter()
        out = self._encode(texts, modes, batch[0][0].role)
        if self._on_batch is not None:
            self._on_batch(BatchRecord(len(batch), len(texts), sum(chunk.tokens for _, chunk in batch),
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
