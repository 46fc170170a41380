"""Index behaviour on every engine: writes, counts, filters, and search results equal to NumPy brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m3embed.errors import ParamError
from m3embed.index import Index
from m3embed.modes import SEARCH_MODES
from m3embed.types import M3Output


def _ids(hits) -> list[str]:
    return [h.id for h in hits]


@pytest.mark.parametrize("mode", SEARCH_MODES)
def test_search_equals_brute_force(filled: Index, corpus, exact, mode: str) -> None:
    k, cands = 10, 20
    results = filled.search(corpus.queries, k=k, mode=mode, candidates=cands)
    for i, hits in enumerate(results):
        want, scores = exact.search(corpus.queries, i, mode, k, cands)
        assert _ids(hits) == [corpus.ids[j] for j in want], f"query {i}"
        np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-4, atol=1e-5)


def test_prepare_checks_once_and_names_the_parameter(make_index) -> None:
    """Search arguments are checked by `prepare` alone (the plan trusts its spec); each refusal is a ParamError
    carrying the parameter, which the HTTP service reports as the request field."""
    index = make_index("edge")
    for options, param, message in [
        ({"k": 0}, "k", "k must be at least 1, got 0"),
        ({"candidates": 0}, "candidates", "candidates must be at least 1"),
        ({"hnsw_ef": 0}, "hnsw_ef", "hnsw_ef must be at least 1"),
        ({"mode": "bm25"}, "mode", "unknown search mode 'bm25'"),
        ({"weights": (1, 1)}, "weights", r"weights must be \(dense, sparse, colbert\)"),
        ({"filter": {"a": 1.5}}, "filter", "got float"),
        ({"k": 5, "colbert_top": 3}, "colbert_top", r"colbert_top \(3\) must be at least k \(5\)"),
        ({"rerank_top": 20}, "rerank_top", r"rerank_top=20 \(--rerank-top\) needs a reranker: .*--reranker NAME"),
    ]:
        with pytest.raises(ParamError, match=message) as info:
            index.prepare(**options)
        assert info.value.param == param, options


def test_colbert_only_index_scans_every_document(make_index, corpus, exact, engine) -> None:
    """An index that stores ColBERT alone serves mode colbert by an exact MaxSim over all documents."""
    index = make_index(engine, modes=("colbert",))
    index.add_outputs(corpus.ids, M3Output(colbert=corpus.docs.colbert))
    assert index.prepare().mode == "colbert"
    results = index.search(corpus.queries, k=7)
    for i, hits in enumerate(results):
        colbert = exact.per_mode(corpus.queries, i)["colbert"]
        want = np.argsort(-colbert, kind="stable")[:7]
        scores = colbert[want]
        assert _ids(hits) == [corpus.ids[j] for j in want], f"query {i}"
        np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="search mode 'dense' needs dense"):
        index.search(corpus.queries, mode="dense")


@pytest.mark.parametrize("mode", ["colbert", "all"])
def test_colbert_top_scores_colbert_for_the_best_candidates_only(filled: Index, corpus, exact, mode: str) -> None:
    results = filled.search(corpus.queries, k=8, mode=mode, candidates=20, colbert_top=12)
    for i, hits in enumerate(results):
        want, scores = exact.search(corpus.queries, i, mode, 8, 20, colbert_top=12)
        assert _ids(hits) == [corpus.ids[j] for j in want], f"query {i}"
        np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="colbert_top"):
        filled.search(corpus.queries, k=8, mode=mode, colbert_top=5)


def test_weights_change_the_hybrid_score(filled: Index, corpus, exact) -> None:
    w = (1.0, 0.3, 0.0)
    hits = filled.search(corpus.queries, k=5, mode="all", weights=w, candidates=20)[0]
    want, scores = exact.search(corpus.queries, 0, "all", 5, 20, weights=w)
    assert _ids(hits) == [corpus.ids[j] for j in want]
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-4, atol=1e-5)


def test_an_index_searches_with_its_own_default_weights(make_index, corpus, exact, tmp_path) -> None:
    """`search_weights` given at creation (a model's, or explicitly) are the default of every search, kept
    across reopening; an index without any (made before they existed) searches with BGE-M3's."""
    from m3embed.index.manifest import MANIFEST_NAME
    from m3embed.modes import SEARCH_WEIGHTS

    w = (1.0, 0.05, 0.3)
    index = make_index("edge", name="weighted", search_weights=w)
    index.add_outputs(corpus.ids, corpus.docs)
    assert index.manifest.search_weights == w and index.prepare(mode="all").weights == w
    want, scores = exact.search(corpus.queries, 0, "all", 5, 20, weights=w)
    default = index.search(corpus.queries, k=5, mode="all", candidates=20)[0]
    assert _ids(default) == [corpus.ids[j] for j in want]
    np.testing.assert_allclose([h.score for h in default], scores, rtol=1e-4, atol=1e-5)
    bge = index.search(corpus.queries, k=5, mode="all", candidates=20, weights=SEARCH_WEIGHTS)[0]
    assert [h.score for h in bge] != [h.score for h in default]
    index.close()
    with Index.open(tmp_path / "weighted") as again:
        assert again.prepare(mode="all").weights == w
    manifest = tmp_path / "weighted" / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    del data["search_weights"]
    manifest.write_text(json.dumps(data))
    with Index.open(tmp_path / "weighted") as old:
        assert old.prepare(mode="all").weights == SEARCH_WEIGHTS
    with pytest.raises(ValueError, match="search_weights must be >= 0"):
        make_index("edge", name="bad", search_weights=(1, -1, 1))


def test_explain_gives_each_mode_score(filled: Index, corpus, exact) -> None:
    hits = filled.search(corpus.queries, k=4, mode="all", candidates=20, explain=True)[2]
    per = exact.per_mode(corpus.queries, 2)
    for h in hits:
        j = corpus.ids.index(h.id)
        for mode in ("dense", "sparse", "colbert"):
            assert h.scores[mode] == pytest.approx(per[mode][j], rel=1e-4, abs=1e-5)
        assert h.score == pytest.approx(0.4 * h.scores["dense"] + 0.2 * h.scores["sparse"]
                                        + 0.4 * h.scores["colbert"], rel=1e-4)


def test_hits_carry_text_and_metadata(filled: Index, corpus) -> None:
    hit = filled.search(corpus.queries, k=1, mode="dense")[0][0]
    j = corpus.ids.index(hit.id)
    assert hit.text == corpus.texts[j] and hit.metadata == corpus.meta[j]
    assert hit.scores == {"dense": pytest.approx(hit.score)}
    assert filled.search(corpus.queries, k=1, mode="dense", with_text=False)[0][0].text is None


@pytest.mark.parametrize("flt", [{"lang": "de"}, {"lang": ["en", "fr"], "year": {"gte": 2005}},
                                 {"tags": "odd", "year": {"lt": 1995}}])
def test_filter_restricts_results_and_counts(filled: Index, corpus, exact, flt) -> None:
    def ok(m: dict) -> bool:
        for key, v in flt.items():
            value = m[key]
            values = value if isinstance(value, list) else [value]
            if isinstance(v, dict):
                if not all({"gte": value >= x, "lt": value < x}[op] for op, x in v.items()):
                    return False
            elif not any(x in (v if isinstance(v, list) else [v]) for x in values):
                return False
        return True

    allowed = np.array([ok(m) for m in corpus.meta])
    assert filled.count(flt) == allowed.sum() > 0
    for mode in ("sparse", "all"):
        hits = filled.search(corpus.queries, k=5, mode=mode, candidates=20, filter=flt)[1]
        want, _ = exact.search(corpus.queries, 1, mode, 5, 20, allowed=allowed)
        assert _ids(hits) == [corpus.ids[j] for j in want]


def test_upsert_by_id_replaces_and_delete_removes(filled: Index, corpus) -> None:
    n = len(corpus.ids)
    assert filled.count() == n
    filled.add_outputs(corpus.ids[:50], corpus.docs.select(range(50)), metadata=[{"v": 2}] * 50)
    assert filled.count() == n  # same ids: replaced, not added
    assert filled.count({"v": 2}) == 50
    filled.delete(corpus.ids[:10] + ["never-added"])
    assert filled.count() == n - 10
    assert filled.missing(corpus.ids[:12]) == corpus.ids[:10]
    assert corpus.ids[10] in filled and corpus.ids[0] not in filled
    assert corpus.ids[0] not in _ids(filled.search(corpus.queries, k=n, mode="dense")[0])


def test_int_ids_are_stored_as_strings(make_index, corpus, engine) -> None:
    index = make_index(engine)
    index.add_outputs(list(range(5)), corpus.docs.select(range(5)))
    assert index.missing([0, "1", 7]) == ["7"]
    assert index.search(corpus.docs.select([3]), k=1, mode="dense")[0][0].id == "3"


def test_reopen_keeps_documents(make_index, corpus, tmp_path) -> None:
    for engine in ("edge", "qdrant"):
        index = make_index(engine, name=engine, store_text=False)
        index.add_outputs(corpus.ids, corpus.docs, texts=corpus.texts)
        before = index.search(corpus.queries, k=5, mode="all")
        index.close()
        with Index.open(tmp_path / engine) as again:
            assert again.count() == len(corpus.ids)
            after = again.search(corpus.queries, k=5, mode="all")
            assert [_ids(h) for h in after] == [_ids(h) for h in before]
            assert after[0][0].text is None  # store_text=False kept no text


def test_modes_subset_and_mode_errors(make_index, corpus, engine) -> None:
    index = make_index(engine, modes=("dense", "sparse"))
    index.add_outputs(corpus.ids, M3Output(dense=corpus.docs.dense, sparse=corpus.docs.sparse))
    default = index.search(corpus.queries, k=3)  # the fullest mode the index allows: dense+sparse
    assert [h.id for h in default[0]] == [h.id for h in index.search(corpus.queries, k=3, mode="dense+sparse")[0]]
    with pytest.raises(ValueError, match="needs colbert"):
        index.search(corpus.queries, mode="all")
    with pytest.raises(ValueError, match="unknown search mode"):
        index.search(corpus.queries, mode="hybrid")


def test_bad_inputs_are_named(make_index, corpus) -> None:
    index = make_index("edge")
    with pytest.raises(ValueError, match="outputs lack 'colbert'"):
        index.add_outputs(corpus.ids[:2], M3Output(dense=corpus.docs.dense[:2], sparse=corpus.docs.sparse[:2]))
    with pytest.raises(ValueError, match="3 ids, 2 outputs"):
        index.add_outputs(corpus.ids[:3], corpus.docs.select([0, 1]))
    with pytest.raises(ValueError, match="size 16"):
        small = corpus.docs.select([0])
        index.add_outputs(["x"], M3Output(dense=small.dense[:, :16], sparse=small.sparse, colbert=small.colbert))
    with pytest.raises(ValueError, match="open the index with its model"):
        index.search("a text query")
    with pytest.raises(ValueError, match="range keys"):
        index.search(corpus.queries, filter={"year": {"between": 3}})
    with pytest.raises(ValueError, match="weights must be"):
        index.search(corpus.queries, weights=(1.0, 2.0))
