"""Cross-encoder rerankers: parity with FlagEmbedding 1.4.2's FlagReranker, batching, dtypes and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3embed.rerank import Reranker
from m3testkit.checkpoints import sample_texts

FlagEmbedding = pytest.importorskip("FlagEmbedding")

ATOL = 1e-5
LONG = " ".join(sample_texts(40)[11:])  # ~600 tokens of mixed scripts: longer than any max_length below
TEXTS = sample_texts(40)[11:31] + [
    "Le chat lit une longue lettre près du port.",
    "Кошка читает длинное письмо под дождём.",
    "猫在雨中读一封长信。",
    "I love pizza 🍕🍕 and rockets 🚀! 😀",
    "",
    "<mask>",
    "a <mask> b </s> c <pad> d <s> e <unk> f",  # literal XLM-R special tokens
    "[MASK] x [SEP] y [PAD] z [CLS]",  # literal BERT special tokens
    "  leading, trailing   and inner  spaces  ",
    "ᚠᚢᚦ ᚨᚱᚲ runes",
    LONG,
]
PAIRS = [(TEXTS[i], TEXTS[(7 * i + 3) % len(TEXTS)]) for i in range(len(TEXTS))] + [
    (LONG, LONG), (LONG, ""), ("", LONG), ("", ""), (TEXTS[0], LONG[::-1])]


class Pair:
    """One reranker checkpoint loaded by both libraries."""

    def __init__(self, path: Path) -> None:
        self.ours = Reranker.from_pretrained(path, device="cpu")
        self.flag = FlagEmbedding.FlagReranker(str(path), use_fp16=False, devices="cpu")


@pytest.fixture(scope="module", params=["xlmr_reranker", "bert_reranker"])
def pair(request: pytest.FixtureRequest) -> Pair:
    return Pair(request.getfixturevalue(request.param))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("max_length", [48, None])  # None: the model's own limit (130 tiny BERT, 128 tiny XLM-R)
def test_scores_equal_flag_reranker(pair: Pair, normalize: bool, max_length: int | None) -> None:
    limit = max_length or pair.ours.max_length
    ours = pair.ours.compute_score(PAIRS, normalize=normalize, max_length=max_length)
    ref = pair.flag.compute_score(PAIRS, max_length=limit, normalize=normalize)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    assert np.std(ours) > (0.005 if normalize else 0.02), "fixture scores too alike to test anything"
    if normalize:
        assert all(0 < s < 1 for s in ours)


def test_query_max_length_and_one_pair_as_flag_reranker(pair: Pair) -> None:
    ours = pair.ours.compute_score(PAIRS, max_length=64, query_max_length=10)
    ref = pair.flag.compute_score(PAIRS, max_length=64, query_max_length=10)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    one = pair.ours.compute_score(PAIRS[0], max_length=64)  # a single pair: a list of one score, as FlagReranker
    np.testing.assert_allclose(one, pair.flag.compute_score(PAIRS[0], max_length=64), atol=ATOL, rtol=0)


def test_pairs_are_truncated_to_max_length(pair: Pair) -> None:
    from m3embed.tokenize import tokenize_pairs

    ml, qml = pair.ours.lengths(40)
    assert qml == 30  # FlagReranker: 3/4 of max_length for the query
    ids, _ = tokenize_pairs(pair.ours.tokenizer, [(LONG, LONG), (LONG, "x"), ("x", LONG)], ml, qml)
    assert [len(x) for x in ids][0] == 40 and len(ids[2]) == 40 and len(ids[1]) < 40


def test_score_does_not_depend_on_the_batch(pair: Pair) -> None:
    """A pair scored alone, in the full mixed batch, or in one-pair token-budget batches scores the same."""
    full = pair.ours.compute_score(PAIRS, max_length=64)
    tiny = pair.ours.compute_score(PAIRS, max_length=64, batch_tokens=1)
    alone = [pair.ours.compute_score([p], max_length=64)[0] for p in PAIRS[::5]]
    np.testing.assert_allclose(tiny, full, atol=ATOL, rtol=0)
    np.testing.assert_allclose(alone, full[::5], atol=ATOL, rtol=0)


def test_bfloat16_stays_close(xlmr_reranker: Path) -> None:
    exact = Reranker.from_pretrained(xlmr_reranker, device="cpu").compute_score(PAIRS, max_length=64)
    half = Reranker.from_pretrained(xlmr_reranker, device="cpu", dtype="bfloat16")
    assert half.dtype.__str__() == "torch.bfloat16"
    scores = half.compute_score(PAIRS, max_length=64)
    assert np.corrcoef(exact, scores)[0, 1] > 0.95


def test_rank_orders_each_list_best_first(xlmr_reranker: Path) -> None:
    model = Reranker.from_pretrained(xlmr_reranker, device="cpu")
    queries, lists = TEXTS[:3], [TEXTS[3:9], [], TEXTS[9:12]]
    ranked = model.rank(queries, lists, top_n=4, max_length=64)
    for q, ps, got in zip(queries, lists, ranked):
        scores = model.compute_score([(q, p) for p in ps], max_length=64) if ps else []
        want = sorted(range(len(ps)), key=lambda i: -scores[i])[:4]
        assert [i for i, _ in got] == want
        np.testing.assert_allclose([s for _, s in got], [scores[i] for i in want], atol=ATOL)


# ---- bad input ----


@pytest.fixture(scope="module")
def model(xlmr_reranker: Path) -> Reranker:
    return Reranker.from_pretrained(xlmr_reranker, device="cpu")


@pytest.mark.parametrize(("pairs", "match"), [
    ([("q", "p"), ("q", 3)], r"passage of pair 1 is int"),
    ([("q", "p"), (None, "p")], r"query of pair 1 is NoneType"),
    ([("q", "p"), ("q", b"p")], r"pair 1 is bytes.*decode"),
    ([("q", "p"), ("q", "p", "x")], r"pair at index 1 .* of 3 items"),
    ([("q", "p"), "qp"], r"pair at index 1 .*str"),
    ("just a string", r"sequence of \(query, passage\) pairs, got str"),
    (42, r"got int"),
])
def test_bad_pairs_name_the_item(model: Reranker, pairs: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        model.compute_score(pairs)  # type: ignore[arg-type]


def test_lengths_follow_the_length_policy(model: Reranker) -> None:
    assert model.lengths() == (128, 96)  # 512 capped silently at the tiny model's 128 positions
    with pytest.raises(ValueError, match="max_length=200 exceeds the model's position limit of 128"):
        model.compute_score([("q", "p")], max_length=200)
    with pytest.raises(ValueError, match="query_max_length=61 must be between 1 and 60"):
        model.compute_score([("q", "p")], max_length=64, query_max_length=61)
    assert model.lengths(8) == (8, 4)  # the default query share is capped so that the pair always fits
    model.pair_max_length = 64  # a per-model default, as --rerank-max-length sets it
    try:
        assert model.lengths() == (64, 48) and model.lengths(100) == (100, 75)
    finally:
        model.pair_max_length = 128


def test_empty_input_and_loading_errors(model: Reranker, xlmr_ckpt: Path, tmp_path: Path) -> None:
    assert model.compute_score([]) == []
    with pytest.raises(ValueError, match="not a cross-encoder reranker.*XLMRobertaModel"):
        Reranker.from_pretrained(xlmr_ckpt, device="cpu")  # an embedding checkpoint
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Reranker.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="float16 is for GPUs"):
        Reranker.from_pretrained(xlmr_ckpt, device="cpu", dtype="float16")
