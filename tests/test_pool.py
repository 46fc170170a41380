"""EncodePool: two CPU worker processes return exactly what one process returns; a dead worker is an error."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from m3embed.model import M3Model
from m3embed.pool import EncodePool, WorkerDiedError
from m3testkit.checkpoints import sample_texts

MODES = ("dense", "sparse", "colbert")


def test_two_workers_equal_one_process_and_a_dead_worker_is_named(xlmr_ckpt: Path) -> None:
    texts = sample_texts(150, seed=5)
    texts[7] = texts[7] * 6  # a long one (truncated at 128 tokens)
    ref = M3Model.from_pretrained(xlmr_ckpt, device="cpu").encode(texts, MODES)
    with EncodePool(xlmr_ckpt, ["cpu", "cpu"], threads=1) as pool:
        assert len(pool.pids) == 2
        out = pool.encode(texts, MODES, batch_tokens=1024, chunk_tokens=2048)  # several chunks per worker
        ref_small = M3Model.from_pretrained(xlmr_ckpt, device="cpu").encode(texts, MODES, batch_tokens=1024)
        for got, want in ((out, ref_small), (pool.encode(texts, MODES), ref)):
            assert np.abs(got.dense - want.dense).max() <= 1e-6
            assert np.array_equal(got.sparse.indices, want.sparse.indices)  # same keys, in input order
            assert np.array_equal(got.sparse.indptr, want.sparse.indptr)
            assert np.abs(got.sparse.data - want.sparse.data).max() <= 1e-6
            assert all(np.abs(a - b).max() <= 1e-6 for a, b in zip(got.colbert, want.colbert))
            assert np.array_equal(got.n_tokens, want.n_tokens)
        os.kill(pool.pids[1], signal.SIGKILL)
        while psutil.Process(pool.pids[1]).status() != psutil.STATUS_ZOMBIE:  # dead (not yet reaped by the pool)
            time.sleep(0.01)
        with pytest.raises(WorkerDiedError, match=r"worker 1 \(cpu, pid \d+\) died \(signal 9"):
            pool.encode(texts, MODES, batch_tokens=1024, chunk_tokens=2048)  # several chunks: worker 1 gets some
        with pytest.raises(RuntimeError, match="closed"):
            pool.encode(texts[:20])


@pytest.mark.slow
def test_a_worker_that_cannot_load_says_why(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"worker 0 \(cpu\) could not load .*does not exist"):
        EncodePool(tmp_path / "nowhere", ["cpu"])
