"""`M3Encoder` under `mteb.evaluate` on mteb's own offline mock retrieval task; prompts follow the prompt type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3embed.model import M3Model

mteb = pytest.importorskip("mteb")

from mteb.mocks.mock_tasks import MockRetrievalTask  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from m3embed.integrations.mteb import M3Encoder  # noqa: E402


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
