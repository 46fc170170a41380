from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from m3embed import checkpoint
from m3embed.model import M3Model
from m3testkit.checkpoints import sample_texts

ALL = ("dense", "sparse", "colbert")


@pytest.fixture(scope="module")
def model(xlmr_ckpt):
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu")


def _assert_same(a, b, atol=1e-6):
    np.testing.assert_allclose(a.dense, b.dense, atol=atol)
    assert a.lexical_weights == b.lexical_weights or all(
        x.keys() == y.keys() and all(abs(x[k] - y[k]) <= atol for k in x)
        for x, y in zip(a.lexical_weights, b.lexical_weights))
    for x, y in zip(a.colbert, b.colbert):
        np.testing.assert_allclose(x, y, atol=atol)


def test_save_load_round_trip_gives_identical_outputs(model, tmp_path):
    texts = sample_texts(12)
    before = model.encode(texts, modes=ALL)
    model.save_pretrained(tmp_path / "saved")
    for name in ("config.json", "model.safetensors", "colbert_linear.pt", "sparse_linear.pt", "m3embed.json"):
        assert (tmp_path / "saved" / name).is_file(), name
    again = M3Model.from_pretrained(tmp_path / "saved", device="cpu")
    _assert_same(before, again.encode(texts, modes=ALL), atol=0)
    assert again.fingerprint == model.fingerprint


def test_bin_and_safetensors_load_the_same(model, xlmr_ckpt_bin):
    texts = sample_texts(6)
    other = M3Model.from_pretrained(xlmr_ckpt_bin, device="cpu")
    _assert_same(model.encode(texts, modes=ALL), other.encode(texts, modes=ALL), atol=0)


def test_outputs_have_documented_shapes(model):
    texts = ["short", "a somewhat longer text with more tokens in it", ""]
    out = model.encode(texts, modes=ALL)
    assert out.dense.shape == (3, model.hidden_size) and out.dense.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1, atol=1e-5)
    assert out.sparse.shape == (3, model.vocab_size)
    assert not set(out.sparse.indices.tolist()) & set(model.special_ids)
    assert (out.sparse.data > 0).all()
    for c, n in zip(out.colbert, out.n_tokens):
        assert c.shape == (n - 1, model.hidden_size)
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    assert model.encode(texts, modes="dense").sparse is None


def test_mcls_dense_is_mean_of_cls_states(model):
    text = " ".join(sample_texts(40))
    out = model.encode([text], modes=ALL, mcls=16, max_length=100)
    ids = model.tokenizer([text], truncation=True, max_length=100)["input_ids"][0]
    from m3embed.tokenize import insert_cls

    mids, pos = insert_cls(ids, model.tokenizer.cls_token_id, 16, 100)
    assert len(pos) > 2 and len(mids) <= 100
    with torch.no_grad():
        h = model.backbone(input_ids=torch.tensor([mids]), attention_mask=torch.ones(1, len(mids),
                           dtype=torch.long)).last_hidden_state[0]
    expected = torch.nn.functional.normalize(h[pos].mean(0), dim=-1).numpy()
    np.testing.assert_allclose(out.dense[0], expected, atol=1e-5)
    # the inserted CLS rows are not colbert vectors: one row per original token but CLS
    assert out.colbert[0].shape[0] == len(mids) - len(pos)
    # a text shorter than the interval is unchanged by MCLS
    short = model.encode(["tiny text"], mcls=True)
    np.testing.assert_allclose(short.dense, model.encode(["tiny text"]).dense, atol=1e-6)


def test_bfloat16_is_close_to_float32(xlmr_ckpt, model):
    texts = sample_texts(8)
    bf = M3Model.from_pretrained(xlmr_ckpt, device="cpu", dtype="bfloat16")
    a, b = model.encode(texts, modes=ALL), bf.encode(texts, modes=ALL)
    assert np.einsum("ih,ih->i", a.dense, b.dense).min() > 0.99
    assert a.dense.dtype == b.dense.dtype == np.float32


def test_fingerprint_tracks_head_weights(xlmr_ckpt):
    m = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    before = m.fingerprint
    with torch.no_grad():
        m.sparse_linear.bias += 0.1
    assert m.fingerprint != before


def test_new_heads_turn_a_plain_encoder_into_m3(copy_ckpt, xlmr_ckpt):
    d = copy_ckpt(xlmr_ckpt)
    (d / "colbert_linear.pt").unlink()
    (d / "sparse_linear.pt").unlink()
    m = M3Model.from_pretrained(d, new_heads=True, device="cpu")
    assert m.available_modes() == ALL
    dense_only = M3Model.from_pretrained(d, modes="dense", device="cpu")
    assert dense_only.available_modes() == ("dense",)
    with pytest.raises(ValueError, match="no sparse head"):
        dense_only.encode(["x"], modes=ALL)


def test_sparse_embedding_max_pools_and_drops_specials(model):
    ids = torch.tensor([[0, 7, 9, 7, 2, 1]])
    w = torch.tensor([[0.9, 0.2, 0.5, 0.4, 0.8, 0.0]])
    emb = model.sparse_embedding(ids, w)
    assert emb[0, 7] == pytest.approx(0.4) and emb[0, 9] == pytest.approx(0.5)
    assert emb[0, [0, 1, 2, 3]].abs().sum() == 0


def test_truncation_defaults_live_in_m3embed_json(copy_ckpt, xlmr_ckpt, tmp_path):
    """query_max_length / passage_max_length: read from m3embed.json, used by encode_queries / encode_corpus,
    overridden by an explicit max_length, saved again; absent, they are the model's limit (issue 22 item 7)."""
    plain = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    assert plain.query_max_length == plain.passage_max_length == plain.max_length
    path = copy_ckpt(xlmr_ckpt)
    cfg = json.loads((path / "m3embed.json").read_text())
    (path / "m3embed.json").write_text(json.dumps({**cfg, "query_max_length": 8, "passage_max_length": 12}))
    model = M3Model.from_pretrained(path, device="cpu")
    long = [" ".join(sample_texts(20))]
    assert (model.query_max_length, model.passage_max_length) == (8, 12)
    assert model.encode_queries(long).n_tokens.tolist() == [8]
    assert model.encode_corpus(long).n_tokens.tolist() == [12]
    assert model.encode_corpus(long, max_length=20).n_tokens.tolist() == [20]
    assert model.encode(long).n_tokens.tolist() == [model.max_length]  # encode has no role: the limit
    again = M3Model.from_pretrained(model.save_pretrained(tmp_path / "saved"), device="cpu")
    assert (again.query_max_length, again.passage_max_length) == (8, 12)
    assert json.loads((plain.save_pretrained(tmp_path / "plain") / "m3embed.json").read_text())[
        "query_max_length"] is None  # the limit is stored as None: the default of whatever model reads it
    (path / "m3embed.json").write_text(json.dumps({**cfg, "passage_max_length": plain.max_length + 1}))
    with pytest.raises(ValueError, match=f"m3embed.json: passage_max_length={plain.max_length + 1} exceeds"):
        M3Model.from_pretrained(path, device="cpu")
    with pytest.raises(ValueError, match="query_max_length must be an int of at least 2"):
        checkpoint.M3Config(query_max_length=1)
