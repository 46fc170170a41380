"""Fixtures for the evaluation tests: the shared BEIR-layout data and small datasets written on the fly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from m3embed.evaluate import Dataset, load_dataset

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared datasets (`classic/adi`, `xquad/en`...); tests that need them skip where they are absent."""
    if not (DATA / "classic/adi").is_dir():
        pytest.skip("shared data not present")
    return DATA


def _write_dataset(root: Path, corpus: list[dict], queries: list[dict], qrels: str, name: str = "qrels.tsv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / name).write_text(qrels, encoding="utf-8")
    return root


@pytest.fixture
def write_dataset() -> Callable[..., Path]:
    """`write_dataset(root, corpus, queries, qrels_text, name="qrels.tsv")`: a BEIR-layout directory."""
    return _write_dataset


@pytest.fixture
def tiny_set(tmp_path: Path) -> Dataset:
    """12 documents, 4 queries (query i is about document i), written to `tmp_path/set` and loaded."""
    corpus = [{"id": f"d{i}", "title": f"topic {i}", "text": f"the river {i} runs past house number {i}"}
              for i in range(12)]
    queries = [{"id": f"q{i}", "text": f"which river is number {i}?"} for i in range(4)]
    _write_dataset(tmp_path / "set", corpus, queries, "".join(f"q{i}\td{i}\t1\n" for i in range(4)))
    return load_dataset(tmp_path / "set")
