"""Encode on several devices of one machine: one worker process per device, each holding the model.

    with EncodePool("BAAI/bge-m3", devices=["cuda:0", "cuda:1"], dtype="float16") as pool:
        out = pool.encode(texts, modes=("dense", "sparse"))   # what one device returns, in input order

The texts are tokenized once here and cut into the token-budget batches one device would run (longest first);
runs of whole batches make chunks of about `chunk_tokens` tokens, so every text is encoded in the same batch as
on one device. The workers take chunks from one queue as they finish the previous one: a slow device takes fewer.
On CPU the cores are split between the workers. A worker that dies (killed, out of memory) makes `encode` raise
`WorkerDiedError`; the pool is then closed. Workers are started with `spawn`: a script that creates a pool must
guard its entry point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import os
import queue
import time
import traceback
from collections.abc import Sequence
from multiprocessing import connection
from typing import Any, Self

import numpy as np

from m3embed.modes import MODES, check_modes
from m3embed.tokenize import budget_batches, check_texts, resolve_max_length, tokenize
from m3embed.types import M3Output

CHUNK_TOKENS = 262_144  # largest chunk handed to a worker at once: big enough to keep a GPU busy
POLL_SECONDS = 0.2  # how often a waiting `encode` checks that its workers are alive


class WorkerDiedError(RuntimeError):
    """A worker process of an EncodePool exited while the pool was in use."""


class EncodePool:
    """Worker processes, one per device, that encode texts together; use it as a context manager or `close()` it.

    Args:
        model: checkpoint directory, shipped name or hub id (each worker loads it).
        devices: one entry per worker: "cpu" (repeat it for several CPU workers), "cuda:0", "cuda:1", ...
        modes: heads the workers must load (the modes later `encode` calls may ask for).
        dtype: float32, bfloat16 or float16 (GPU), as `M3Model.from_pretrained`.
        threads: torch threads per worker; default: the machine's cores split evenly between the workers.
        start_timeout: seconds to wait for every worker to load the model.
    """

    def __init__(self, model: str | os.PathLike, devices: Sequence[str], *, modes: Sequence[str] | str = MODES,
                 dtype: str = "float32", threads: int | None = None, start_timeout: float = 600.0) -> None:
        import torch.multiprocessing as mp

        if not devices:
            raise ValueError("devices must name at least one device, e.g. ['cpu', 'cpu'] or ['cuda:0', 'cuda:1']")
        self.devices = [str(d) for d in devices]
        self.modes = check_modes(modes)
        threads = threads or max(1, (os.cpu_count() or 1) // len(self.devices))
        ctx = mp.get_context("spawn")
        self._tasks = ctx.Queue()
        self._results = ctx.Queue()
        self._closed = False
        self._procs = [ctx.Process(target=_worker, daemon=True, name=f"m3embed-encode-{rank}",
                                   args=(rank, str(model), device, dtype, self.modes, threads, self._tasks,
                                         self._results))
                       for rank, device in enumerate(self.devices)]
        for p in self._procs:
            p.start()
        info: dict[int, dict[str, Any]] = {}
        try:
            deadline = time.monotonic() + start_timeout
            while len(info) < len(self._procs):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"EncodePool: {len(self._procs) - len(info)} worker(s) did not load {model} "
                                       f"within {start_timeout:.0f} s")
                kind, rank, _, payload = self._next()
                if kind == "error":
                    raise RuntimeError(f"EncodePool worker {rank} ({self.devices[rank]}) could not load {model}: "
                                       f"{payload}")
                info[rank] = payload
        except BaseException:
            self.close()
            raise
        self.fingerprint: str = info[0]["fingerprint"]
        self.max_length: int = info[0]["max_length"]
        self._batch_tokens = min(i["batch_tokens"] for i in info.values())  # the smallest device's default
        self._tokenizer = _load_tokenizer(str(model))

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, in device order."""
        return [p.pid for p in self._procs]

    def encode(self, texts: Sequence[str] | str, modes: Sequence[str] | str = ("dense",), *,
               max_length: int | None = None, batch_tokens: int | None = None, max_batch_size: int = 256,
               chunk_tokens: int | None = None) -> M3Output:
        """Encode texts on every worker; returns what `M3Model.encode` returns on one device, in input order.

        Args:
            texts, modes, max_length, batch_tokens, max_batch_size: as `M3Model.encode`; batch_tokens
                defaults to the smallest of the workers' defaults.
            chunk_tokens: padded tokens per chunk handed to a worker; default: a quarter of each worker's share,
                at most CHUNK_TOKENS.
        """
        if self._closed:
            raise RuntimeError("this EncodePool is closed; create a new one")
        modes = check_modes(modes)
        missing = [m for m in modes if m not in self.modes]
        if missing:
            raise ValueError(f"the pool's workers loaded modes {self.modes!r}, not {', '.join(missing)}; create "
                             f"the pool with modes including them")
        texts = check_texts(texts)
        max_length = resolve_max_length(max_length, self.max_length)
        if not texts:
            return M3Output.concat([])
        lengths = np.array([len(ids) for ids in tokenize(self._tokenizer, texts, max_length)], dtype=np.int64)
        batch_tokens = batch_tokens or self._batch_tokens
        batches = budget_batches(lengths, batch_tokens, max_batch_size)
        padded = [len(b) * int(lengths[b[0]]) for b in batches]  # the first text of a batch is its longest
        chunk_tokens = chunk_tokens or min(CHUNK_TOKENS, sum(padded) // (4 * len(self._procs)) + 1)
        chunks = _chunks(batches, padded, chunk_tokens)
        try:
            for c, idx in enumerate(chunks):
                self._tasks.put((c, [texts[i] for i in idx], modes, max_length, batch_tokens, max_batch_size))
            parts: list[M3Output | None] = [None] * len(chunks)
            for _ in chunks:
                kind, rank, c, payload = self._next()
                if kind == "error":
                    raise RuntimeError(f"EncodePool worker {rank} ({self.devices[rank]}) failed:\n{payload}")
                parts[c] = payload
        except BaseException:
            self.close()  # tasks may be left in the queue: the pool cannot be reused
            raise
        order = np.concatenate(chunks)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return M3Output.concat(parts).select(inverse)  # type: ignore[arg-type]

    def _next(self) -> tuple[str, int, int | None, Any]:
        """The next message of a worker; raise WorkerDiedError as soon as a worker has exited."""
        while True:
            # the sentinel (a pipe the worker holds) says it exited even if its exit status was collected elsewhere
            ended = set(connection.wait([p.sentinel for p in self._procs], timeout=0))
            for rank, p in enumerate(self._procs):
                if p.sentinel in ended or p.exitcode is not None:
                    error = self._last_error(rank)
                    if error is not None:
                        return error
                    p.join(timeout=1)
                    code = p.exitcode
                    how = ("exit status unknown" if code is None else
                           f"signal {-code}" if code < 0 else f"exit code {code}")
                    raise WorkerDiedError(
                        f"EncodePool worker {rank} ({self.devices[rank]}, pid {p.pid}) died ({how}; signal 9 is "
                        "a kill, often the out-of-memory killer); the pool is closed: create a new EncodePool, "
                        "with smaller batch_tokens if memory ran out")
            try:
                return self._results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue

    def _last_error(self, rank: int) -> tuple[str, int, int | None, Any] | None:
        """The error a worker that exited sent before (it could not load the model), if any; drains the queue."""
        while True:
            try:
                message = self._results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                return None
            if message[0] == "error" and message[1] == rank:
                return message

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for p in self._procs:
            if p.is_alive():
                self._tasks.put(None)
        deadline = time.monotonic() + 10
        for p in self._procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for q in (self._tasks, self._results):
            q.cancel_join_thread()
            q.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(batches: list[np.ndarray], padded: list[int], chunk_tokens: int) -> list[np.ndarray]:
    """Runs of consecutive whole batches holding at most `chunk_tokens` padded tokens (at least one batch each).

    Encoding a run (its texts in this order) cuts the same batches again: `budget_batches` is greedy from the
    start and its sort is stable.
    """
    chunks, run, total = [], [], 0
    for batch, tokens in zip(batches, padded):
        if run and total + tokens > chunk_tokens:
            chunks.append(np.concatenate(run))
            run, total = [], 0
        run.append(batch)
        total += tokens
    chunks.append(np.concatenate(run))
    return chunks


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    from m3embed.sources import resolve

    return AutoTokenizer.from_pretrained(resolve(model))


def _worker(rank: int, model: str, device: str, dtype: str, modes: tuple[str, ...], threads: int,
            tasks: Any, results: Any) -> None:
    """Load the model, then encode chunks from `tasks` until a None arrives."""
    import torch

    from m3embed.encode import default_batch_tokens
    from m3embed.model import M3Model

    torch.set_num_threads(threads)
    try:
        m = M3Model.from_pretrained(model, device=device, dtype=dtype, modes=modes)
    except Exception as e:  # noqa: BLE001 (reported to the parent, which raises it)
        results.put(("error", rank, None, f"{type(e).__name__}: {e}"))
        return
    results.put(("ready", rank, None, {"fingerprint": m.fingerprint, "max_length": m.max_length,
                                       "batch_tokens": default_batch_tokens(m.device, m.hidden_size)}))
    while (task := tasks.get()) is not None:
        c, texts, modes, max_length, batch_tokens, max_batch_size = task
        try:
            out = m.encode(texts, modes, max_length=max_length, batch_tokens=batch_tokens,
                           max_batch_size=max_batch_size, progress=False)
            results.put(("done", rank, c, out))
        except Exception:  # noqa: BLE001
            results.put(("error", rank, c, traceback.format_exc()))
