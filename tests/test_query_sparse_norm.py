"""`query_sparse_norm` (m3embed.json, issue 21 item 2): a query's lexical weights divided by their sum, so that
its sparse score does not grow with its length as its dense and ColBERT scores do not; documents untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3embed import checkpoint
from m3embed.index import Index
from m3embed.model import M3Model
from m3embed.numpy_encoder import NumpyEncoder
from m3embed.scoring import normalize_lexical

MODES = ("dense", "sparse", "colbert")
QUERIES = ["where does the river flow", "the river flows through the valley to the sea and past the old mill"]
DOCS = ["the river flows to the sea", "a mill stood by the old bridge", "the valley is green in spring"]


def test_l1_rows_sum_to_one_and_keep_their_ids() -> None:
    import scipy.sparse as sp

    m = sp.csr_array(np.array([[0.0, 2.0, 0.0, 6.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], np.float32))
    out = normalize_lexical(m, "l1")
    np.testing.assert_allclose(out.toarray(), [[0, 0.25, 0, 0.75], [0, 0, 0, 0], [1, 0, 0, 0]])
    assert out.dtype == np.float32 and normalize_lexical(m, "none") is m
    with pytest.raises(ValueError, match="query_sparse_norm must be one of"):
        checkpoint.M3Config(query_sparse_norm="l2")


@pytest.fixture
def models(copy_ckpt, xlmr_ckpt: Path, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> tuple[M3Model, M3Model, Path]:
    """(the checkpoint as it is, its copy with query_sparse_norm l1, that copy's directory)."""
    monkeypatch.setenv("M3EMBED_CACHE", str(tmp_path / "cache"))
    ckpt = copy_ckpt(xlmr_ckpt)
    checkpoint.M3Config(query_sparse_norm="l1").save(ckpt)
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu"), M3Model.from_pretrained(ckpt, device="cpu"), ckpt


def test_queries_are_normalised_documents_are_not(models, tmp_path: Path) -> None:
    plain, model, ckpt = models
    assert model.query_sparse_norm == "l1"
    raw, q = plain.encode_queries(QUERIES, modes=MODES), model.encode_queries(QUERIES, modes=MODES)
    np.testing.assert_allclose(q.sparse.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(q.sparse.indices, raw.sparse.indices)
    np.testing.assert_allclose(q.sparse.toarray() * raw.sparse.sum(axis=1)[:, None], raw.sparse.toarray(),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(q.dense, raw.dense)
    for encode, plain_encode in ((model.encode_corpus, plain.encode_corpus), (model.encode, plain.encode)):
        assert (encode(DOCS, modes=("sparse",)).sparse != plain_encode(DOCS, modes=("sparse",)).sparse).nnz == 0
    # the documents an index holds are the same, so the fingerprint (and every index of the model) stays valid
    assert model.fingerprint == plain.fingerprint
    fast = NumpyEncoder.load(str(ckpt))
    assert fast is not None and fast.query_sparse_norm == "l1"
    np.testing.assert_allclose(fast.encode_queries(QUERIES, modes=("sparse",)).sparse.toarray(), q.sparse.toarray(),
                               rtol=1e-4, atol=1e-6)
    saved = M3Model.from_pretrained(model.save_pretrained(tmp_path / "saved"), device="cpu")
    assert saved.query_sparse_norm == "l1"


def test_search_scores_the_normalised_query(models, tmp_path: Path) -> None:
    """Every search mode reads the query through the model: the sparse ranking is unchanged, the hybrids weigh
    the sparse score divided by the query's lexical mass."""
    plain, model, _ = models
    weights = (0.4, 0.4, 0.2)
    with Index.create(tmp_path / "idx", model) as index:
        index.add([str(i) for i in range(len(DOCS))], DOCS)
        for query in QUERIES:
            mass = float(plain.encode_queries(query, modes=("sparse",)).sparse.sum())
            sparse = index.search(query, k=3, mode="sparse")
            expected = plain.compute_score([(query, d) for d in DOCS], weights=(1, 1, 1))["sparse"]
            for hit in sparse:
                assert hit.score == pytest.approx(expected[int(hit.id)] / mass, rel=1e-4)
            for hit in index.search(query, k=3, mode="all", weights=weights, explain=True):
                s = hit.scores
                assert s["sparse"] == pytest.approx(expected[int(hit.id)] / mass, rel=1e-4)
                # within the float16 rounding of the stored ColBERT rows, which the engine's sum reads
                assert hit.score == pytest.approx(weights[0] * s["dense"] + weights[1] * s["sparse"]
                                                  + weights[2] * s["colbert"], abs=5e-4)
            assert mass > 1.5  # so an unnormalised sparse score would be far outside that tolerance
