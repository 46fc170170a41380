"""Fixtures for index tests: small synthetic corpora, an index per engine, and a NumPy brute-force M3."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from m3embed import scoring
from m3embed.index import ColbertStorage, Index
from m3embed.types import M3Output
from m3testkit import synthetic

DIM = 32
ENGINES = ("edge", "qdrant-memory")  # qdrant-path: same code as memory, slower; covered by reopen tests


@pytest.fixture(scope="session")
def corpus() -> SimpleNamespace:
    """400 synthetic documents (32-d, ~20 lexical ids, 3-10 colbert rows), 8 queries, ids and metadata."""
    docs = synthetic.corpus(400, dim=DIM, vocab=3000, n_ids=20, tokens=(3, 10), topics=8, seed=0)
    queries, _ = synthetic.queries(docs, 8, q_ids=8, q_tokens=(3, 8), seed=1)
    ids = [f"doc-{i}" for i in range(len(docs))]
    meta = [{"lang": ("en", "de", "fr")[i % 3], "year": 1990 + i % 30, "tags": ["even" if i % 2 == 0 else "odd"]}
            for i in range(len(docs))]
    texts = [f"text of document {i}" for i in range(len(docs))]
    return SimpleNamespace(docs=docs, queries=queries, ids=ids, meta=meta, texts=texts)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_index(tmp_path: Path) -> Callable[..., Index]:
    """`make_index(engine, **create_options)`: a new empty index on that engine, closed after the test
    ("edge-engine": Qdrant Edge with ColBERT in its multivector field, as indexes of format <= 3 keep it).
    ColBERT is stored in float16 unless told otherwise (exact scores to compare with NumPy; the default for new
    token-store indexes, binary codes, is tested in test_tokens.py)."""
    made: list[Index] = []

    def _make(engine: str, name: str = "idx", **options) -> Index:
        options.setdefault("fingerprint", "synthetic-test")
        options.setdefault("dim", DIM)
        if "colbert" in options.get("modes", ("colbert",)):
            options.setdefault("colbert_storage", ColbertStorage())
        if engine == "qdrant-memory":
            index = Index.create(":memory:", engine="qdrant", **options)
        elif engine == "edge-engine":
            index = Index.create(tmp_path / name, engine="edge", colbert_store="engine", **options)
        else:
            index = Index.create(tmp_path / name, engine=engine.split("-")[0], **options)
        made.append(index)
        return index

    yield _make
    for index in made:
        index.close()


@pytest.fixture
def filled(make_index: Callable[..., Index], corpus: SimpleNamespace, engine: str) -> Index:
    index = make_index(engine)
    index.add_outputs(corpus.ids, corpus.docs, texts=corpus.texts, metadata=corpus.meta)
    return index


class Exact:
    """Brute-force M3 scores of one query against every document, with NumPy (m3embed.scoring)."""

    def __init__(self, docs: M3Output) -> None:
        self.docs = docs
        # the index stores colbert rows as float16 by default: score what it stores
        self.colbert = [c.astype(np.float16).astype(np.float32) for c in docs.colbert]

    def per_mode(self, q: M3Output, i: int) -> dict[str, np.ndarray]:
        return {
            "dense": scoring.dense_scores(q.dense[i : i + 1], self.docs.dense)[0],
            "sparse": scoring.lexical_scores(q.sparse[[i]], self.docs.sparse)[0],
            # float16 storage rounds the query rows too (Qdrant Edge does; the index does it for every engine)
            "colbert": scoring.colbert_scores(q.colbert[i].astype(np.float16).astype(np.float32),
                                              self.colbert).astype(np.float64),
        }

    def search(self, q: M3Output, i: int, mode: str, k: int, candidates: int,
               weights: tuple[float, float, float] = (0.4, 0.2, 0.4), allowed: np.ndarray | None = None,
               colbert_top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(doc indices, scores) of the top k: single modes exhaustively, hybrid modes over the union of the
        exact dense and sparse top `candidates` (documents outside `allowed` excluded); with `colbert_top`,
        ColBERT scores only the union's best `colbert_top` by w_d·dense + w_s·sparse."""
        s = self.per_mode(q, i)
        mask = np.ones(len(self.docs), bool) if allowed is None else allowed
        # a sparse search finds only documents sharing a token with the query
        route = {"dense": np.where(mask, s["dense"], -np.inf),
                 "sparse": np.where(mask & (s["sparse"] > 0), s["sparse"], -np.inf)}
        if mode in ("dense", "sparse"):
            return _top(route[mode], k)
        union = np.union1d(_top(route["dense"], candidates)[0], _top(route["sparse"], candidates)[0])
        if colbert_top is not None and mode in ("colbert", "all"):
            partial = np.full(len(self.docs), -np.inf)
            partial[union] = weights[0] * s["dense"][union] + weights[1] * s["sparse"][union]
            union = _top(partial, colbert_top)[0]
        parts = {"colbert": ("colbert",), "dense+sparse": ("dense", "sparse"), "all": ("dense", "sparse", "colbert")}
        w = {"dense": weights[0], "sparse": weights[1], "colbert": 1.0 if mode == "colbert" else weights[2]}
        total = np.full(len(self.docs), -np.inf)
        total[union] = sum(w[m] * s[m][union] for m in parts[mode])
        return _top(total, k)


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")[:k]
    order = order[np.isfinite(scores[order])]
    return order, scores[order]


@pytest.fixture(scope="session")
def exact(corpus: SimpleNamespace) -> Exact:
    return Exact(corpus.docs)
