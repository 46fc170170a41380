"""The ColBERT token store and its MaxSim kernel: each encoding scores as NumPy does over the decoded codes,
hybrid search over the store equals the NumPy formula, and the store survives replacement, compaction and a
kill -9 in the middle of a compaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from m3embed.index import ColbertStorage, Index
from m3embed.index import maxsim as maxsim_module
from m3embed.index.maxsim import (
    ENCODINGS,
    ISAS,
    decode_tokens,
    encode_query,
    encode_tokens,
    kernel_isa,
    limit_isa,
    maxsim,
)
from m3embed.index.tokens import TokenStore
from m3testkit import synthetic

DIM = 64


def _codes_only(quantization: str) -> ColbertStorage:
    """int8 or binary codes, no float originals kept."""
    return ColbertStorage(quantization, originals="none", rescore=False)


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(query, codes, scales, encoding: str, starts, counts) -> np.ndarray:
    """Σ over query rows of the max dot, in NumPy, over the rows the codes stand for."""
    docs = decode_tokens(codes, scales, encoding, query.rows.shape[1])
    q = query.values()
    return np.array([(q @ docs[s:s + c].T).max(axis=1).sum() if c else 0.0 for s, c in zip(starts, counts)])


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):
    """Each kernel level this CPU has (the others run as the best level it has: skipped)."""
    limit_isa(request.param)
    try:
        if kernel_isa() != request.param:
            pytest.skip(f"this CPU has no {request.param} kernels")
        yield request.param
    finally:
        limit_isa(ISAS[-1])


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dim", [64, 72, 1024])  # 72: not a multiple of 32, the portable loops
def test_kernel_equals_numpy_over_the_decoded_codes(encoding: str, dim: int, isa: str) -> None:
    rng = np.random.default_rng(dim)
    counts = rng.integers(0, 12, 30)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    codes, scales = encode_tokens(_unit(rng, int(counts.sum()), dim), encoding)
    query = encode_query(_unit(rng, 7, dim), encoding)
    order = rng.permutation(30)  # documents in any order
    got = maxsim(query, codes, scales, starts[order], counts[order])
    want = _reference(query, codes, scales, encoding, starts[order], counts[order])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got[counts[order] == 0] == 0).all()


def test_candidates_split_over_threads_score_as_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 40, 300)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    codes, scales = encode_tokens(_unit(rng, int(counts.sum())), "binary")
    query = encode_query(_unit(rng, 9), "binary")
    whole = maxsim(query, codes, scales, starts, counts)
    monkeypatch.setattr(maxsim_module, "SPLIT_TOKENS", 100)
    monkeypatch.setattr(maxsim_module, "_THREADS", 3)
    np.testing.assert_array_equal(maxsim(query, codes, scales, starts, counts), whole)


def _numpy_codes(x: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """The codes as maxsim.py's table defines them, in NumPy."""
    if encoding == "float32":
        return x.view(np.uint8), np.zeros(0, np.float32)
    if encoding == "float16":
        return x.astype(np.float16).view(np.uint8), np.zeros(0, np.float32)
    if encoding == "int8":
        scale = np.abs(x).max(axis=1) / np.float32(127)
        safe = np.where(scale > 0, scale, 1)[:, None]
        return np.clip(np.rint(x / safe), -127, 127).astype(np.int8).view(np.uint8), scale
    l1 = np.abs(x).sum(axis=1)
    return np.packbits(x > 0, axis=1), np.divide((x * x).sum(axis=1), l1, out=np.zeros_like(l1), where=l1 > 0)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dim", [64, 72, 1024])
@pytest.mark.parametrize("source", ["float32", "float16"])
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # NumPy's own casts of 65520
def test_encoder_equals_numpy(encoding: str, dim: int, source: str) -> None:
    """The compiled encoder gives NumPy's codes (float16 rounding to nearest even included: halfway values,
    subnormals, overflow, zero rows) and scales to float32 summation order; the originals are NumPy's halves."""
    rng = np.random.default_rng(dim)
    x = _unit(rng, 40, dim)
    x[0] = 0
    x[1, :8] = [65504.0, 65520.0, 1e-8, -3e-5, 6.1e-5, 2.0 ** -24 * 1.5, np.nan, -np.inf]
    halfway = np.float32(1 + 2.0 ** -11)  # exactly between two float16 values: rounds to the even one
    x[2, :4] = [halfway, -halfway, np.nextafter(halfway, np.float32(2)), 2.0 ** -25]
    x = x.astype(source).astype(np.float32) if source == "float16" else x
    src = x.astype(np.float16) if source == "float16" else x
    finite = np.isfinite(x).all(axis=1) & (np.abs(x) < 1e4).all(axis=1)
    codes, scales, halves = encode_tokens(src, encoding, originals=True)
    want_codes, want_scales = _numpy_codes(x[finite] if encoding in ("int8", "binary") else x, encoding)
    if encoding in ("int8", "binary"):
        codes, scales = codes[finite], scales[finite]
        np.testing.assert_allclose(scales, want_scales, rtol=1e-5)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(halves.view(np.uint16), x.astype(np.float16).view(np.uint16))


def test_codes_approximate_the_rows_as_documented() -> None:
    x = _unit(np.random.default_rng(1), 50, 1024)
    for encoding, cos in [("float32", 1), ("float16", 0.9999), ("int8", 0.999), ("binary", 0.75)]:
        codes, scales = encode_tokens(x, encoding)
        back = decode_tokens(codes, scales, encoding, 1024)
        assert ((back * x).sum(1) / np.linalg.norm(back, axis=1)).min() >= cos - 1e-6, encoding
    binary = decode_tokens(*encode_tokens(x, "binary"), "binary", 1024)
    np.testing.assert_allclose((binary * x).sum(1), 1, rtol=1e-5)  # exact against its own row
    assert encode_tokens(x, "binary")[0].shape == (50, 128)  # one bit a dimension
    q = encode_query(x[:3], "binary")
    assert q.rows.dtype == np.int8 and np.abs(q.values() - x[:3]).max() <= q.scale.max() / 2 + 1e-7


def test_kernel_refuses_rows_outside_the_store() -> None:
    codes, scales = encode_tokens(_unit(np.random.default_rng(2), 5), "binary")
    with pytest.raises(ValueError, match="outside the 5 stored"):
        maxsim(encode_query(_unit(np.random.default_rng(3), 2), "binary"), codes, scales, [3], [4])


def test_store_appends_reopens_and_compacts(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    docs = [_unit(rng, n) for n in (3, 0, 5, 2)]
    store = TokenStore.create(tmp_path / "colbert", "int8", DIM, originals=True)
    rows = store.append(docs)
    assert rows.tolist() == [0, 1, 2, 3]
    more = store.append([_unit(rng, 4)])
    store.close()
    store = TokenStore.open(tmp_path / "colbert", "int8", DIM, originals=True)
    np.testing.assert_allclose(store.tokens(2), docs[2].astype(np.float16), atol=0)  # the float16 originals
    q = encode_query(_unit(rng, 3), "int8")
    before = store.score(q, np.array([0, 2, 4]))
    freed = store.compact([0, 2, 4, more[0]])  # rows 1 and 3 replaced: dropped
    assert freed >= 0 and store.stored_rows == 3
    np.testing.assert_array_equal(store.score(q, np.array([0, 2, 4])), before)
    with pytest.raises(ValueError, match="compaction dropped"):
        store.score(q, np.array([3]))
    store.close()
    assert sorted(p.name for p in (tmp_path / "colbert").iterdir()) == ["CURRENT", "g000001"]


def test_a_torn_tail_is_cut_at_open(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    store = TokenStore.create(tmp_path / "colbert", "binary", DIM)
    store.append([_unit(rng, 3), _unit(rng, 2)])
    store.close()
    gen = tmp_path / "colbert" / "g000000"
    with open(gen / "codes.bin", "ab") as f:  # a crash after writing tokens, before their row
        f.write(b"\x01" * 3 * (DIM // 8))
    with open(gen / "rows.bin", "ab") as f:  # and a partial row record
        f.write(b"\x00" * 5)
    store = TokenStore.open(tmp_path / "colbert", "binary", DIM)
    assert store.stored_rows == 2 and store.footprint()["colbert_tokens"] == 5
    assert store.append([_unit(rng, 1)]).tolist() == [2]
    store.close()


@pytest.fixture(scope="module")
def data():
    docs = synthetic.corpus(150, dim=DIM, vocab=5000, n_ids=30, tokens=(5, 20), topics=6, seed=3)
    queries, _ = synthetic.queries(docs, 6, seed=4)
    return [f"d{i}" for i in range(len(docs))], docs, queries


@pytest.mark.parametrize("encoding", ["float16", "int8", "binary", "binary-rescore"])
@pytest.mark.parametrize("mode", ["colbert", "all"])
def test_search_equals_numpy_over_the_union(tmp_path: Path, data, encoding: str, mode: str) -> None:
    """The hits are the k best of the dense ∪ sparse union by M3's formula, ColBERT scored from the codes (and,
    with rescoring, the best rescore_top(k) of them again from the float16 originals)."""
    ids, docs, queries = data
    storage = {"float16": ColbertStorage(), "int8": _codes_only("int8"), "binary": _codes_only("binary"),
               "binary-rescore": ColbertStorage("binary", oversampling=2.0)}[encoding]
    k, cand = 5, 20
    with Index.create(tmp_path / "idx", fingerprint="t", dim=DIM, colbert_storage=storage) as index:
        index.add_outputs(ids, docs)
        found = index.search(queries, k=k, mode=mode, candidates=cand)
    code = storage.quantization if storage.quantized else "float16"
    for i, hits in enumerate(found):
        dense = docs.dense @ queries.dense[i]
        sparse = (docs.sparse @ queries.sparse[[i]].T).toarray().ravel()
        union = np.union1d(np.argsort(-dense, kind="stable")[:cand],
                           np.argsort(-np.where(sparse > 0, sparse, -np.inf), kind="stable")[:cand])
        q = queries.colbert[i].astype(np.float16).astype(np.float32)

        def colbert(enc: str, rows: np.ndarray, q: np.ndarray = q) -> np.ndarray:
            qc = encode_query(q, enc)
            return np.array([(qc.values() @ decode_tokens(*encode_tokens(docs.colbert[d], enc), enc, DIM).T)
                             .max(axis=1).mean() for d in rows])

        w = (0.0, 0.0, 1.0) if mode == "colbert" else (0.4, 0.2, 0.4)
        total = w[0] * dense[union] + w[1] * sparse[union] + w[2] * colbert(code, union)
        pool = union
        if encoding == "binary-rescore":
            top = np.argsort(-total, kind="stable")[:storage.rescore_top(k)]
            pool = union[top]
            total = w[0] * dense[pool] + w[1] * sparse[pool] + w[2] * colbert("float16", pool)
        want = np.sort(total)[::-1][:k]
        np.testing.assert_allclose([h.score for h in hits], want, rtol=1e-5, atol=1e-5)
        by_id = dict(zip(pool.tolist(), total))
        for h in hits:
            assert abs(by_id[ids.index(h.id)] - h.score) <= 1e-5, (i, h.id)


@pytest.mark.parametrize("encoding", ["float16", "binary", "binary-rescore"])
def test_exhaustive_colbert_scores_every_document(tmp_path: Path, data, encoding: str) -> None:
    """exhaustive=True: MaxSim over every stored document matching the filter, not only the route candidates."""
    ids, docs, queries = data
    storage = {"float16": ColbertStorage(), "binary": _codes_only("binary"),
               "binary-rescore": ColbertStorage("binary", oversampling=2.0)}[encoding]
    k = 5
    meta = [{"half": i % 2} for i in range(len(ids))]
    with Index.create(tmp_path / "idx", fingerprint="t", dim=DIM, colbert_storage=storage) as index:
        index.add_outputs(ids, docs, metadata=meta)
        index.add_outputs(ids[:10], docs.select(range(10)), metadata=meta[:10])  # replaced rows are not scanned
        found = index.search(queries, k=k, mode="colbert", exhaustive=True, candidates=k)
        odd = index.search(queries, k=k, mode="colbert", exhaustive=True, filter={"half": 1})
        with pytest.raises(ValueError, match="exhaustive .* mode colbert, not all"):
            index.search(queries, k=k, mode="all", exhaustive=True)
    code = storage.quantization if storage.quantized else "float16"
    half = np.arange(len(ids)) % 2 == 1

    def expect(i: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k best allowed documents by the codes' MaxSim (rescoring its best from the float16 rows)."""
        q = queries.colbert[i].astype(np.float16).astype(np.float32)

        def score(enc: str, rows) -> np.ndarray:
            qc = encode_query(q, enc)
            return np.array([(qc.values() @ decode_tokens(*encode_tokens(docs.colbert[d], enc), enc, DIM).T)
                             .max(axis=1).mean() for d in rows])

        every = np.where(allowed, score(code, range(len(ids))), -np.inf)
        if encoding == "binary-rescore":
            pool = np.argsort(-every, kind="stable")[:storage.rescore_top(k)]
            every = np.full(len(ids), -np.inf)
            every[pool] = score("float16", pool)
        best = np.argsort(-every, kind="stable")[:k]
        return best, every[best]

    for i in range(len(queries)):
        for hits, allowed in ((found[i], np.ones(len(ids), bool)), (odd[i], half)):
            best, want = expect(i, allowed)
            assert [h.id for h in hits] == [ids[j] for j in best], i
            np.testing.assert_allclose([h.score for h in hits], want, rtol=1e-5, atol=1e-5)
        assert all(h.metadata["half"] == 1 for h in odd[i])


@pytest.mark.parametrize(("mode", "exhaustive"), [("colbert", False), ("colbert", True), ("all", False),
                                                  ("dense+sparse", False)])
def test_qdrant_local_mode_returns_the_token_store_hits(tmp_path: Path, data, mode: str, exhaustive: bool) -> None:
    """The server path (Qdrant's multivector field, here qdrant-client's local mode) and the directory path
    (the token store, float16) rank the same documents with the same scores."""
    ids, docs, queries = data
    with Index.create(tmp_path / "idx", fingerprint="t", dim=DIM, colbert_storage=ColbertStorage()) as directory, \
            Index.create(":memory:", engine="qdrant", fingerprint="t", dim=DIM) as server:
        assert directory.manifest.colbert_store == "tokens" and server.manifest.colbert_store == "engine"
        for index in (directory, server):
            index.add_outputs(ids, docs)
        a, b = (index.search(queries, k=5, mode=mode, candidates=20, exhaustive=exhaustive)
                for index in (directory, server))
    for x, y in zip(a, b):
        assert [h.id for h in x] == [h.id for h in y]
        np.testing.assert_allclose([h.score for h in x], [h.score for h in y], rtol=1e-4, atol=1e-4)


def test_new_indexes_default_to_binary_codes_in_the_token_store(tmp_path: Path, data) -> None:
    """No storage given: binary codes only in the token store (Qdrant servers keep float16 in their field)."""
    ids, docs, queries = data
    with Index.create(tmp_path / "idx", fingerprint="t", dim=DIM) as index, \
            Index.create(":memory:", engine="qdrant", fingerprint="t", dim=DIM) as server:
        assert index.manifest.colbert_store == "tokens" and index.manifest.colbert_encoding == "binary"
        assert index.manifest.colbert_storage == _codes_only("binary")
        assert server.manifest.colbert_storage == ColbertStorage()
        index.add_outputs(ids, docs)
        info = index.info()  # a bit a dimension and a scale: well under float16 (2 bytes a dimension)
        assert info["colbert_disk_bytes"] < info["colbert_tokens"] * 2 * DIM / 4


def test_replaced_documents_are_reclaimed_by_optimize(tmp_path: Path, data) -> None:
    ids, docs, queries = data
    with Index.create(tmp_path / "idx", fingerprint="t", dim=DIM, colbert_storage=_codes_only("binary")) as index:
        index.add_outputs(ids, docs)
        before = index.search(queries, k=5, mode="all")
        index.add_outputs(ids[:50], docs.select(range(50)))  # the same documents again: 50 dead rows
        index.delete(ids[140:])
        grown = index.info()["colbert_tokens"]
        index.optimize()
        after = index.info()
        assert after["colbert_tokens"] == int(docs.n_tokens[:140].sum() - 140)  # [CLS] has no ColBERT row
        assert after["colbert_tokens"] < grown and after["count"] == 140
        index.add_outputs(ids[140:], docs.select(range(140, 150)))  # deleted, then added again
        assert index.search(queries, k=5, mode="all") == before


_COMPACT = """
import sys, numpy as np
from m3embed.index import Index, ColbertStorage
from m3testkit import synthetic
docs = synthetic.corpus(150, dim=64, vocab=5000, n_ids=30, tokens=(5, 20), topics=6, seed=3)  # as `data`
ids = [f"d{i}" for i in range(150)]
with Index.open(sys.argv[1]) as index:
    index.add_outputs(ids, docs)  # the same documents again: every row is replaced
    print("ready", flush=True)
    while True:
        index.add_outputs(ids, docs)
        index.optimize()
"""


def test_kill_during_compaction_loses_nothing(tmp_path: Path, data) -> None:
    ids, docs, queries = data
    with Index.create(tmp_path / "idx", fingerprint="t", dim=DIM, colbert_storage=_codes_only("int8")) as index:
        index.add_outputs(ids, docs)
        want = index.search(queries, k=5, mode="colbert")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", _COMPACT, str(tmp_path / "idx")], stdout=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # several compactions in flight
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with Index.open(tmp_path / "idx") as index:
        assert index.count() == 150
        got = index.search(queries, k=5, mode="colbert")
        assert [[h.id for h in q] for q in got] == [[h.id for h in q] for q in want]
        index.optimize()  # the rows the killed process left are reclaimed
        assert index.info()["colbert_tokens"] == int(docs.n_tokens.sum() - len(docs))
        generations = [p.name for p in (tmp_path / "idx" / "colbert").iterdir() if p.is_dir()]
        assert len(generations) == 1
