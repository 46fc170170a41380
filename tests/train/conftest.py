"""Fixtures for the training tests: a dropout-free tiny checkpoint and small generated jsonl files."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from m3testkit.checkpoints import sample_texts

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def write_train_file(path: Path, n: int = 12, n_neg: int = 3, scores: bool = False, seed: int = 0) -> Path:
    """n lines {query, pos, neg[, pos_scores, neg_scores]} built from the multilingual sample sentences.

    Texts have different lengths (4 to 40 words) so that length grouping and padding matter.
    """
    rng = random.Random(seed)
    words = [t.split() for t in sample_texts(4 * n, seed=seed)]
    lines = []
    for i in range(n):
        passage = " ".join(words[i][: rng.randint(6, 40)])
        row = {
            "query": " ".join(words[i][:4]),
            "pos": [passage],
            "neg": [" ".join(words[(i + k + 1) % len(words)][: rng.randint(4, 40)]) for k in range(n_neg)],
        }
        if scores:
            row["pos_scores"] = [round(rng.uniform(0.6, 1.0), 3)]
            row["neg_scores"] = [round(rng.uniform(0.0, 0.6), 3) for _ in range(n_neg)]
        lines.append(json.dumps(row, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def nodrop_ckpt(xlmr_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`xlmr_ckpt` with dropout off, so that a forward pass is deterministic in train mode."""
    out = Path(shutil.copytree(xlmr_ckpt, tmp_path_factory.mktemp("nodrop") / "ckpt"))
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="session")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_train_file(tmp_path_factory.mktemp("data") / "train.jsonl")


@pytest.fixture(scope="session")
def scored_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_train_file(tmp_path_factory.mktemp("scored") / "train.jsonl", scores=True, seed=1)
