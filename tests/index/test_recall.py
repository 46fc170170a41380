"""Hybrid top-10 against exhaustive exact M3 on the shared data sets, at the default candidate k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m3embed import scoring
from m3embed.corpus import read_records
from m3embed.index import ColbertStorage, Index
from m3embed.model import M3Model
from m3embed.modes import SEARCH_WEIGHTS

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not present at {DATA}")
MODES = ("dense", "sparse", "colbert")


def recall_at_10(tmp_path: Path, model: M3Model, dataset: str, n_queries: int, n_docs: int | None = None) -> float:
    records = list(read_records(DATA / dataset / "corpus.jsonl"))[:n_docs]
    with (DATA / dataset / "queries.jsonl").open(encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in f][:n_queries]
    docs = model.encode_corpus([r.text for r in records], modes=MODES)
    q = model.encode_queries(queries, modes=MODES)
    with Index.create(tmp_path / "idx", model, colbert_storage=ColbertStorage(dtype="float32")) as index:
        index.add_outputs([r.id for r in records], docs)
        hits = index.search(q, k=10, mode="all")  # default weights and candidate k
    position = {r.id: j for j, r in enumerate(records)}
    dense, lexical = scoring.dense_scores(q.dense, docs.dense), scoring.lexical_scores(q.sparse, docs.sparse)
    found = 0
    for i, got in enumerate(hits):
        exact = scoring.hybrid({"dense": dense[i], "sparse": lexical[i],
                                "colbert": scoring.colbert_scores(q.colbert[i], docs.colbert)}, SEARCH_WEIGHTS)
        found += len(set(np.argsort(-exact)[:10]) & {position[h.id] for h in got})
    return found / (10 * len(hits))


@pytest.fixture(scope="module")
def model(xlmr_ckpt: Path) -> M3Model:
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu")


def test_recall_small_sample(tmp_path: Path, model: M3Model) -> None:
    assert recall_at_10(tmp_path, model, "xquad_r/en", n_queries=40, n_docs=400) >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["xquad_r/en", "classic/cranfield", "classic/lisa", "xquad_r_pool6"])
def test_recall_shared_datasets(tmp_path: Path, model: M3Model, dataset: str) -> None:
    assert recall_at_10(tmp_path, model, dataset, n_queries=60) >= 0.99
