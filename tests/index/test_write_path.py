"""The write path: vectors reach each engine without Python float lists and are stored exactly as before.

Qdrant Edge takes float32 memoryviews (`EdgeStore.upsert`); the reference here is the list conversion m3embed
used before (`.tolist()` per point), written into a second shard: both must hold bit-identical vectors.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from m3embed.index import ColbertStorage, Index
from m3embed.index.store import point_id


def _list_points(index: Index, ids: list[str], docs) -> list[qe.Point]:
    """The previous conversion, kept as the reference."""
    keys, metas = index._checked(ids, None, None, docs)
    batch = index._batch(keys, docs, None, metas)
    dense = batch.dense.tolist()
    return [qe.Point(point_id(doc_id), {"dense": dense[i],
                                       "sparse": qe.SparseVector(batch.sparse[i].ids.tolist(),
                                                                 batch.sparse[i].weights.tolist()),
                                       "colbert": batch.colbert[i].tolist()}, batch.payloads[i])
            for i, doc_id in enumerate(batch.ids)]


def _stored(index: Index, ids: list[str]) -> dict[str, tuple]:
    records = index.store.shard.retrieve([point_id(i) for i in ids], with_payload=True, with_vector=True)
    out = {}
    for r in records:
        v = r.vector
        out[r.payload["id"]] = (v["dense"], v["sparse"].indices, v["sparse"].values, v["colbert"], r.payload)
    return out


@pytest.mark.parametrize("colbert_dtype", ["float16", "float32"])
def test_edge_stores_the_vectors_the_list_conversion_stored(make_index, corpus, colbert_dtype: str) -> None:
    ours = make_index("edge-engine", name="ours", colbert_storage=ColbertStorage(dtype=colbert_dtype))
    ref = make_index("edge-engine", name="ref", colbert_storage=ColbertStorage(dtype=colbert_dtype))
    ids = corpus.ids[:60]
    docs = corpus.docs.select(range(60))
    ours.add_outputs(ids, docs)
    ref.store.shard.update(qe.UpdateOperation.upsert_points(_list_points(ref, ids, docs)))
    got, want = _stored(ours, ids), _stored(ref, ids)
    assert got.keys() == want.keys() == set(ids)
    for doc_id in ids:
        assert got[doc_id] == want[doc_id], doc_id  # lists of Python floats: exact equality


def test_non_contiguous_and_other_dtypes_are_stored_exactly(make_index, corpus) -> None:
    """Outputs as strided views, float64 and int64 ids reach the engine as the same float32 / uint32 values."""
    index = make_index("edge")
    docs = corpus.docs.select(range(5))
    wide = docs.select(range(5))
    wide.dense = np.asfortranarray(docs.dense.astype(np.float64))  # rows are strided views
    wide.colbert = [np.asfortranarray(c.astype(np.float64)) for c in docs.colbert]
    wide.sparse = docs.sparse.copy()
    wide.sparse.indices = wide.sparse.indices.astype(np.int64)
    index.add_outputs(["a", "b", "c", "d", "e"], wide)
    stored = index.store.vectors(["a", "b", "c", "d", "e"])
    for i, doc_id in enumerate("abcde"):
        v = stored[doc_id]
        np.testing.assert_array_equal(v.dense, docs.dense[i].astype(np.float32))
        np.testing.assert_array_equal(v.colbert, docs.colbert[i].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(v.sparse.ids, docs.sparse_vector(i).ids)
        np.testing.assert_array_equal(v.sparse.weights, docs.sparse_vector(i).weights)


def test_edge_and_qdrant_store_identical_vectors(make_index, corpus) -> None:
    edge, qdrant = make_index("edge", name="edge"), make_index("qdrant-memory")
    for index in (edge, qdrant):
        index.add_outputs(corpus.ids[:40], corpus.docs.select(range(40)))
    a, b = edge.store.vectors(corpus.ids[:40]), qdrant.store.vectors(corpus.ids[:40])
    assert a.keys() == b.keys()
    for doc_id in a:
        np.testing.assert_array_equal(a[doc_id].dense, b[doc_id].dense)
        np.testing.assert_array_equal(a[doc_id].colbert, b[doc_id].colbert)
        np.testing.assert_array_equal(a[doc_id].sparse.ids, b[doc_id].sparse.ids)
        np.testing.assert_array_equal(a[doc_id].sparse.weights, b[doc_id].sparse.weights)


WRITER = """
import sys, time
import numpy as np
from m3embed.index import ColbertStorage, Index
from m3testkit import synthetic
docs = synthetic.corpus(400, dim=32, vocab=3000, n_ids=20, tokens=(3, 10), topics=8, seed=0)
index = Index.create(sys.argv[1], fingerprint="synthetic-test", dim=32, colbert_storage=ColbertStorage())
for start in range(0, 400, 20):
    index.add_outputs([f"doc-{i}" for i in range(start, start + 20)], docs.select(range(start, start + 20)))
    print("ACK", start + 20, flush=True)
    time.sleep(0.2)
"""


def test_sigkill_keeps_every_acknowledged_vector_exactly(tmp_path: Path, corpus) -> None:
    """Batches written through the memoryview path and acknowledged survive SIGKILL (the write-ahead log is
    replayed on open) with the very vectors given; the run resumes with the rest."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "idx")], stdout=subprocess.PIPE,
                            text=True, cwd=root, env={"PYTHONPATH": f"{root / 'src'}:{root}", "PATH": "/usr/bin:/bin"})
    acked = 0
    for line in proc.stdout:
        acked = int(line.split()[1])
        if acked >= 60:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Index.open(tmp_path / "idx") as index:
        ids = corpus.ids[:acked]
        assert index.missing(ids) == []
        stored = index.store.vectors(ids)
        for i, doc_id in enumerate(ids):
            np.testing.assert_array_equal(stored[doc_id].dense, corpus.docs.dense[i])
            np.testing.assert_array_equal(stored[doc_id].colbert,
                                          corpus.docs.colbert[i].astype(np.float16).astype(np.float32))
            np.testing.assert_array_equal(stored[doc_id].sparse.weights, corpus.docs.sparse_vector(i).weights)
        rest = [i for i in range(len(corpus.ids)) if corpus.ids[i] in set(index.missing(corpus.ids))]
        index.add_outputs([corpus.ids[i] for i in rest], corpus.docs.select(rest))
        assert index.count() == len(corpus.ids)
