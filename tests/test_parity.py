"""Parity with the reference implementation, FlagEmbedding 1.4.2 (`BGEM3FlagModel`), at float32 on CPU.

Both libraries load the same offline checkpoint and encode the same texts with the same max_length; dense,
sparse (lexical weights) and ColBERT outputs, and `compute_score`, must agree within 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m3embed.model import M3Model
from m3testkit.checkpoints import sample_texts

FlagEmbedding = pytest.importorskip("FlagEmbedding")

ATOL = 1e-5
MAX_LENGTH = 64  # below the tiny XLM-R's 128-token limit, so the long text below is truncated
MODES = ("dense", "sparse", "colbert")
LONG = " ".join(sample_texts(40)[11:])  # ~600 tokens of mixed scripts
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Le chat lit une longue lettre près du port.",
    "Der Hund trägt drei rote Äpfel im Regen.",
    "Кошка читает длинное письмо под дождём.",
    "القطة تقرأ رسالة طويلة قبل الظهر.",
    "猫在雨中读一封长信。",
    "若い医者は青い家を見ます。",
    "고양이가 긴 편지를 읽습니다.",
    "Η γάτα διαβάζει ένα μακρύ γράμμα.",
    "I love pizza 🍕🍕 and rockets 🚀! 😀",
    "the the the the cat cat cat sat sat sat",  # repeated tokens: max-pooled weights
    "",
    "<mask>",
    "a <mask> b </s> c <pad> d <s> e <unk> f",  # literal XLM-R special tokens
    "[MASK] x [SEP] y [PAD] z [CLS]",  # literal BERT special tokens
    "  leading, trailing   and inner  spaces  ",
    "ᚠᚢᚦ ᚨᚱᚲ runes",  # a script the XLM-R test tokenizer never saw: <unk>
    LONG,
]
PAIRS = [(TEXTS[q], TEXTS[p]) for q, p in [(0, 1), (10, 0), (9, 11), (12, 17), (4, 4), (5, 13), (11, 11), (3, 17)]]


class Pair:
    """One checkpoint loaded by both libraries, with both outputs on TEXTS computed once."""

    def __init__(self, path: Path) -> None:
        pooling = json.loads((path / "m3embed.json").read_text())["pooling"]
        self.path = path
        self.ours = M3Model.from_pretrained(path, device="cpu")
        self.is_bert = self.ours.backbone.config.model_type == "bert"
        self.flag = FlagEmbedding.BGEM3FlagModel(
            str(path), use_fp16=False, devices="cpu", pooling_method=pooling,
            query_max_length=MAX_LENGTH, passage_max_length=MAX_LENGTH,
        )
        self.out = self.ours.encode(TEXTS, modes=MODES, max_length=MAX_LENGTH)
        self.ref = self.flag.encode(
            TEXTS, max_length=MAX_LENGTH, return_dense=True, return_sparse=True, return_colbert_vecs=True
        )


@pytest.fixture(scope="module", params=["xlmr_ckpt", "xlmr_ckpt_bin", "bert_ckpt"])
def pair(request: pytest.FixtureRequest) -> Pair:
    return Pair(request.getfixturevalue(request.param))


def test_dense(pair: Pair) -> None:
    assert pair.out.dense.shape == pair.ref["dense_vecs"].shape == (len(TEXTS), pair.ours.hidden_size)
    np.testing.assert_allclose(pair.out.dense, pair.ref["dense_vecs"], atol=ATOL, rtol=0)


def without_specials(pair: Pair, weights: list[dict]) -> list[dict]:
    """FlagEmbedding's lexical weights less the special tokens it keeps ([SEP] on BERT, a literal <mask>)."""
    return [{k: v for k, v in w.items() if int(k) not in pair.ours.special_ids} for w in weights]


def test_sparse(pair: Pair) -> None:
    """Every declared special token is dropped; the rest are FlagEmbedding's numbers."""
    ours, ref = pair.out.lexical_weights, without_specials(pair, pair.ref["lexical_weights"])
    assert len(ours) == len(ref) == len(TEXTS)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.keys() == b.keys(), f"text {i} {TEXTS[i][:30]!r}: token ids differ: {set(a) ^ set(b)}"
        for k in a:
            assert abs(a[k] - float(b[k])) <= ATOL, f"text {i}, token {k}: {a[k]} vs {b[k]}"
    assert pair.out.sparse.shape == (len(TEXTS), pair.ours.vocab_size)
    assert sum(map(len, ref)) > 3 * len(TEXTS), "fixture too sparse to test anything"


def test_sparse_with_flagembedding_special_ids_is_flagembedding(pair: Pair) -> None:
    """`special_ids = flag_special_ids` gives FlagEmbedding's numbers exactly, [SEP] and <mask> included."""
    tokenizer = pair.ours.tokenizer
    dropped_now = {tokenizer.sep_token_id, tokenizer.mask_token_id} - set(pair.ours.flag_special_ids)
    assert dropped_now <= set(pair.ours.special_ids) and dropped_now  # BERT: [SEP], [MASK]; XLM-R: <mask>
    saved, pair.ours.special_ids = pair.ours.special_ids, pair.ours.flag_special_ids
    try:
        ours = pair.ours.encode(TEXTS, modes=("sparse",), max_length=MAX_LENGTH).lexical_weights
    finally:
        pair.ours.special_ids = saved
    for i, (a, b) in enumerate(zip(ours, pair.ref["lexical_weights"])):
        assert a.keys() == b.keys() and all(abs(a[k] - float(b[k])) <= ATOL for k in a), f"text {i}"
    if pair.is_bert:  # the case FlagEmbedding gets wrong: [SEP] closes every text
        assert sum(str(tokenizer.sep_token_id) in w for w in ours) > 0
        assert all(str(tokenizer.sep_token_id) not in w for w in pair.out.lexical_weights)


def test_colbert(pair: Pair) -> None:
    for i, (a, b) in enumerate(zip(pair.out.colbert, pair.ref["colbert_vecs"])):
        assert a.shape == b.shape, f"text {i} {TEXTS[i][:30]!r}: {a.shape} vs {b.shape}"
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0, err_msg=f"text {i}")
    assert [len(c) + 1 for c in pair.out.colbert] == pair.out.n_tokens.tolist()


def test_truncation(pair: Pair) -> None:
    tokenizer = pair.flag.tokenizer
    expected = [len(tokenizer(t, truncation=True, max_length=MAX_LENGTH)["input_ids"]) for t in TEXTS]
    assert pair.out.n_tokens.tolist() == expected
    assert pair.out.n_tokens[TEXTS.index(LONG)] == MAX_LENGTH


def test_full_position_range(pair: Pair) -> None:
    """At the model's own limit (every position embedding used) the outputs still agree."""
    limit = pair.ours.max_length
    long_texts = [LONG, LONG[::-1], TEXTS[0]]
    out = pair.ours.encode(long_texts, modes=MODES, max_length=limit)
    ref = pair.flag.encode(long_texts, max_length=limit, return_dense=True, return_sparse=True,
                           return_colbert_vecs=True)
    assert out.n_tokens[0] == limit
    np.testing.assert_allclose(out.dense, ref["dense_vecs"], atol=ATOL, rtol=0)
    for a, b in zip(out.colbert, ref["colbert_vecs"]):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    for a, b in zip(out.lexical_weights, without_specials(pair, ref["lexical_weights"])):
        assert a.keys() == b.keys() and all(abs(a[k] - float(b[k])) <= ATOL for k in a)


@pytest.mark.parametrize("weights", [[0.4, 0.2, 0.4], None])
def test_compute_score(pair: Pair, weights: list[float] | None) -> None:
    """FlagEmbedding scores pair by pair (batch_size=1) is the reference; see the next test for why."""
    if pair.is_bert:
        pytest.skip("FlagEmbedding's compute_score crashes on a BERT tokenizer (eos_token_id is None)")
    ref = pair.flag.compute_score(PAIRS, batch_size=1, weights_for_different_modes=weights,
                                  max_query_length=MAX_LENGTH, max_passage_length=MAX_LENGTH)
    kwargs = {} if weights is None else {"weights": weights}
    ours = pair.ours.compute_score(PAIRS, query_max_length=MAX_LENGTH, passage_max_length=MAX_LENGTH, **kwargs)
    assert ours.keys() == ref.keys()
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], atol=ATOL, rtol=0, err_msg=key)


def test_colbert_score_does_not_depend_on_batch(pair: Pair) -> None:
    """FlagEmbedding's batched compute_score takes the ColBERT max over zero padding rows of shorter passages,
    which lifts negative maxima to 0 (3.8e-3 off on this data); ours pads nothing and matches its
    unpadded (batch_size=1) result whatever the batch holds."""
    if pair.is_bert:
        pytest.skip("FlagEmbedding's compute_score crashes on a BERT tokenizer (eos_token_id is None)")
    queries = sample_texts(40)[11:31]
    pairs = list(zip(queries, ["", "x", "猫", "🍕", "ok"] * 4)) + [(queries[0], LONG)]
    lengths = {"query_max_length": MAX_LENGTH, "passage_max_length": MAX_LENGTH}
    ours = pair.ours.compute_score(pairs, **lengths)["colbert"]
    alone = [pair.ours.compute_score([p], **lengths)["colbert"][0] for p in pairs]
    ref = pair.flag.compute_score(pairs, batch_size=1, max_query_length=MAX_LENGTH,
                                  max_passage_length=MAX_LENGTH)["colbert"]
    np.testing.assert_allclose(ours, alone, atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_output_does_not_depend_on_batch(pair: Pair) -> None:
    """A text encoded alone, in the full mixed batch, or in tiny token-budget batches gives the same output."""
    model = pair.ours
    tiny = model.encode(TEXTS, modes=MODES, max_length=MAX_LENGTH, batch_tokens=MAX_LENGTH)  # one text per pass
    for i in [0, 4, 9, 11, 13, len(TEXTS) - 1]:
        alone = model.encode([TEXTS[i]], modes=MODES, max_length=MAX_LENGTH)
        for other in (pair.out, tiny):
            np.testing.assert_allclose(alone.dense[0], other.dense[i], atol=ATOL, rtol=0)
            np.testing.assert_allclose(alone.colbert[0], other.colbert[i], atol=ATOL, rtol=0)
            a, b = alone.lexical_weights[0], other.lexical_weights[i]
            assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= ATOL for k in a)
