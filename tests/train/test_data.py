"""Training data: validation errors name file:line and field; groups, length grouping, rank slices."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from m3embed.train.data import (
    GroupedBatches,
    TrainExample,
    epoch_batches,
    load_examples,
    read_jsonl,
    resolve_teacher_use,
    sample_group,
)
from tests.train.conftest import SHARED_DATA

GOOD = {"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["q", "p"]', "expected a JSON object, got list"),
        ('{"pos": ["p"]}', "missing field(s) ['query']"),
        ('{"query": "", "pos": ["p"]}', "'query' must be a non-empty string"),
        ('{"query": "q", "pos": "p"}', "'pos' must be a list of strings, got str"),
        ('{"query": "q", "pos": []}', "'pos' must hold at least one text"),
        ('{"query": "q", "pos": ["p"], "neg": ["n", 3]}', "'neg'[1] must be a non-empty string, got int"),
        ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0]}', "'pos_scores' is given without"),
        (
            '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1], "neg_scores": [1, 2]}',
            "'neg_scores' must be a list of 1 numbers",
        ),
        (
            '{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1], "neg_scores": ["x"]}',
            "'neg_scores'[0] must be a finite number",
        ),
        ('{"query": "q", "pos": ["p"], "type": 3}', "'type' must be a string"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")
    with pytest.raises(ValueError) as err:
        read_jsonl(path)
    assert str(err.value).startswith(f"{path}:3: ") and message in str(err.value)


def test_load_examples_reads_directories_and_keeps_fields(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(dict(GOOD, prompt="Q: ", type="x")) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(dict(GOOD, pos_scores=[1], neg_scores=[0.5, 0.1])) + "\n")
    a, b = load_examples(tmp_path)
    assert (a.prompt, a.type, a.has_scores) == ("Q: ", "x", False)
    assert b.has_scores and b.neg_scores == (0.5, 0.1) and b.source == f"{tmp_path / 'b.jsonl'}:1"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")


@pytest.mark.skipif(
    not (SHARED_DATA / "flagembedding_toy").is_dir(), reason="shared data not on this machine"
)
def test_flagembedding_example_files_load():
    for path in sorted((SHARED_DATA / "flagembedding_toy").glob("*.jsonl")):
        examples = read_jsonl(path)
        assert len(examples) == 10
        if "example_data" in path.name:
            assert all(ex.has_scores for ex in examples)


def test_sample_group_positive_first_scores_aligned_and_tiling():
    ex = TrainExample("q", ("p0", "p1"), ("n0", "n1"), (0.9, 0.8), (0.2, 0.1), prompt="Q: ", source="f:1")
    score_of = {"p0": 0.9, "p1": 0.8, "n0": 0.2, "n1": 0.1}
    for seed in range(20):
        query, texts, scores = sample_group(ex, 6, random.Random(seed))  # 5 negatives from 2: tiled
        assert query == "Q: q" and texts[0] in ex.pos and len(texts) == 6
        assert all(t in ex.neg for t in texts[1:]) and set(texts[1:]) == {"n0", "n1"}
        assert scores == [score_of[t] for t in texts]


def test_epoch_batches_deterministic_disjoint_and_length_grouped():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=103)
    a = epoch_batches(lengths, 8, seed=1, epoch=0)
    assert [b.tolist() for b in a] == [b.tolist() for b in epoch_batches(lengths, 8, seed=1, epoch=0)]
    assert [b.tolist() for b in a] != [b.tolist() for b in epoch_batches(lengths, 8, seed=1, epoch=1)]
    flat = np.concatenate(a)
    assert len(a) == 103 // 8 and len(set(flat.tolist())) == len(flat)  # tail dropped, no repeats
    spread = np.mean([np.ptp(lengths[b]) for b in a])
    plain = epoch_batches(lengths, 8, seed=1, epoch=0, group_by_length=False)
    assert spread < 0.25 * np.mean([np.ptp(lengths[b]) for b in plain])


def test_grouped_batches_rank_slices_cover_the_global_batch(train_file):
    examples = read_jsonl(train_file)
    one = GroupedBatches(examples, 3, per_device_batch_size=4, world_size=1, seed=7)
    two = [GroupedBatches(examples, 3, per_device_batch_size=2, world_size=2, rank=r, seed=7) for r in (0, 1)]
    assert len(one) == len(two[0]) == 3
    for index in range(3):
        full, halves = one.batch(0, index), [g.batch(0, index) for g in two]
        assert full.queries == halves[0].queries + halves[1].queries
        assert full.passages == halves[0].passages + halves[1].passages
        assert len(full.passages) == 4 * 3


def test_grouped_batches_refuse_what_cannot_work(train_file, tmp_path):
    examples = read_jsonl(train_file)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        GroupedBatches(examples, 2, per_device_batch_size=8, world_size=2)
    no_neg = tmp_path / "pairs.jsonl"
    no_neg.write_text('{"query": "q", "pos": ["p"]}\n')
    with pytest.raises(ValueError, match=f"{no_neg}:1: 'neg' is empty but train_group_size=2"):
        GroupedBatches(read_jsonl(no_neg), 2, 1)
    GroupedBatches(read_jsonl(no_neg), 1, 1)  # positives only: fine with G = 1


def test_teacher_score_use(train_file, scored_file):
    plain, scored = read_jsonl(train_file), read_jsonl(scored_file)
    assert resolve_teacher_use(scored, "auto") and not resolve_teacher_use(plain, "auto")
    assert not resolve_teacher_use(scored, "off")
    with pytest.raises(ValueError, match=f"{train_file}:1: no 'pos_scores'"):
        resolve_teacher_use(plain, "on")
    with pytest.raises(ValueError, match="on other lines"):
        resolve_teacher_use(scored + plain, "auto")
    batch = GroupedBatches(scored, 3, 2, use_teacher_scores=True).batch(0, 0)
    assert np.array(batch.teacher_scores).shape == (2, 3)
