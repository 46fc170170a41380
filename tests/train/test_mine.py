"""Hard-negative mining: rank range respected, positives never returned, fields kept, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from m3embed.cli import app
from m3embed.model import M3Model
from m3embed.train.mine import mine_hard_negatives, parse_range
from tests.train.conftest import write_train_file


@pytest.fixture(scope="module")
def model(xlmr_ckpt):
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu")


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_negatives_come_from_the_rank_range_and_are_never_positive(model, tmp_path):
    src = write_train_file(tmp_path / "in.jsonl", n=10, n_neg=4, scores=True)
    rows = rows_of(src)
    rows[0]["pos"].append(rows[1]["pos"][0])  # a text that is positive for line 0 and a candidate for others
    rows[0]["pos_scores"].append(0.9)
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    stats = mine_hard_negatives(model, src, tmp_path / "out.jsonl", sample_range="2-12", negative_number=4)
    out = rows_of(tmp_path / "out.jsonl")
    assert stats.lines == 10 and stats.dropped_teacher_scores == 10 and stats.topped_up == 0

    candidates = list(dict.fromkeys(t for r in rows for t in r["pos"] + r["neg"]))
    q = model.encode_queries([r["query"] for r in rows]).dense
    c = model.encode_corpus(candidates).dense
    ranks = np.argsort(-(q @ c.T), axis=1, kind="stable")
    for r_in, r_out, order in zip(rows, out, ranks):
        assert r_out["query"] == r_in["query"] and r_out["pos"] == r_in["pos"]
        assert "pos_scores" not in r_out and "neg_scores" not in r_out  # stale once neg is replaced
        assert len(r_out["neg"]) == 4 and len(set(r_out["neg"])) == 4
        assert not set(r_out["neg"]) & set(r_in["pos"])
        allowed = {candidates[j] for j in order[2:12]}
        assert set(r_out["neg"]) <= allowed, "a negative from outside ranks 2-12"


def test_small_range_is_topped_up_and_hybrid_runs(model, tmp_path):
    src = write_train_file(tmp_path / "in.jsonl", n=6, n_neg=2)
    mine_hard_negatives(
        model, src, tmp_path / "a.jsonl", sample_range=(0, 2), negative_number=5, modes="dense,sparse", seed=1
    )
    stats = mine_hard_negatives(
        model, src, tmp_path / "b.jsonl", sample_range=(0, 2), negative_number=5, modes="dense,sparse", seed=1
    )
    assert stats.topped_up == 6 and stats.mean_negatives == 5
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()  # seeded
    for row in rows_of(tmp_path / "b.jsonl"):
        assert not set(row["neg"]) & set(row["pos"])


def test_bad_input_line_names_file_and_line(model, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"query": "q", "pos": ["p"]}\n\n{"query": "q", "pos": [\n')
    with pytest.raises(ValueError, match=r"in\.jsonl:3: not valid JSON"):
        mine_hard_negatives(model, src, tmp_path / "out.jsonl")


def test_explicit_length_above_the_model_limit_is_an_error(model, tmp_path):
    src = write_train_file(tmp_path / "in.jsonl", n=4, n_neg=2)
    with pytest.raises(ValueError, match="passage_max_length=300 exceeds the model's position limit of 128"):
        mine_hard_negatives(model, src, tmp_path / "out.jsonl", passage_max_length=300)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("value, message", [("2:200", "START-END"), ("5-5", "0 <= start < end")])
def test_bad_range(value, message):
    with pytest.raises(ValueError, match=message):
        parse_range(value)


def test_cli_mine(xlmr_ckpt, tmp_path):
    src = write_train_file(tmp_path / "in.jsonl", n=6, n_neg=3)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for r in rows_of(src) for t in r["neg"]))
    r = CliRunner().invoke(
        app,
        [
            "mine",
            str(src),
            "-o",
            str(tmp_path / "o.jsonl"),
            "-m",
            str(xlmr_ckpt),
            "--range",
            "1-10",
            "--negatives",
            "3",
            "--pool",
            str(pool),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    negs = {t for row in rows_of(src) for t in row["neg"]}
    assert f"6 lines, {len(negs)} candidates" in r.output  # the pool, deduplicated
    assert all(set(row["neg"]) <= negs for row in rows_of(tmp_path / "o.jsonl"))


def test_mine_shows_its_progress_on_stderr(model, tmp_path, capfd):
    src = write_train_file(tmp_path / "in.jsonl", n=6, n_neg=3)
    capfd.readouterr()
    mine_hard_negatives(model, src, tmp_path / "o.jsonl", sample_range="1-10", negative_number=2, progress=True)
    out, err = capfd.readouterr()
    assert out == "" and err.count("encoding tokens") >= 2  # the queries, then the candidates
