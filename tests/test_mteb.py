"""`M3Encoder` and `M3Search` under `mteb.evaluate` on mteb's own offline mock retrieval task: prompts follow the
prompt type; every M3 mode scores the hits `Index.search` gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m3embed.model import M3Model

mteb = pytest.importorskip("mteb")

from mteb.mocks.mock_tasks import MockRetrievalTask  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from m3embed.index import open_index  # noqa: E402
from m3embed.integrations.mteb import M3Encoder, M3Search  # noqa: E402


@pytest.fixture(scope="module")
def encoder(xlmr_ckpt: Path) -> M3Encoder:
    return M3Encoder(M3Model.from_pretrained(xlmr_ckpt, device="cpu", query_prefix="query: ",
                                             passage_prefix="passage: "))


def test_evaluate_runs_a_retrieval_task(encoder: M3Encoder) -> None:
    result = mteb.evaluate(encoder, [MockRetrievalTask()], cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores
    assert set(scores) == {"val", "test"}
    assert 0 < scores["test"][0]["main_score"] <= 1
    assert encoder.mteb_model_meta.name.startswith("m3embed/")


def test_prompt_type_picks_the_prompt(encoder: M3Encoder) -> None:
    texts = ["a small test", "another text"]
    batches = [{"text": texts[:1]}, {"text": texts[1:]}]  # what a DataLoader of BatchedInput yields
    model = encoder.model
    np.testing.assert_allclose(encoder.encode(batches, prompt_type=PromptType.query),
                               model.encode_queries(texts).dense, atol=1e-6)
    np.testing.assert_allclose(encoder.encode(batches, prompt_type=PromptType.document),
                               model.encode_corpus(texts).dense, atol=1e-6)
    q = encoder.encode(batches, prompt_type=PromptType.query)
    np.testing.assert_allclose(encoder.similarity(q, q), q @ q.T, atol=1e-6)
    np.testing.assert_allclose(encoder.similarity_pairwise(q, q), [1.0, 1.0], atol=1e-5)


@pytest.mark.parametrize("mode", ["sparse", "colbert", "dense+sparse", "all"])
def test_search_protocol_scores_are_index_search(encoder: M3Encoder, mode: str, tmp_path: Path) -> None:
    searcher = M3Search(encoder.model, mode=mode)
    result = mteb.evaluate(searcher, [MockRetrievalTask()], cache=None, show_progress_bar=False,
                           prediction_folder=tmp_path)
    searcher.close()
    assert searcher.mteb_model_meta.name.endswith(f"-{mode}")
    assert 0 <= result.task_results[0].scores["test"][0]["main_score"] <= 1
    predicted = json.loads(next(tmp_path.glob("*.json")).read_text())["default"]["test"]
    task = MockRetrievalTask()
    task.load_data()  # mteb.evaluate unloads its copy
    data = task.dataset["default"]["test"]
    docs = {d["id"]: f"{d['title']} {d['text']}" for d in data["corpus"]}
    with open_index(tmp_path / "index", encoder.model, create=True) as index:
        index.add(list(docs), list(docs.values()))
        queries = {q["id"]: q["text"] for q in data["queries"]}
        hits = index.search(list(queries.values()), k=10, mode=mode)
    expected = {q: {h.id: h.score for h in found} for q, found in zip(queries, hits)}
    assert predicted.keys() == expected.keys()
    for q in expected:
        assert predicted[q].keys() == expected[q].keys()
        np.testing.assert_allclose([predicted[q][d] for d in expected[q]], list(expected[q].values()), rtol=1e-5)


def test_search_refuses_what_it_cannot_run(encoder: M3Encoder) -> None:
    with pytest.raises(ValueError, match="unknown search mode"):
        M3Search(encoder.model, mode="bm25")
    searcher = M3Search(encoder.model, mode="sparse")
    with pytest.raises(RuntimeError, match="index the task's corpus first"):
        searcher.search({"id": ["q"], "text": ["a query"]}, top_k=1)
