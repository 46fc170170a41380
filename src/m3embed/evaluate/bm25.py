"""The BM25 baseline: bm25s (Lucene's BM25 variant) over word tokens, one token per CJK/kana character."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from m3embed._optional import require
from m3embed.evaluate.data import Searcher

BM25_NAME = "bm25"

# CJK ideographs and kana have no spaces between words: one token per character. Hangul is spaced, so it
# stays word-level like every other script.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_BM25_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")


def bm25_tokens(text: str) -> list[str]:
    """Split lower-cased text into BM25 terms: word-character runs, single characters for CJK/kana."""
    return _BM25_TOKEN.findall(text.lower())


@dataclass(frozen=True)
class BM25Config:
    """BM25 baseline settings (bm25s, Lucene's BM25 variant).

    Attributes:
        k1: term-frequency saturation; 0.9 is Anserini/Pyserini's default for BEIR.
        b: length normalisation; 0.4 is Anserini/Pyserini's default.
        stopwords: "en" drops bm25s' English stopword list; "none" keeps every term.
    """

    k1: float = 0.9
    b: float = 0.4
    stopwords: str = "en"

    def describe(self) -> str:
        stop = "English stopwords removed" if self.stopwords == "en" else "no stopwords"
        return (f"bm25s Lucene BM25 k1={self.k1} b={self.b}; lower-cased \\w+ words, one token per CJK/kana "
                f"character, {stop}, no stemming")


def bm25_searcher(doc_ids: Sequence[str], doc_texts: Sequence[str], k: int = 100,
                  config: BM25Config = BM25Config(), progress: bool = False) -> Searcher:
    """Index the corpus with bm25s and return a searcher over it (documents scoring 0 are left out).

    `progress` shows bm25s' own bars on stderr while the corpus is tokenised and indexed.
    """
    bm25s = require("bm25s", "eval")
    from bm25s.tokenization import Tokenizer

    if config.stopwords not in ("en", "none"):
        raise ValueError(f"stopwords={config.stopwords!r}; choose 'en' or 'none'")
    tokenizer = Tokenizer(lower=False, splitter=bm25_tokens, stopwords="en" if config.stopwords == "en" else None)
    corpus_tokens = tokenizer.tokenize(list(doc_texts), update_vocab=True, return_as="ids",
                                       show_progress=progress)
    model = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
    model.index(corpus_tokens, show_progress=progress)
    empty_id = tokenizer.word_to_id.get("")  # bm25s' placeholder for texts without a known term
    depth = min(k, len(doc_ids))

    def search(texts: Sequence[str]) -> list[dict[str, float]]:
        tokens = tokenizer.tokenize(list(texts), update_vocab=False, return_as="ids", show_progress=False)
        hits, scores = model.retrieve(tokens, k=depth, show_progress=False)
        out = []
        for q_tokens, row, row_scores in zip(tokens, hits, scores):
            if all(t == empty_id for t in q_tokens):  # no known term: nothing matches
                out.append({})
                continue
            out.append({doc_ids[i]: float(s) for i, s in zip(row, row_scores) if s > 0})
        return out

    return search
