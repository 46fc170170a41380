"""Session-wide offline fixtures: tiny seeded BGE-M3 checkpoints built once per test session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the hub is unreachable here; fail fast instead of retrying
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from m3testkit.checkpoints import TINY_XLMR_SHAPE, write_random_checkpoint, write_random_reranker


@pytest.fixture(scope="session")
def xlmr_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2-layer, 64-d random XLM-R (130 positions = 128 usable tokens), trained tokenizer, both heads."""
    return write_random_checkpoint(tmp_path_factory.mktemp("xlmr"), arch="xlmr", seed=0, **TINY_XLMR_SHAPE)


@pytest.fixture(scope="session")
def xlmr_ckpt_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint as `xlmr_ckpt` (same seed), with weights in `pytorch_model.bin`."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("xlmr_bin"), arch="xlmr", seed=0, weights_format="bin", **TINY_XLMR_SHAPE
    )


@pytest.fixture(scope="session")
def bert_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 (trained, 384-d, mean pooling) with random colbert/sparse heads."""
    return write_random_checkpoint(tmp_path_factory.mktemp("bert"), arch="bert", seed=0)


@pytest.fixture(scope="session")
def xlmr_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2-layer, 64-d random XLMRobertaForSequenceClassification (one label), trained tokenizer."""
    return write_random_reranker(tmp_path_factory.mktemp("xlmr_rr"), arch="xlmr", seed=0)


@pytest.fixture(scope="session")
def bert_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random 2-layer, 64-d BertForSequenceClassification (130 positions) with MiniLM's WordPiece tokenizer."""
    return write_random_reranker(tmp_path_factory.mktemp("bert_rr"), arch="bert", seed=0, **TINY_XLMR_SHAPE)


@pytest.fixture
def copy_ckpt(tmp_path: Path) -> Callable[[Path], Path]:
    """Copy a session checkpoint for a test that changes files: `copy_ckpt(xlmr_ckpt) -> Path`."""

    def _copy(src: Path) -> Path:
        return Path(shutil.copytree(src, tmp_path / src.name))

    return _copy
