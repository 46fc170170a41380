"""Adding texts through the model: streaming ingestion, resume without re-encoding, model identity checks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from m3embed.corpus import count_records, read_records
from m3embed.index import ColbertStorage, Index, open_index
from m3embed.index.ingest import ingest
from m3embed.model import M3Model
from m3testkit.checkpoints import sample_texts


@pytest.fixture(scope="module")
def model(xlmr_ckpt: Path) -> M3Model:
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu")


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(sample_texts(90, seed=3)):
            f.write(json.dumps({"id": f"t{i}", "text": text, "part": i % 2}, ensure_ascii=False) + "\n")
    return path


class CountingModel:
    """The real model, counting the texts it is asked to encode for the corpus."""

    def __init__(self, model: M3Model) -> None:
        self.model, self.encoded = model, 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def encode_corpus(self, texts, **kwargs):
        self.encoded += len(texts)
        return self.model.encode_corpus(texts, **kwargs)


def test_ingest_resumes_without_reencoding(tmp_path: Path, model: M3Model, docs_file: Path) -> None:
    counting = CountingModel(model)
    committed = []
    with open_index(tmp_path / "idx", counting, create=True) as index:
        first = ingest(index, itertools.islice(read_records(docs_file), 40), batch_size=16,
                       on_commit=lambda s: committed.append(s.seen))
        assert (first.added, first.skipped, committed) == (40, 0, [16, 32, 40])
    # a new process would reopen the directory the same way; the first 40 are skipped, not encoded
    with open_index(tmp_path / "idx", counting) as index:
        second = ingest(index, read_records(docs_file), batch_size=16)
        assert (second.seen, second.added, second.skipped) == (90, 50, 40)
        assert counting.encoded == 90
        assert index.count() == 90 == count_records(docs_file)
        again = ingest(index, read_records(docs_file), batch_size=32)  # re-running adds nothing twice
        assert (again.added, again.skipped, index.count(), counting.encoded) == (0, 90, 90, 90)
        assert index.count({"part": 1}) == 45


def test_ingest_parquet_and_repeated_ids(tmp_path: Path, model: M3Model) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = sample_texts(30, seed=5)
    ids = [f"p{i % 25}" for i in range(30)]  # the last 5 rows repeat ids p0..p4
    pq.write_table(pa.table({"id": ids, "text": texts}), tmp_path / "docs.parquet")
    with open_index(tmp_path / "idx", model, create=True) as index:
        stats = ingest(index, read_records(tmp_path / "docs.parquet"), batch_size=64)
        assert (stats.added, index.count()) == (25, 25)
        hit = index.search(texts[27], k=1, mode="dense")[0]  # row 27 replaced row 2 (id p2)
        assert hit.id == "p2" and hit.text == texts[27]


def test_text_search_scores_match_the_model(tmp_path: Path, model: M3Model) -> None:
    texts = sample_texts(40, seed=7)
    queries = ["The cat reads a book", texts[5][:20]]
    with Index.create(tmp_path / "idx", model, colbert_storage=ColbertStorage(dtype="float32")) as index:
        index.add([f"d{i}" for i in range(40)], texts, metadata=[{"n": i} for i in range(40)])
        hits = index.search(queries, k=40, mode="all", candidates=40)
    d = model.encode_corpus(texts, modes=("dense", "sparse", "colbert"))
    q = model.encode_queries(queries, modes=("dense", "sparse", "colbert"))
    for i, found in enumerate(hits):
        dense = d.dense @ q.dense[i]
        lexical = (d.sparse @ q.sparse[[i]].T).toarray().ravel()
        colbert = np.array([(q.colbert[i] @ c.T).max(axis=1).mean() for c in d.colbert])
        exact = 0.4 * dense + 0.2 * lexical + 0.4 * colbert
        order = np.argsort(-exact)
        assert [h.id for h in found] == [f"d{j}" for j in order]
        np.testing.assert_allclose([h.score for h in found], exact[order], rtol=1e-4, atol=1e-5)


def test_other_model_is_refused(tmp_path: Path, model: M3Model, bert_ckpt: Path) -> None:
    with Index.create(tmp_path / "idx", model) as index:
        index.add(["a"], ["some text"])
    other = M3Model.from_pretrained(bert_ckpt, device="cpu")
    with pytest.raises(ValueError, match=f"fingerprint {model.fingerprint}.*fingerprint {other.fingerprint}"):
        Index.open(tmp_path / "idx", other)
    with Index.open(tmp_path / "idx") as index:  # the failed open released the directory
        with pytest.raises(ValueError, match="built with model"):
            index.attach(other)
        index.attach(model)
        assert index.search("some text", k=1)[0].id == "a"


def test_a_build_gives_one_truncation_warning_for_all_its_batches(tmp_path, xlmr_ckpt) -> None:
    import warnings

    from m3embed.corpus import Record
    from m3embed.tokenize import TruncationWarning

    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    records = [Record(f"d{i}", ("long text " * 200) if i % 2 else "short", {}) for i in range(10)]
    with open_index(tmp_path / "idx", model, create=True) as index, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ingest(index, records, batch_size=3)  # 4 batches, each with cut texts
    cut = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(cut) == 1 and str(cut[0].message).startswith("5 of 10 texts were longer than max_length="), cut
