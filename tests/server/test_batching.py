"""The Batcher with the real model: merging, token budget, splitting, isolation of a failing request, shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from m3embed.modes import MODES
from m3embed.server.batching import Batcher, BatcherClosedError, BatchRecord, QueueFullError


def _batcher(model, records: list[BatchRecord], **kwargs) -> Batcher:
    def encode(texts, modes):
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
    b = Batcher(lambda t, m: m3_model.encode(t, modes=m), on_batch=lambda r: order.append(f"encode{r.requests}"))
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
