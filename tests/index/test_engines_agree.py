"""Same data, same queries: Qdrant Edge and qdrant-client (the server API) return the same top-k and scores."""

from __future__ import annotations

import numpy as np
import pytest

from m3embed.index import ColbertStorage
from m3embed.index.store import DEFAULT_CANDIDATES
from m3embed.modes import SEARCH_MODES


@pytest.mark.parametrize("colbert_dtype", ["float16", "float32"])
def test_edge_and_qdrant_agree(make_index, corpus, colbert_dtype: str) -> None:
    storage = ColbertStorage(dtype=colbert_dtype)
    indexes = [make_index(engine, name=engine, colbert_storage=storage) for engine in ("edge", "qdrant-memory")]
    for index in indexes:
        index.add_outputs(corpus.ids, corpus.docs, metadata=corpus.meta)
    for mode in SEARCH_MODES:
        for flt in (None, {"lang": "fr"}):
            edge, qdrant = (ix.search(corpus.queries, k=10, mode=mode, filter=flt) for ix in indexes)
            for a, b in zip(edge, qdrant):
                assert [h.id for h in a] == [h.id for h in b], (mode, flt)
                np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-4, atol=1e-5)
    edge, qdrant = (ix.search(corpus.queries, k=10, mode="all", colbert_top=15) for ix in indexes)
    assert [[h.id for h in hits] for hits in edge] == [[h.id for h in hits] for hits in qdrant]


def test_default_candidates_recall_exhaustive_m3(make_index, corpus, exact) -> None:
    """The default candidates per route find the exhaustive M3 top-10 (every document rescored), while leaving
    most of the corpus unscored."""
    index = make_index("edge")
    index.add_outputs(corpus.ids, corpus.docs)
    hits = index.search(corpus.queries, k=10, mode="all")
    assert hits == index.search(corpus.queries, k=10, mode="all", candidates=DEFAULT_CANDIDATES)  # the default
    assert 2 * DEFAULT_CANDIDATES < len(corpus.ids)  # the union of both routes is not the whole corpus
    found = 0
    for i, got in enumerate(hits):
        want, _ = exact.search(corpus.queries, i, "all", 10, candidates=len(corpus.ids))
        found += len({h.id for h in got} & {corpus.ids[j] for j in want})
    assert found / (10 * len(hits)) >= 0.99
