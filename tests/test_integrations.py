"""LangChain, LlamaIndex and Haystack adapters against the real packages: each retriever returns `Index.search`'s
ids and scores for every mode, filter and rerank; the embedders put the query / passage prompts on the right
side; the examples in examples/ run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m3embed.index import open_index
from m3embed.model import M3Model
from m3embed.modes import SEARCH_MODES
from m3embed.rerank import Reranker
from m3testkit.checkpoints import sample_texts

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")
pytest.importorskip("haystack")

from m3embed.integrations import haystack as hs  # noqa: E402
from m3embed.integrations import langchain as lc  # noqa: E402
from m3embed.integrations import llama_index as li  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = sample_texts(40)
QUERY = TEXTS[3][:40]


@pytest.fixture(scope="module")
def model(xlmr_ckpt: Path) -> M3Model:
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu", query_prefix="query: ", passage_prefix="passage: ")


@pytest.fixture(scope="module")
def index(model: M3Model, tmp_path_factory: pytest.TempPathFactory):
    idx = open_index(tmp_path_factory.mktemp("idx") / "i", model, create=True)
    idx.add([f"d{i}" for i in range(len(TEXTS))], TEXTS, [{"lang": ("en", "de")[i % 2], "n": i} for i in
                                                          range(len(TEXTS))])
    yield idx
    idx.close()


def _langchain(index, query: str, **options) -> list[tuple[str, float, str | None]]:
    filter = options.pop("filter", None)
    retriever = lc.M3Retriever(index=index, **options)
    docs = retriever.invoke(query, filter=filter) if filter else retriever.invoke(query)
    assert all(d.metadata["score"] is not None for d in docs)
    return [(d.id, d.metadata["score"], d.page_content) for d in docs]


def _llama_index(index, query: str, **options) -> list[tuple[str, float, str | None]]:
    return [(n.node.id_, n.score, n.node.get_content()) for n in li.M3Retriever(index, **options).retrieve(query)]


def _haystack(index, query: str, **options) -> list[tuple[str, float, str | None]]:
    options["top_k"] = options.pop("k")
    filters = options.pop("filter", None)
    docs = hs.M3Retriever(index, **options).run(query=query, filters=filters)["documents"]
    return [(d.id, d.score, d.content) for d in docs]


FRAMEWORKS = {"langchain": _langchain, "llama_index": _llama_index, "haystack": _haystack}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("mode", [None, *SEARCH_MODES])
def test_retriever_is_index_search(index, framework: str, mode: str | None) -> None:
    expected = [(h.id, h.score, h.text) for h in index.search(QUERY, k=5, mode=mode)]
    assert len(expected) == 5
    assert FRAMEWORKS[framework](index, QUERY, k=5, mode=mode) == expected
    if mode is None:  # the default is the fullest mode the index stores: all
        assert expected == [(h.id, h.score, h.text) for h in index.search(QUERY, k=5, mode="all")]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_retriever_filter_weights_and_rerank(index, framework: str, xlmr_reranker: Path) -> None:
    reranker = Reranker.from_pretrained(xlmr_reranker, device="cpu")
    for options in ({"filter": {"lang": "de"}}, {"weights": (1.0, 0.0, 0.5), "mode": "all"},
                    {"reranker": reranker, "rerank_top": 12, "mode": "dense+sparse"}):
        expected = [(h.id, h.score, h.text) for h in index.search(QUERY, k=4, **options)]
        got = FRAMEWORKS[framework](index, QUERY, k=4, **dict(options))
        assert got == expected, options
        if "filter" in options:
            assert all(int(i[1:]) % 2 == 1 for i, _, _ in got)


def test_langchain_invoke_overrides_k(index) -> None:
    docs = lc.M3Retriever(index=index, k=5).invoke(QUERY, k=2)
    assert [d.id for d in docs] == [h.id for h in index.search(QUERY, k=2)]


def test_embedders_put_prompts_on_the_right_side(model: M3Model) -> None:
    docs, query = TEXTS[:5], TEXTS[7]
    passage_vecs = model.encode_corpus(docs).dense  # "passage: " + text
    query_vec = model.encode_queries([query]).dense[0]  # "query: " + text
    assert not np.allclose(query_vec, model.encode_corpus([query]).dense[0])  # the prompts matter here

    np.testing.assert_allclose(lc.M3Embeddings(model).embed_documents(docs), passage_vecs, atol=1e-6)
    np.testing.assert_allclose(lc.M3Embeddings(model).embed_query(query), query_vec, atol=1e-6)

    embed = li.M3Embedding(model)
    np.testing.assert_allclose(embed.get_text_embedding_batch(docs), passage_vecs, atol=1e-6)
    np.testing.assert_allclose(embed.get_text_embedding(docs[0]), passage_vecs[0], atol=1e-6)
    np.testing.assert_allclose(embed.get_query_embedding(query), query_vec, atol=1e-6)

    from haystack import Document

    out = hs.M3DocumentEmbedder(model).run(documents=[Document(content=t, id=str(i)) for i, t in enumerate(docs)])
    np.testing.assert_allclose([d.embedding for d in out["documents"]], passage_vecs, atol=1e-6)
    assert [d.id for d in out["documents"]] == [str(i) for i in range(len(docs))]
    np.testing.assert_allclose(hs.M3TextEmbedder(model).run(text=query)["embedding"], query_vec, atol=1e-6)
    with pytest.raises(TypeError, match="M3DocumentEmbedder"):
        hs.M3TextEmbedder(model).run(text=[query])


@pytest.mark.parametrize("example", ["langchain_retriever", "llama_index_retriever", "haystack_pipeline"])
def test_example_runs(example: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / f"{example}.py"), str(tmp_path / "index")],
                         cwd=ROOT / "examples", env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].split()[1] == "bge-m3:", run.stdout  # the best hit for "which model gives sparse and dense"
    assert "filtered: ['panda']" in lines


HAYSTACK_FILTERS = [
    ({"field": "meta.lang", "operator": "==", "value": "de"}, {"lang": "de"}),
    ({"field": "meta.n", "operator": "in", "value": [1, 4, 9, 16]}, {"n": [1, 4, 9, 16]}),
    ({"operator": "AND", "conditions": [
        {"field": "meta.lang", "operator": "==", "value": "en"},
        {"field": "meta.n", "operator": ">", "value": 5},
        {"operator": "AND", "conditions": [{"field": "meta.n", "operator": "<=", "value": 30}]}]},
     {"lang": "en", "n": {"gt": 5, "lte": 30}}),
    ({"operator": "AND", "conditions": [{"field": "meta.n", "operator": ">=", "value": 10},
                                        {"field": "meta.n", "operator": "<", "value": 12.5}]},
     {"n": {"gte": 10, "lt": 12.5}}),
]


@pytest.mark.parametrize(("filters", "m3embed_filter"), HAYSTACK_FILTERS)
def test_haystack_filters_select_what_haystack_selects(index, filters, m3embed_filter) -> None:
    from haystack import Document
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    assert hs.haystack_filter(filters) == m3embed_filter
    store = InMemoryDocumentStore()  # Haystack's own reading of the filter, over the same metadata
    store.write_documents([Document(id=f"d{i}", content=t, meta={"lang": ("en", "de")[i % 2], "n": i})
                           for i, t in enumerate(TEXTS)])
    selected = {d.id for d in store.filter_documents(filters)}
    assert selected and index.count(m3embed_filter) == len(selected)
    expected = [(h.id, h.score, h.text) for h in index.search(QUERY, k=len(TEXTS), mode="dense",
                                                              filter=m3embed_filter)]
    assert {i for i, _, _ in expected} == selected
    retriever = hs.M3Retriever(index, top_k=len(TEXTS), mode="dense")
    got = retriever.run(query=QUERY, filters=filters)["documents"]
    assert [(d.id, d.score, d.content) for d in got] == expected
    init = hs.M3Retriever(index, top_k=len(TEXTS), mode="dense", filters=filters).run(query=QUERY)["documents"]
    assert [(d.id, d.score) for d in init] == [(i, s) for i, s, _ in expected]


@pytest.mark.parametrize(("filters", "message"), [
    ({"operator": "OR", "conditions": [{"field": "meta.n", "operator": "==", "value": 1}]}, "'OR'"),
    ({"operator": "NOT", "conditions": [{"field": "meta.n", "operator": "==", "value": 1}]}, "'NOT'"),
    ({"field": "meta.lang", "operator": "!=", "value": "en"}, "'!='"),
    ({"field": "meta.lang", "operator": "not in", "value": ["en"]}, "'not in'"),
    ({"field": "content", "operator": "==", "value": "x"}, "field 'content'"),
    ({"field": "meta.date", "operator": ">", "value": "2024-01-01"}, "needs a number"),
    ({"field": "meta.lang", "operator": "in", "value": "en"}, "needs a list"),
    ({"operator": "AND", "conditions": [{"field": "meta.n", "operator": "==", "value": 1},
                                        {"field": "meta.n", "operator": "in", "value": [2]}]}, "second condition"),
])
def test_haystack_filters_refuse_what_m3embed_cannot_express(index, filters, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hs.M3Retriever(index).run(query=QUERY, filters=filters)


def test_haystack_pipeline_serialises(xlmr_ckpt: Path, xlmr_reranker: Path, tmp_path: Path) -> None:
    from haystack import Pipeline

    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    filters = {"field": "meta.lang", "operator": "==", "value": "en"}
    with open_index(tmp_path / "idx", model, create=True) as idx:
        idx.add([f"d{i}" for i in range(12)], TEXTS[:12], [{"lang": ("en", "de")[i % 2]} for i in range(12)])
        pipeline = Pipeline()
        pipeline.add_component("retriever", hs.M3Retriever(idx, top_k=3, mode="dense+sparse", weights=(1, 0.5, 0),
                                                           filters=filters, reranker=str(xlmr_reranker),
                                                           rerank_top=5, search_options={"candidates": 20}))
        pipeline.add_component("embedder", hs.M3TextEmbedder(model, max_length=64))
        before = pipeline.run({"retriever": {"query": QUERY}, "embedder": {"text": QUERY}})
        saved = pipeline.dumps()
    params = pipeline.to_dict()["components"]["retriever"]["init_parameters"]
    assert params["index"] == str(tmp_path / "idx") and params["model"] == str(xlmr_ckpt)
    assert params["reranker"] == str(xlmr_reranker) and params["filters"] == filters
    loaded = Pipeline.loads(saved, allowed_modules=["m3embed.integrations.haystack"])  # Haystack's opt-in
    after = loaded.run({"retriever": {"query": QUERY}, "embedder": {"text": QUERY}})
    loaded.get_component("retriever").index.close()
    assert [(d.id, d.score) for d in after["retriever"]["documents"]] == \
        [(d.id, d.score) for d in before["retriever"]["documents"]]
    np.testing.assert_allclose(after["embedder"]["embedding"], before["embedder"]["embedding"], atol=1e-6)
    assert hs.M3DocumentEmbedder.from_dict(hs.M3DocumentEmbedder(model).to_dict()).model.name == str(xlmr_ckpt)


def test_haystack_refuses_to_serialise_an_in_memory_index(model: M3Model) -> None:
    with open_index(":memory:", model, create=True) as idx:
        with pytest.raises(ValueError, match="index cannot be serialised"):
            hs.M3Retriever(idx).to_dict()


def _llama_filters():
    from llama_index.core.vector_stores.types import FilterCondition, MetadataFilter, MetadataFilters

    def f(key, value, op="=="):
        return MetadataFilter(key=key, value=value, operator=op)

    flat = MetadataFilters(filters=[f("lang", "en"), f("n", 5, ">"), f("n", 30, "<=")])
    nested = MetadataFilters(filters=[f("lang", "en"), f("n", 5, ">"),
                                      MetadataFilters(filters=[f("n", 30, "<=")], condition=FilterCondition.AND)])
    return [  # (filters, the same without nesting, which LlamaIndex's own filter function refuses; m3embed's)
        (MetadataFilters(filters=[f("lang", "de")]), None, {"lang": "de"}),
        (MetadataFilters(filters=[f("n", [1, 4, 9, 16], "in")]), None, {"n": [1, 4, 9, 16]}),
        (flat, None, {"lang": "en", "n": {"gt": 5, "lte": 30}}),
        (nested, flat, {"lang": "en", "n": {"gt": 5, "lte": 30}}),
        (MetadataFilters(filters=[f("n", 10, ">="), f("n", 12.5, "<")]), None, {"n": {"gte": 10, "lt": 12.5}}),
    ]


def test_llama_index_metadata_filters_select_what_llama_index_selects(index) -> None:
    from llama_index.core.vector_stores.utils import build_metadata_filter_fn

    metas = {f"d{i}": {"lang": ("en", "de")[i % 2], "n": i} for i in range(len(TEXTS))}
    for filters, flat, m3embed_filter in _llama_filters():
        assert li.llama_index_filter(filters) == m3embed_filter
        keep = build_metadata_filter_fn(metas.__getitem__, flat or filters)  # LlamaIndex's own reading of the filter
        selected = {i for i in metas if keep(i)}
        expected = [(h.id, h.score, h.text) for h in index.search(QUERY, k=len(TEXTS), mode="dense",
                                                                  filter=m3embed_filter)]
        assert selected and {i for i, _, _ in expected} == selected
        got = li.M3Retriever(index, k=len(TEXTS), mode="dense", filter=filters).retrieve(QUERY)
        assert [(n.node.id_, n.score, n.node.get_content()) for n in got] == expected


def test_llama_index_filters_refuse_what_m3embed_cannot_express(index) -> None:
    from llama_index.core.vector_stores.types import FilterCondition, MetadataFilter, MetadataFilters

    one = MetadataFilter(key="n", value=1)
    for filters, message in [
        (MetadataFilters(filters=[one, one], condition=FilterCondition.OR), "'or'"),
        (MetadataFilters(filters=[one], condition=FilterCondition.NOT), "'not'"),
        (MetadataFilters(filters=[MetadataFilter(key="lang", value="en", operator="!=")]), "'!='"),
        (MetadataFilters(filters=[MetadataFilter(key="lang", value=["en"], operator="nin")]), "'nin'"),
        (MetadataFilters(filters=[MetadataFilter(key="lang", value="e", operator="text_match")]), "'text_match'"),
    ]:
        with pytest.raises(ValueError, match=message):
            li.M3Retriever(index, filter=filters)
