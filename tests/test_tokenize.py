from __future__ import annotations

import threading

import numpy as np
import pytest
from transformers import AutoTokenizer

from m3embed.tokenize import budget_batches, check_texts, count_truncated, insert_cls, pad, tokenize


def test_check_texts_names_the_bad_index():
    assert check_texts("one") == ["one"]
    with pytest.raises(TypeError, match="index 2 is int"):
        check_texts(["a", "b", 3])
    with pytest.raises(TypeError, match="index 0 is bytes.*decode"):
        check_texts([b"x"])
    with pytest.raises(TypeError, match="index 1 is NoneType"):
        check_texts(["a", None])


def test_insert_cls_every_n_tokens_and_fits_the_limit():
    ids = [0] + list(range(10, 30)) + [2]  # CLS, 20 content tokens, EOS
    out, pos = insert_cls(ids, cls_id=0, every=8, max_length=100)
    assert pos == [0, 9, 18]
    assert [out[p] for p in pos] == [0, 0, 0]
    assert [t for i, t in enumerate(out) if i not in pos] == ids[1:-1] + [2]
    # a tight limit drops content until content + specials + inserted CLS fit
    out, pos = insert_cls(ids, cls_id=0, every=8, max_length=12)
    assert len(out) <= 12 and out[-1] == 2 and out[1:3] == [10, 11]
    assert all(out[p] == 0 for p in pos)


def test_budget_batches_are_longest_first_and_within_budget():
    lengths = np.array([5, 50, 7, 50, 3, 20])
    batches = budget_batches(lengths, batch_tokens=100, max_batch_size=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    for b in batches:
        assert len(b) * lengths[b].max() <= 100 or len(b) == 1
        assert len(b) <= 3
    assert list(lengths[batches[0]]) == [50, 50]
    # a single text longer than the budget still gets its own batch
    assert [len(b) for b in budget_batches(np.array([500]), 100, 8)] == [1]


def test_pad_right_pads_with_mask():
    ids, mask = pad([[0, 5, 2], [0, 2]], pad_id=1)
    assert ids.tolist() == [[0, 5, 2], [0, 2, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_threads_tokenizing_at_different_lengths_keep_their_own_cut(xlmr_ckpt):
    """A fast tokenizer keeps its truncation on the Rust object the threads share (a server's batch worker beside
    the caller's own encode): each call must still cut to its own length."""
    tok = AutoTokenizer.from_pretrained(xlmr_ckpt)
    texts = ["the river runs past the old library and the blue house " * 8] * 16
    wrong: list[int] = []

    def run(max_length: int) -> None:
        for _ in range(150):
            ids = tokenize(tok, texts, max_length)
            wrong.extend(len(x) for x in ids if len(x) != max_length)
            count_truncated(tok, texts, ids, max_length)  # tokenizes again at max_length + 1

    threads = [threading.Thread(target=run, args=(n,)) for n in (8, 64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
