"""The Batcher with the real model: merging, token budget, splitting, isolation of a failing request, shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from m3embed.modes import MODES
from m3embed.server.batching import Batcher, BatcherClosedError, BatchRecord, QueueFullError


def _batcher(model, records: list[BatchRecord], **kwargs) -> Batcher:
    def encode(texts, modes, role):
        return model.encode(texts, modes=modes, progress=False)

    return Batcher(encode, on_batch=records.append, **kwargs)


def _assert_same(out, ref, modes) -> None:
    for mode in MODES:
        if mode not in modes:
            assert getattr(out, mode) is None, f"{mode} was not requested"
    if "dense" in modes:
        np.testing.assert_allclose(out.dense, ref.dense, atol=1e-5)
    if "sparse" in modes:
        for a, b in zip(out.sparse_vectors(), ref.sparse_vectors()):
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_allclose(a.weights, b.weights, atol=1e-5)
    if "colbert" in modes:
        for a, b in zip(out.colbert, ref.colbert):
            np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(out.n_tokens, ref.n_tokens)


def test_queued_requests_share_one_call_and_get_their_own_rows(m3_model, texts):
    records: list[BatchRecord] = []
    b = _batcher(m3_model, records, max_batch_tokens=10**6)
    jobs = [(texts[0:3], ("dense",)), (texts[3:4], ("sparse",)), (texts[4:9], ("colbert", "dense")),
            (texts[9:11], MODES)]
    futures = [b.submit_encode(t, m, tokens=100) for t, m in jobs]  # queued before the worker starts
    b.start()
    try:
        results = [f.result(timeout=60) for f in futures]
    finally:
        b.close()
    assert len(records) == 1 and records[0].requests == 4 and records[0].texts == 11
    for (t, modes), out in zip(jobs, results):
        _assert_same(out, m3_model.encode(t, modes=modes), modes)


def test_token_budget_bounds_each_call(m3_model, texts):
    records: list[BatchRecord] = []
    b = _batcher(m3_model, records, max_batch_tokens=25)
    futures = [b.submit_encode([t], ("dense",), tokens=10) for t in texts[:5]]
    b.start()
    [f.result(timeout=60) for f in futures]
    b.close()
    assert [r.requests for r in records] == [2, 2, 1]
    assert all(r.tokens <= 25 for r in records)


def test_disabled_runs_one_request_per_call(m3_model, texts):
    records: list[BatchRecord] = []
    b = _batcher(m3_model, records, enabled=False)
    futures = [b.submit_encode([t], ("dense",), tokens=10) for t in texts[:4]]
    b.start()
    outs = [f.result(timeout=60) for f in futures]
    b.close()
    assert [r.requests for r in records] == [1, 1, 1, 1]
    np.testing.assert_allclose(np.concatenate([o.dense for o in outs]), m3_model.encode(texts[:4]).dense, atol=1e-5)


def test_a_failing_request_does_not_fail_the_others(m3_model, texts):
    records: list[BatchRecord] = []
    b = _batcher(m3_model, records)
    good1 = b.submit_encode(texts[:2], ("dense",), tokens=10)
    bad = b.submit_encode([b"not text"], ("dense",), tokens=10)  # the model refuses bytes
    good2 = b.submit_encode(texts[2:3], ("dense",), tokens=10)
    b.start()
    try:
        with pytest.raises(TypeError, match="bytes"):
            bad.result(timeout=60)
        np.testing.assert_allclose(good1.result(timeout=60).dense, m3_model.encode(texts[:2]).dense, atol=1e-5)
        np.testing.assert_allclose(good2.result(timeout=60).dense, m3_model.encode(texts[2:3]).dense, atol=1e-5)
    finally:
        b.close()


def test_calls_run_alone_and_in_order(m3_model, texts):
    order: list[str] = []
    b = Batcher(lambda t, m, r: m3_model.encode(t, modes=m), on_batch=lambda r: order.append(f"encode{r.requests}"))
    f1 = b.submit_encode(texts[:1], ("dense",), tokens=10)
    f2 = b.submit_encode(texts[1:2], ("dense",), tokens=10)
    call = b.submit_call(lambda: order.append("call") or 42)
    f3 = b.submit_encode(texts[2:3], ("dense",), tokens=10)
    b.start()
    assert call.result(timeout=60) == 42
    [f.result(timeout=60) for f in (f1, f2, f3)]
    b.close()
    assert order == ["encode2", "call", "encode1"]


def test_close_finishes_queued_work_then_refuses(m3_model, texts):
    records: list[BatchRecord] = []
    b = _batcher(m3_model, records, enabled=False)
    release = threading.Event()
    blocker = b.submit_call(release.wait)
    queued = [b.submit_encode([t], ("dense",), tokens=10) for t in texts[:3]]
    b.start()
    closer = threading.Thread(target=b.close)
    closer.start()
    deadline = time.monotonic() + 30
    while not b.closed and time.monotonic() < deadline:  # close() marks it closed, then waits for the worker
        time.sleep(0.001)
    with pytest.raises(BatcherClosedError):
        b.submit_encode(["late"], ("dense",), tokens=1)
    assert not closer.join(0.2) and closer.is_alive()  # still waiting: the blocker holds the worker
    release.set()
    closer.join(60)
    assert blocker.done() and all(f.done() and f.exception() is None for f in queued)
    assert len(records) == 3


def test_full_queue_and_cancelled_requests(m3_model, texts):
    records: list[BatchRecord] = []
    b = _batcher(m3_model, records, max_queue=2)
    cancelled = b.submit_encode(texts[:5], ("dense",), tokens=10)
    kept = b.submit_encode(texts[5:6], ("dense",), tokens=10)
    with pytest.raises(QueueFullError, match="2 requests"):
        b.submit_encode(texts[6:7], ("dense",), tokens=10)
    assert cancelled.cancel()
    b.start()
    kept.result(timeout=60)
    b.close()
    assert [r.texts for r in records] == [1]  # the cancelled request was never encoded


# ---- splitting, turns, cancellation, shutdown deadline ----


def test_split_request_equals_one_unsplit_encode(m3_model, texts):
    """A request split into chunks (merged with another request's) gets exactly what one encode gives."""
    records: list[BatchRecord] = []
    b = _batcher(m3_model, records, max_batch_tokens=60)
    counts = [int(n) for n in m3_model.encode(texts).n_tokens]
    big = b.submit_encode(texts, MODES, tokens=counts)
    small = b.submit_encode(texts[:2], ("sparse",), tokens=counts[:2])
    b.start()
    try:
        _assert_same(big.result(timeout=60), m3_model.encode(texts, modes=MODES), MODES)
        _assert_same(small.result(timeout=60), m3_model.encode(texts[:2], modes=("sparse",)), ("sparse",))
    finally:
        b.close()
    assert len(records) > 3 and sum(r.texts for r in records) == len(texts) + 2
    assert all(r.tokens <= 60 or r.texts == 1 for r in records)


def test_split_chunks_respect_the_budget():
    from m3embed.server.batching import split_chunks

    assert split_chunks([3, 3, 3, 3], 6) == [(0, 2, 6, 3), (2, 4, 6, 3)]
    assert split_chunks([5, 20, 1, 1], 6) == [(0, 1, 5, 5), (1, 2, 20, 20), (2, 4, 2, 1)]  # a long text alone
    assert split_chunks([4], 6) == [(0, 1, 4, 4)]
    assert split_chunks([1, 1, 4, 1], 8) == [(0, 2, 2, 1), (2, 4, 5, 4)]  # sizes are padded: 3 texts x 4 > 8


class _Recorder:
    """A fake model: text "t<k>" encodes to [k]; records the texts of each call; `gate` can hold a call."""

    def __init__(self, gate_call: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate_call = gate_call
        self.in_gate, self.release = threading.Event(), threading.Event()

    def __call__(self, texts: list[str], modes: tuple[str, ...], role: str | None):
        from m3embed.types import M3Output

        self.calls.append(list(texts))
        if len(self.calls) == self.gate_call:
            self.in_gate.set()
            assert self.release.wait(30)
        return M3Output(dense=np.array([[float(t[1:])] for t in texts], dtype=np.float32),
                        n_tokens=np.full(len(texts), 10))


def _ids(start: int, n: int) -> list[str]:
    return [f"t{k}" for k in range(start, start + n)]


def test_requests_take_turns_and_small_ones_wait_one_chunk():
    model = _Recorder()
    b = Batcher(model, max_batch_tokens=40)
    a = b.submit_encode(_ids(0, 12), ("dense",), tokens=[10] * 12)  # 3 chunks of 4 texts
    c = b.submit_encode(_ids(100, 8), ("dense",), tokens=[10] * 8)  # 2 chunks
    small = b.submit_encode(["t999"], ("dense",), tokens=[10])
    b.start()
    outs = [f.result(timeout=30) for f in (a, c, small)]
    b.close()
    # one chunk per request per turn; the small request, queued behind 5 chunks, waits for 2 of them
    assert model.calls == [_ids(0, 4), _ids(100, 4), ["t999"], _ids(4, 4), _ids(104, 4), _ids(8, 4)]
    np.testing.assert_array_equal(outs[0].dense[:, 0], np.arange(12))  # reassembled in input order
    np.testing.assert_array_equal(outs[1].dense[:, 0], np.arange(100, 108))
    assert outs[2].dense[0, 0] == 999


def test_small_requests_ride_along_with_a_chunk_that_leaves_room():
    model = _Recorder()
    b = Batcher(model, max_batch_tokens=40)
    big = b.submit_encode(_ids(0, 6), ("dense",), tokens=[10] * 6)  # chunks of 40 and 20 tokens
    smalls = [b.submit_encode([f"t{k}"], ("dense",), tokens=[10]) for k in (50, 51, 52)]
    b.start()
    [f.result(timeout=30) for f in (big, *smalls)]
    b.close()
    assert model.calls == [_ids(0, 4), ["t50", "t51", "t52"], _ids(4, 2)]  # the third small one fits nowhere else


def test_short_requests_are_not_padded_to_a_long_chunk():
    model = _Recorder()
    b = Batcher(model, max_batch_tokens=100)
    big = b.submit_encode(_ids(0, 4), ("dense",), tokens=[40] * 4)  # chunks of 2 texts: 80 padded tokens
    smalls = [b.submit_encode([f"t{k}"], ("dense",), tokens=[5]) for k in (50, 51)]
    b.start()
    [f.result(timeout=30) for f in (big, *smalls)]
    b.close()
    assert model.calls == [_ids(0, 2), ["t50", "t51"], _ids(2, 2)]  # 3 texts padded to 40 would be 120 > 100


def test_cancelling_a_split_request_drops_its_remaining_chunks():
    model = _Recorder(gate_call=1)
    records: list[BatchRecord] = []
    b = Batcher(model, max_batch_tokens=20, on_batch=records.append)
    big = b.submit_encode(_ids(0, 10), ("dense",), tokens=[10] * 10)  # 5 chunks
    b.start()
    assert model.in_gate.wait(30)  # the first chunk is being encoded
    assert b.queued == 1
    assert big.cancel()
    assert b.queued == 0  # the other 4 chunks left the queue at once
    model.release.set()
    after = b.submit_encode(["t7"], ("dense",), tokens=[10])
    assert after.result(timeout=30).dense[0, 0] == 7
    b.close()
    assert model.calls == [_ids(0, 2), ["t7"]] and len(records) == 2


def test_shutdown_deadline_fails_what_is_left():
    model = _Recorder(gate_call=2)
    b = Batcher(model, max_batch_tokens=20)
    b.start()
    big = b.submit_encode(_ids(0, 10), ("dense",), tokens=[10] * 10)  # 5 chunks
    assert model.in_gate.wait(30)  # chunk 2 is being encoded
    waiting_call = b.submit_call(lambda: "never runs")
    b.begin_shutdown(0.2)
    assert b.shutting_down and not b.closed
    during = b.submit_encode(["t5"], ("dense",), tokens=[10])  # requests in flight may still queue work
    with pytest.raises(BatcherClosedError, match="graceful-timeout"):
        big.result(timeout=10)  # failed at the deadline, while its chunk still runs
    for f in (waiting_call, during):
        with pytest.raises(BatcherClosedError):
            f.result(timeout=10)
    assert b.closed and b.queued == 0
    with pytest.raises(BatcherClosedError, match="shutting down"):
        b.submit_encode(["t1"], ("dense",), tokens=[10])
    model.release.set()
    t0 = time.monotonic()
    b.close()  # the worker only finishes the chunk in progress
    assert time.monotonic() - t0 < 5 and len(model.calls) == 2


def test_running_call_finishes_at_the_deadline():
    b = Batcher(lambda t, m, r: None)
    started, release = threading.Event(), threading.Event()
    b.start()
    running = b.submit_call(lambda: (started.set(), release.wait(30))[1] and "written")
    assert started.wait(30)
    b.begin_shutdown(0.05)
    time.sleep(0.2)  # past the deadline: a started call (e.g. an index write) is not failed half-way
    release.set()
    b.close()
    assert running.result(timeout=1) == "written"
