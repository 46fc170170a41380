"""Text to token ids: input checks, truncation, (query, passage) pairs, MCLS insertion, token-budget batches."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from m3embed.checkpoint import CASE_FOLDS

if TYPE_CHECKING:
    import torch
    from transformers import BatchEncoding


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """Return the texts as a list; raise TypeError naming the first item that is not a str."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text at index {i} is {type(t).__name__}, expected str"
                            + (" (decode bytes first)" if isinstance(t, (bytes, bytearray)) else ""))
    return list(texts)


def check_pairs(pairs: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """Return (query, passage) pairs as a list of tuples; one pair ("q", "p") is a list of one, as in FlagEmbedding.

    Raises TypeError naming the first item that is not a pair of two str.
    """
    if isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(t, str) for t in pairs):
        return [(pairs[0], pairs[1])]
    if isinstance(pairs, (str, bytes, bytearray)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a sequence of (query, passage) pairs, got {type(pairs).__name__}")
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            shape = f" of {len(pair)} items" if isinstance(pair, (tuple, list)) else ""
            raise TypeError(f"pair at index {i} must be a (query, passage) pair, got {type(pair).__name__}{shape}")
        for part, text in zip(("query", "passage"), pair):
            if not isinstance(text, str):
                raise TypeError(f"the {part} of pair {i} is {type(text).__name__}, expected str"
                                + (" (decode bytes first)" if isinstance(text, (bytes, bytearray)) else ""))
        out.append((pair[0], pair[1]))
    return out


def resolve_max_length(given: int | None, limit: int, default: int | None = None, name: str = "max_length") -> int:
    """The truncation length to use, by the one policy of m3embed.

    An explicit `given` above the model's position `limit` (or below 2, no room for the special tokens) is an
    error naming `name`; a default (`default`, else `limit`) is capped at `limit` silently.
    """
    if given is None:
        return min(limit if default is None else int(default), limit)
    given = int(given)
    if given > limit:
        raise ValueError(f"{name}={given} exceeds the model's position limit of {limit} tokens; pass at most "
                         f"{limit} or leave it unset")
    if given < 2:
        raise ValueError(f"{name} must be at least 2 (room for the special tokens), got {given}")
    return given


_WORD = re.compile(r"[^\W\d_]+")  # a run of letters (any script)


def fold_case(texts: list[str], rule: str) -> list[str]:
    """Texts as a model with case folding `rule` reads them: "none" as given; "capitals" lower-cases every word
    written in capitals (two letters or more, all upper case: "UNIVERSITY LIBRARIES" -> "university libraries",
    "Carl Scheele" and "a DNA test" -> "a dna test"); "lower" lower-cases the whole text."""
    if rule == "none":
        return texts
    if rule == "lower":
        return [t.lower() for t in texts]
    if rule != "capitals":
        raise ValueError(f"case_fold must be one of {CASE_FOLDS}, got {rule!r}")
    return [_WORD.sub(_fold_word, t) for t in texts]


def _fold_word(m: re.Match) -> str:
    word = m[0]
    return word.lower() if len(word) > 1 and word.isupper() else word


_TOKENIZER_LOCK = threading.Lock()


def _call(tokenizer, *args, **kwargs) -> BatchEncoding:
    """`tokenizer(*args, **kwargs)` under one lock. A fast tokenizer sets its truncation on the Rust object it
    shares between threads, so two calls at once with different lengths (a server's batch worker and a caller's
    own `encode`) would cut each other's texts to the wrong length."""
    with _TOKENIZER_LOCK:
        return tokenizer(*args, **kwargs)


def _encode(tokenizer, texts: list[str], max_length: int) -> BatchEncoding:
    return _call(tokenizer, texts, truncation=True, max_length=max_length, add_special_tokens=True,
                 return_attention_mask=False, return_token_type_ids=False)


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids with the model's special tokens, truncated to max_length (as FlagEmbedding does)."""
    if not texts:
        return []
    return _encode(tokenizer, texts, max_length)["input_ids"]


def tokenize_words(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """`tokenize`'s ids and, per token, the index of the word it is a piece of in its text (-1: special tokens),
    from a fast tokenizer's `word_ids`."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; word boundaries need one "
                         "(a tokenizer.json)")
    enc = _encode(tokenizer, texts, max_length)
    return enc["input_ids"], [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))]


class TruncationWarning(UserWarning):
    """`cut` of `total` texts were longer than `max_length` tokens and were cut to it; the message names the ways
    out (`limit`: the model's own limit, when max_length is below it)."""

    def __init__(self, cut: int, total: int, max_length: int, limit: int | None = None) -> None:
        room = f"raise max_length (--max-length) up to the model's {limit}, or " if limit and limit > max_length \
            else ""
        super().__init__(f"{cut} of {total} texts were longer than max_length={max_length} tokens and were cut to "
                         f"it (the rest of each is not encoded); {room}split long texts into passages")
        self.cut, self.total, self.max_length, self.limit = cut, total, max_length, limit


def count_truncated(tokenizer, texts: list[str], ids: list[list[int]], max_length: int) -> int:
    """How many of `texts` `tokenize` cut: those of max_length ids that have more when allowed one more."""
    at_limit = [texts[i] for i, x in enumerate(ids) if len(x) >= max_length]
    if not at_limit:
        return 0
    longer = _call(tokenizer, at_limit, truncation=True, max_length=max_length + 1, add_special_tokens=True,
                   return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return sum(len(x) > max_length for x in longer)


def warn_truncated(tokenizer, texts: list[str], ids: list[list[int]], max_length: int, limit: int | None) -> None:
    """One `TruncationWarning` counting the texts `tokenize` cut; nothing when none was."""
    import warnings

    cut = count_truncated(tokenizer, texts, ids, max_length)
    if cut:
        warnings.warn(TruncationWarning(cut, len(texts), max_length, limit), stacklevel=2)


@contextlib.contextmanager
def one_truncation_warning() -> Iterator[None]:
    """Within it, the `TruncationWarning`s of many encode calls (an index build's batches) are summed into one,
    given when the block ends without an error; other warnings pass through."""
    import warnings

    caught: list[warnings.WarningMessage] = []
    ok = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        ok = True
    finally:
        cuts = [w.message for w in caught if isinstance(w.message, TruncationWarning)]
        for w in caught:
            if not isinstance(w.message, TruncationWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        if ok and cuts:
            warnings.warn(TruncationWarning(sum(c.cut for c in cuts), sum(c.total for c in cuts),
                                            cuts[0].max_length, cuts[0].limit), stacklevel=3)


def tokenize_pairs(tokenizer, pairs: list[tuple[str, str]], max_length: int, query_max_length: int,
                   passage_max_length: int | None = None) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids of (query, passage) pairs, built exactly as FlagEmbedding 1.4.2's FlagReranker builds them.

    The query is cut to `query_max_length` tokens and the passage to `passage_max_length` (default max_length;
    special tokens not counted; FlagEmbedding's reranker training cuts them at q + p/4 and p + q/2 for a pair of
    q + p); both are decoded back to text and tokenised again as a pair with the model's special tokens, truncating
    only the passage so that the pair fits `max_length` (FlagEmbedding's `prepare_for_model_compat` under
    transformers 5, where a decode and re-tokenise round trip can move a cut inside a word). The caller keeps
    `query_max_length` + the pair's special tokens within `max_length`.

    Returns the ids and, for models that take them (BERT), the token type ids (0 query, 1 passage); else None.
    """
    if not pairs:
        return [], None

    def cut(texts: list[str], n: int) -> list[str]:
        ids = _call(tokenizer, texts, add_special_tokens=False, truncation=True, max_length=n,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    queries = cut([q for q, _ in pairs], query_max_length)
    passages = cut([p for _, p in pairs], passage_max_length or max_length)
    enc = _call(tokenizer, queries, passages, truncation="only_second", max_length=max_length,
                return_attention_mask=False)
    ids, types = enc["input_ids"], enc.get("token_type_ids")
    empty = [i for i, p in enumerate(passages) if not p]
    if empty:  # tokenizer(query, "") encodes the query alone ("" is no pair), as FlagReranker's per-pair call does
        alone = _call(tokenizer, [queries[i] for i in empty], return_attention_mask=False)
        for j, i in enumerate(empty):
            ids[i] = alone["input_ids"][j]
            if types is not None:
                types[i] = alone["token_type_ids"][j]
    return ids, types


def insert_cls(ids: list[int], cls_id: int, every: int, max_length: int) -> tuple[list[int], list[int]]:
    """MCLS (paper §3.4): a CLS token before every `every` content tokens, total kept within max_length.

    `ids` is `[CLS] content... [EOS]`. Returns the new ids and the positions of all CLS tokens.
    """
    content, eos = ids[1:-1], ids[-1:]
    # content n needs n + 2 + (ceil(n / every) - 1) positions: shrink n until it fits
    n = len(content)
    while n > 0 and n + 1 + len(eos) + (n - 1) // every > max_length:
        n -= 1
    out, positions = [ids[0]], [0]
    for start in range(0, n, every):
        if start:
            positions.append(len(out))
            out.append(cls_id)
        out.extend(content[start : min(start + every, n)])
    return out + eos, positions


def budget_batches(lengths: np.ndarray, batch_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Group text indices, longest first, so that batch size × longest length stays within batch_tokens."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, min(max_batch_size, batch_tokens // max(longest, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: input_ids (B, T) and attention_mask (B, T)."""
    import torch  # here, so that length checks (resolve_max_length) import no torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return input_ids, mask
