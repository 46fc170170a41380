"""ColBERT storage options (quantization, originals, rescoring, token pooling) in the engines' multivector
fields: search equals a NumPy computation of Qdrant's quantized formula, the manifest keeps the options, and
engines refuse what they cannot apply. The token store's encodings: tests/index/test_tokens.py."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy.cluster.hierarchy import cut_tree, linkage

from m3embed.index import Index
from m3embed.index.footprint import measure_ram
from m3embed.index.manifest import MANIFEST_NAME, ColbertStorage, read_manifest
from m3embed.index.pooling import pool_tokens
from tests.index.test_cli_index import m3embed, write_docs

K, CANDIDATES = 10, 20
OPTIONS = {
    "int8": ColbertStorage("int8", rescore=False),
    "int8-rescore": ColbertStorage("int8", oversampling=2.0),
    "binary": ColbertStorage("binary", rescore=False),
    "binary-rescore": ColbertStorage("binary", oversampling=2.0),
    "binary-disk": ColbertStorage("binary", originals="disk", oversampling=2.0),
    "disk-pool2": ColbertStorage(originals="disk", pool_factor=2),
}


def int8_codes(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Qdrant's scalar int8 (lib/quantization encoded_vectors_u8.rs): alpha = (max - min) / 127 over the
    segment's values, code = round(clamp((v - min) / alpha, 0, 127)); a dot product of codes, corrected by the
    stored offsets, is the dot product of the dequantized vectors alpha·code + min."""
    alpha = (high - low) / 127
    return alpha * np.round(np.clip((values - low) / alpha, 0, 127)) + low


def colbert_scores(storage: ColbertStorage, query: np.ndarray, docs: list[np.ndarray], low: float, high: float
                   ) -> np.ndarray:
    """Per document, the colbert score the quantized plan ranks by: mean over query rows of the best row
    score, rows quantized as Qdrant quantizes them (int8: over the segment's range [low, high]; binary:
    Σ sign·sign / h, the sign being x > 0)."""
    if storage.quantization == "int8":
        query, docs = int8_codes(query, low, high), [int8_codes(d, low, high) for d in docs]
    elif storage.quantization == "binary":
        sign = lambda x: np.where(x > 0, 1.0, -1.0)  # noqa: E731
        query, docs = sign(query) / query.shape[1], [sign(d) for d in docs]
    return np.array([np.max(query @ d.T, axis=1).mean() for d in docs])


def reference(storage: ColbertStorage, exact, corpus, stored: list[np.ndarray], i: int, mode: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy scores of query i over the union of the exact dense and sparse top CANDIDATES: (union, score
    with the quantized colbert score, score with the exact one), weighted as `mode` weighs them."""
    s = exact.per_mode(corpus.queries, i)
    q = corpus.queries.colbert[i].astype(np.float16).astype(np.float32)
    union = np.union1d(np.argsort(-s["dense"], kind="stable")[:CANDIDATES],
                       np.argsort(-np.where(s["sparse"] > 0, s["sparse"], -np.inf), kind="stable")[:CANDIDATES])
    docs = [stored[d] for d in union]
    values = np.concatenate(stored)  # one segment holds every document
    low, high = float(values.min()), float(values.max())
    colbert = {"exact": colbert_scores(ColbertStorage(), q, docs, low, high),
               "quantized": colbert_scores(storage, q, docs, low, high)}
    if mode == "colbert":
        return union, colbert["quantized"], colbert["exact"]
    base = 0.4 * s["dense"][union] + 0.2 * s["sparse"][union]
    return union, base + 0.4 * colbert["quantized"], base + 0.4 * colbert["exact"]


def check_hits(storage: ColbertStorage, hits, ids: list[str], union, quantized, exact_total) -> None:
    """The hits are the top K by the quantized score (then, with rescoring, its best rescore_top(K) ranked by
    the exact score), allowing any order among equal scores: binary scores are coarse and tie often."""
    got = np.array([ids.index(h.id) for h in hits])
    scores = np.array([h.score for h in hits])
    pos = {d: j for j, d in enumerate(union.tolist())}
    assert np.all(np.diff(scores) <= 1e-6), "hits are not best first"
    if not storage.quantized or not storage.rescore:
        final = quantized if storage.quantized else exact_total
        np.testing.assert_allclose(scores, np.sort(final)[::-1][:K], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores, [final[pos[d]] for d in got], rtol=1e-4, atol=1e-5)
        return
    cut = np.sort(quantized)[::-1][storage.rescore_top(K) - 1]  # the last quantized score rescored
    np.testing.assert_allclose(scores, [exact_total[pos[d]] for d in got], rtol=1e-4, atol=1e-5)
    assert all(quantized[pos[d]] >= cut - 1e-5 for d in got), "a hit outside the rescored top"
    for d, qs, es in zip(union, quantized, exact_total):  # surely rescored and better than the last hit
        if qs > cut + 1e-5 and es > scores[-1] + 1e-5:
            assert d in got, f"document {d} missing"


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("mode", ["colbert", "all"])
def test_search_equals_numpy_quantized_formula(make_index, corpus, exact, name: str, mode: str) -> None:
    storage = OPTIONS[name]
    index = make_index("edge-engine", colbert_storage=storage)
    index.add_outputs(corpus.ids, corpus.docs)
    index.optimize()
    stored = [pool_tokens(c, storage.pool_factor).astype(np.float16).astype(np.float32)
              for c in corpus.docs.colbert]
    for i in range(len(corpus.queries)):
        hits = index.search(corpus.queries.select([i]), k=K, mode=mode, candidates=CANDIDATES)[0]
        assert len(hits) == K
        check_hits(storage, hits, corpus.ids, *reference(storage, exact, corpus, stored, i, mode))


@pytest.mark.parametrize("pool_factor", [2, 3])
def test_pooling_equals_scipy_ward_clusters(pool_factor: int) -> None:
    x = np.random.default_rng(pool_factor).standard_normal((11, 16)).astype(np.float32)
    labels = cut_tree(linkage(x.astype(np.float64), method="ward"), n_clusters=math.ceil(11 / pool_factor))[:, 0]
    firsts = sorted({int(np.argmax(labels == c)): c for c in set(labels.tolist())}.items())
    means = np.array([x[labels == c].mean(axis=0) for _, c in firsts])
    want = means / np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(pool_tokens(x, pool_factor), want, rtol=1e-5, atol=1e-6)


def test_pooling_merges_near_duplicates_and_keeps_short_documents() -> None:
    base = np.eye(4, 8, dtype=np.float32)
    pairs = np.repeat(base, 2, axis=0) + 0.01 * np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    pooled = pool_tokens(pairs, 2)
    means = pairs.reshape(4, 2, 8).mean(axis=1)
    np.testing.assert_allclose(pooled, means / np.linalg.norm(means, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pool_tokens(pairs[:1], 2), pairs[:1])
    np.testing.assert_array_equal(pool_tokens(pairs, 1), pairs)


@pytest.mark.parametrize("engine", ["edge", "qdrant-memory"])
def test_pooled_index_stores_pooled_vectors_and_explains_exactly(make_index, corpus, engine: str) -> None:
    index = make_index(engine, colbert_storage=ColbertStorage(pool_factor=3))
    index.add_outputs(corpus.ids[:50], corpus.docs.select(range(50)))
    stored = index.store.vectors(corpus.ids[:50])
    for i, doc in enumerate(corpus.ids[:50]):
        want = pool_tokens(corpus.docs.colbert[i], 3).astype(np.float16).astype(np.float32)
        assert len(want) == math.ceil(len(corpus.docs.colbert[i]) / 3)
        np.testing.assert_allclose(stored[doc].colbert, want, rtol=1e-3, atol=1e-3)
    q = corpus.queries.select([0])
    hits = index.search(q, k=5, mode="colbert", explain=True)[0]
    for h in hits:  # queries are not pooled: the explained score is MaxSim of the full query over pooled rows
        np.testing.assert_allclose(h.scores["colbert"], h.score, rtol=1e-4)


def test_explain_reports_exact_scores_on_a_quantized_index(make_index, corpus, exact) -> None:
    index = make_index("edge", colbert_storage=ColbertStorage("binary", rescore=False))
    index.add_outputs(corpus.ids, corpus.docs)
    index.optimize()
    hits = index.search(corpus.queries.select([0]), k=5, mode="all", explain=True)[0]
    s = exact.per_mode(corpus.queries, 0)
    for h in hits:  # the ranking score is binary; the explained per-mode scores come from the originals
        doc = corpus.ids.index(h.id)
        np.testing.assert_allclose([h.scores[m] for m in ("dense", "sparse", "colbert")],
                                   [s[m][doc] for m in ("dense", "sparse", "colbert")], rtol=1e-4, atol=1e-5)
        assert not math.isclose(h.score, 0.4 * s["dense"][doc] + 0.2 * s["sparse"][doc] + 0.4 * s["colbert"][doc],
                                rel_tol=1e-4)


def test_manifest_keeps_the_options_and_old_manifests_open_as_built(make_index, corpus, tmp_path) -> None:
    storage = ColbertStorage("int8", originals="disk", oversampling=3.0, pool_factor=2)
    make_index("edge", name="new", colbert_storage=storage).close()
    data = json.loads((tmp_path / "new" / MANIFEST_NAME).read_text())
    assert data["format_version"] == 5 and data["colbert_store"] == "tokens" and data["colbert_storage"] == {
        "quantization": "int8", "originals": "disk", "rescore": True, "oversampling": 3.0, "pool_factor": 2,
        "dtype": "float16"} and "colbert_dtype" not in data
    with Index.open(tmp_path / "new") as index:
        assert index.manifest.colbert_storage == storage
        assert index.info()["colbert_storage"]["quantization"] == "int8"
    old = make_index("edge-engine", name="old")
    old.add_outputs(corpus.ids, corpus.docs)
    before = old.search(corpus.queries, k=5, mode="all")
    old.close()
    path = tmp_path / "old" / MANIFEST_NAME
    data = json.loads(path.read_text())
    del data["colbert_storage"], data["colbert_store"]
    path.write_text(json.dumps({**data, "format_version": 2}))
    assert read_manifest(tmp_path / "old").colbert_storage == ColbertStorage()
    assert read_manifest(tmp_path / "old").colbert_store == "engine"
    with Index.open(tmp_path / "old") as index:
        assert index.search(corpus.queries, k=5, mode="all") == before


@pytest.mark.parametrize("version", [3, 4])
def test_an_older_manifest_keeps_its_colbert_dtype(make_index, corpus, tmp_path, version: int) -> None:
    """Up to format 4 colbert_dtype stood beside colbert_storage; such an index opens with that precision."""
    index = make_index("edge-engine", name="old", colbert_storage=ColbertStorage("int8", dtype="float32"))
    index.add_outputs(corpus.ids, corpus.docs)
    before = index.search(corpus.queries, k=5, mode="all")
    index.close()
    path = tmp_path / "old" / MANIFEST_NAME
    data = json.loads(path.read_text())
    storage = data.pop("colbert_storage")
    if version == 3:  # before the token store: ColBERT in the engine's field
        del data["colbert_store"]
    path.write_text(json.dumps({**data, "format_version": version, "colbert_dtype": storage.pop("dtype"),
                                "colbert_storage": storage}))
    assert read_manifest(tmp_path / "old").colbert_storage == ColbertStorage("int8", dtype="float32")
    with Index.open(tmp_path / "old") as index:
        assert index.search(corpus.queries, k=5, mode="all") == before


@pytest.mark.parametrize(("options", "message"), [
    ({"quantization": "int4"}, "quantization must be one of none, int8, binary, got 'int4'"),
    ({"originals": "ssd"}, "originals must be one of ram, disk, none, got 'ssd'"),
    ({"pool_factor": 0}, "pool_factor must be an integer >= 1"),
    ({"pool_factor": 1.5}, "pool_factor must be an integer >= 1"),
    ({"oversampling": 0.5, "quantization": "int8"}, "oversampling must be a number >= 1"),
    ({"rescore": "yes", "quantization": "int8"}, "rescore must be true or false"),
    ({"originals": "none"}, "originals='none' needs quantization"),
    ({"rescore": False}, "rescore=False (--no-colbert-rescore) applies to quantized storage"),
    ({"quantization": "binary", "originals": "none"}, "rescore needs the original vectors"),
])
def test_bad_options_are_refused_by_name(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ColbertStorage(**options)


@pytest.mark.parametrize(("engine", "storage", "message"), [
    ("edge-engine", ColbertStorage("binary", originals="none", rescore=False),
     "Qdrant Edge keeps the original vectors"),
    ("qdrant-memory", ColbertStorage("binary", originals="none", rescore=False), "Qdrant keeps the original"),
    ("qdrant-memory", ColbertStorage("int8"), "local mode (a path or ':memory:') scores float vectors only"),
    ("qdrant-path", ColbertStorage("binary"), "local mode (a path or ':memory:') scores float vectors only"),
    ("qdrant-memory", ColbertStorage(originals="disk"), "local mode (a path or ':memory:') holds every vector"),
])
def test_engines_refuse_what_they_cannot_apply(make_index, engine: str, storage: ColbertStorage,
                                               message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_index(engine, colbert_storage=storage)


def test_storage_options_need_a_colbert_field_and_a_sound_manifest(make_index, tmp_path) -> None:
    with pytest.raises(ValueError, match="colbert_storage applies to the colbert field"):
        make_index("edge", modes="dense,sparse", colbert_storage=ColbertStorage("int8"))
    make_index("edge", name="idx").close()
    path = tmp_path / "idx" / MANIFEST_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), "colbert_storage": {"quantisation": "int8"}}))
    with pytest.raises(ValueError, match=r"damaged index manifest \(colbert_storage has unknown keys"):
        Index.open(tmp_path / "idx")


def test_info_reports_measured_bytes(make_index, corpus, tmp_path) -> None:
    storage = ColbertStorage("binary", pool_factor=2)
    index = make_index("edge", colbert_storage=storage)
    index.add_outputs(corpus.ids, corpus.docs)
    index.optimize()
    info = index.info()
    tokens = sum(len(pool_tokens(c, 2)) for c in corpus.docs.colbert)
    assert info["colbert_tokens"] == tokens
    assert 0 < info["colbert_disk_bytes"] < info["disk_bytes"]
    assert info["colbert_disk_bytes_per_token"] == round(info["colbert_disk_bytes"] / tokens, 1)
    assert info["disk_bytes_per_doc"] == round(info["disk_bytes"] / len(corpus.ids), 1)
    index.close()
    ram = measure_ram(tmp_path / "idx")
    assert ram["ram_peak_bytes"] >= ram["ram_bytes"] > 0 and ram["wal_ram_bytes"] >= 0


def test_cli_build_options_and_info_measure(tmp_path, xlmr_ckpt) -> None:
    docs, idx = tmp_path / "docs.jsonl", tmp_path / "idx"
    write_docs(docs, 20)
    run = m3embed("index", "build", idx, docs, "--model", xlmr_ckpt, "--colbert-quantization", "binary",
                  "--colbert-originals", "disk", "--no-colbert-rescore", "--pool-factor", "2")
    assert run.returncode == 0, run.stderr
    assert read_manifest(idx).colbert_storage == ColbertStorage("binary", "disk", rescore=False, pool_factor=2)
    run = m3embed("index", "info", idx, "--measure-ram")
    assert run.returncode == 0, run.stderr
    assert re.search(r"colbert_storage\s+.*quantization=binary, originals=disk, rescore=False", run.stdout)
    for key in ("colbert_disk_bytes_per_token", "disk_bytes_per_doc", "ram_bytes_per_token", "ram_bytes "):
        assert key in run.stdout, run.stdout
    run = m3embed("index", "build", tmp_path / "bad", docs, "--model", xlmr_ckpt, "--colbert-quantization", "int4")
    assert run.returncode != 0 and "quantization must be one of none, int8, binary, got 'int4'" in run.stderr


def test_rescoring_with_colbert_top_scores_its_hits_exactly(make_index, corpus, exact) -> None:
    index = make_index("edge", colbert_storage=ColbertStorage("binary", oversampling=2.0))
    index.add_outputs(corpus.ids, corpus.docs)
    index.optimize()
    for i in range(3):
        hits = index.search(corpus.queries.select([i]), k=5, mode="all", candidates=CANDIDATES, colbert_top=15)[0]
        allowed = set(exact.search(corpus.queries, i, "dense+sparse", 15, CANDIDATES)[0].tolist())
        s = exact.per_mode(corpus.queries, i)
        for h in hits:  # from the colbert_top best by dense+sparse, each scored with the exact formula
            doc = corpus.ids.index(h.id)
            assert doc in allowed
            np.testing.assert_allclose(h.score, 0.4 * s["dense"][doc] + 0.2 * s["sparse"][doc]
                                       + 0.4 * s["colbert"][doc], rtol=1e-4)
