"""Search + cross-encoder rerank: the same as reranking the first stage's candidate list by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3embed.index import Index
from m3embed.rerank import Reranker
from m3testkit.checkpoints import sample_texts

TEXTS = sample_texts(400 + 8, seed=3)
QUERY_TEXTS = TEXTS[400:]


@pytest.fixture(scope="module")
def reranker(xlmr_reranker: Path) -> Reranker:
    return Reranker.from_pretrained(xlmr_reranker, device="cpu")


@pytest.fixture
def texts_index(make_index, corpus, engine) -> Index:
    index = make_index(engine)
    index.add_outputs(corpus.ids, corpus.docs, texts=TEXTS[:400], metadata=corpus.meta)
    return index


@pytest.mark.parametrize("mode", ["dense", "all"])
def test_rerank_equals_reranking_the_candidates_by_hand(texts_index: Index, corpus, reranker: Reranker,
                                                        mode: str) -> None:
    spec = texts_index.prepare(k=5, mode=mode, candidates=20, reranker=reranker, rerank_top=15, explain=True)
    results = texts_index.run(spec, corpus.queries, QUERY_TEXTS)
    first = texts_index.search(corpus.queries, k=15, mode=mode, candidates=20)
    for q, hits, candidates in zip(QUERY_TEXTS, results, first):
        scores = reranker.compute_score([(q, h.text) for h in candidates])
        order = np.argsort(-np.array(scores), kind="stable")[:5]
        assert [h.id for h in hits] == [candidates[i].id for i in order]
        np.testing.assert_allclose([h.score for h in hits], [scores[i] for i in order], atol=1e-5, rtol=0)
        by_id = {h.id: h.score for h in candidates}
        for h in hits:
            assert set(h.scores) == {"dense", "sparse", "colbert", "rerank"} and h.scores["rerank"] == h.score
            assert h.text == TEXTS[corpus.ids.index(h.id)] and h.id in by_id


def test_rerank_top_defaults_and_texts_follow_with_text(texts_index: Index, corpus, reranker: Reranker) -> None:
    spec = texts_index.prepare(k=3, reranker=reranker)
    assert spec.rerank_top == 100 and spec.first_k == 100 and spec.candidates >= 100
    hits = texts_index.run(texts_index.prepare(k=3, reranker=reranker, rerank_top=10, with_text=False),
                           corpus.queries.select([0]), QUERY_TEXTS[:1])[0]
    assert len(hits) == 3 and all(h.text is None for h in hits)
    assert set(hits[0].scores) == {"all", "rerank"}  # the first stage's hybrid score and the logit


def test_rerank_errors_name_the_fix(texts_index: Index, make_index, corpus, reranker: Reranker, engine) -> None:
    with pytest.raises(ValueError, match=r"rerank_top=20 \(--rerank-top\) needs a reranker: .*--reranker NAME"):
        texts_index.prepare(k=5, rerank_top=20)
    with pytest.raises(ValueError, match=r"rerank_top \(3\) must be at least k \(5\)"):
        texts_index.prepare(k=5, reranker=reranker, rerank_top=3)
    with pytest.raises(ValueError, match=r"colbert_top \(10\) must be at least rerank_top \(20\)"):
        texts_index.prepare(k=5, reranker=reranker, rerank_top=20, colbert_top=10)
    spec = texts_index.prepare(k=5, reranker=reranker)
    with pytest.raises(ValueError, match="reranking reads the query texts"):
        texts_index.run(spec, corpus.queries)
    with pytest.raises(ValueError, match="reranking reads the query texts"):
        texts_index.search(corpus.queries, reranker=reranker)
    no_text = make_index(engine, name="notext", store_text=False)
    no_text.add_outputs(corpus.ids, corpus.docs)
    with pytest.raises(ValueError, match="store_text=False.*rebuild it with store_text=True"):
        no_text.prepare(k=5, reranker=reranker)
    missing = make_index(engine, name="missing")
    missing.add_outputs(corpus.ids[:50], corpus.docs.select(list(range(50))))  # added without texts
    with pytest.raises(ValueError, match="document 'doc-.*' has no stored text"):
        missing.run(missing.prepare(k=5, reranker=reranker, rerank_top=10), corpus.queries, QUERY_TEXTS)
