from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse as sp

from m3embed.scoring import (
    colbert_score,
    compute_score,
    dense_scores,
    hybrid,
    lexical_score,
    lexical_scores,
    pair_scores,
)
from m3embed.types import M3Output, SparseVector


def _unit(rng, *shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _flag_inference():
    """FlagEmbedding 1.4.2's inference class, the reference for every score (skips without FlagEmbedding)."""
    return pytest.importorskip("FlagEmbedding").BGEM3FlagModel


def test_lexical_score_is_flagembeddings():
    flag = _flag_inference()
    q = SparseVector(np.array([1, 5, 9], np.int32), np.array([0.5, 0.2, 0.1], np.float32))
    d = SparseVector(np.array([5, 9, 11], np.int32), np.array([0.3, 0.4, 0.9], np.float32))
    ref = flag.compute_lexical_matching_score(None, q.to_flag(), d.to_flag())  # the method does not use self
    assert lexical_score(q, d) == pytest.approx(ref, abs=1e-7)
    qm = sp.csr_array((q.weights, (np.zeros(3, int), q.ids)), shape=(1, 20))
    dm = sp.csr_array((d.weights, (np.zeros(3, int), d.ids)), shape=(1, 20))
    assert lexical_scores(qm, dm)[0, 0] == pytest.approx(lexical_score(q, d))


def test_colbert_score_is_flagembeddings():
    flag = _flag_inference()
    rng = np.random.default_rng(0)
    q, d = _unit(rng, 3, 8), _unit(rng, 5, 8)
    assert colbert_score(q, d) == pytest.approx(float(flag.colbert_score(None, q, d)), abs=1e-6)


class _FlagStub:
    """What `BGEM3FlagModel.compute_score_single_device` needs of `self`, serving precomputed outputs: the
    "texts" are indices into `q` (queries) and `p` (passages); its model's score methods are FlagEmbedding's own
    (`EncoderOnlyEmbedderM3Model`, temperature 1). Run with batch_size=1, so no pair is padded."""

    def __init__(self, q: M3Output, p: M3Output) -> None:
        import torch
        from FlagEmbedding.finetune.embedder.encoder_only.m3.modeling import EncoderOnlyEmbedderM3Model as Ref

        def outputs(o: M3Output, i: int) -> dict:
            return {"dense_vecs": torch.from_numpy(o.dense[i : i + 1]),
                    "sparse_vecs": torch.from_numpy(o.sparse[[i]].toarray()),
                    "colbert_vecs": torch.from_numpy(o.colbert[i][None])}

        class Inputs(dict):
            def to(self, device):
                return self

        class Model:
            temperature = 1.0
            _compute_similarity = Ref._compute_similarity
            compute_dense_score = Ref.compute_dense_score
            compute_sparse_score = Ref.compute_sparse_score
            compute_colbert_score = Ref.compute_colbert_score

            def float(self):
                return self

            def to(self, device):
                return self

            def eval(self):
                return self

            def __call__(self, inputs, **kw):
                return inputs["outputs"]

        def tokenizer(texts, **kw):
            (role, i), = texts
            o = q if role == "q" else p
            return Inputs(outputs=outputs(o, i), attention_mask=torch.ones(1, len(o.colbert[i]) + 1))  # + CLS

        self.tokenizer, self.model, self.target_devices = tokenizer, Model(), ["cpu"]
        self._convert_to_numpy = lambda t, device=None: t.cpu().numpy()


def test_compute_score_is_flagembeddings():
    flag = _flag_inference()
    rng = np.random.default_rng(1)
    n, h, v = 4, 8, 30

    def out():
        dense = _unit(rng, n, h)
        w = np.where(rng.random((n, v)) < 0.3, rng.random((n, v)), 0).astype(np.float32)
        return M3Output(dense=dense, sparse=sp.csr_array(w), colbert=[_unit(rng, k + 2, h) for k in range(n)])

    q, p = out(), out()
    pairs = [(("q", i), ("p", i)) for i in range(n)]
    for weights in ((0.4, 0.2, 0.4), None):
        ref = flag.compute_score_single_device(_FlagStub(q, p), pairs, batch_size=1, device="cpu",
                                               weights_for_different_modes=None if weights is None else list(weights))
        ours = compute_score(q, p, *([] if weights is None else [weights]))
        assert set(ours) == set(ref)
        for key in ref:
            np.testing.assert_allclose(ours[key], ref[key], atol=1e-6, err_msg=key)
    assert dense_scores(q.dense, p.dense).shape == (n, n)
    assert set(pair_scores(q, p)) == {"dense", "sparse", "colbert"}
    with pytest.raises(ValueError, match="dense, sparse, colbert"):
        compute_score(q, p, (1, 1))


def test_hybrid_weights_only_the_modes_given():
    scores = {"dense": np.array([1.0, 0.0]), "sparse": np.array([0.5, 2.0])}
    np.testing.assert_allclose(hybrid(scores, (0.4, 0.2, 0.4)), [0.5, 0.4])
    np.testing.assert_allclose(hybrid(scores, (0.4, 0.2, 0.4), normalize=True), [0.5 / 0.6, 0.4 / 0.6])
