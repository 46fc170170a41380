"""The unsupervised stage: GradCache gives the full batch's gradients; the stage trains from the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from m3embed.cli import app
from m3embed.model import M3Model
from m3embed.train.config import UnsupervisedTrainConfig
from m3embed.train.gradcache import GradCacheLoss
from m3embed.train.unsupervised import UnsupervisedTrainer
from m3testkit.checkpoints import sample_texts


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """{"query", "pos"} rows of varied lengths: a title-like head and a body-like text."""
    texts = sample_texts(40, seed=3)
    rows = [{"query": " ".join(t.split()[:3]), "pos": [f"{t} {texts[(i + 1) % len(texts)]}"[: 20 + 7 * (i % 9)]]}
            for i, t in enumerate(texts)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def config(ckpt: Path, data: Path, out: Path, **kw) -> UnsupervisedTrainConfig:
    base = {"model": str(ckpt), "train_data": [str(data)], "output_dir": str(out), "per_device_batch_size": 8,
            "query_max_length": 16, "passage_max_length": 48, "learning_rate": 1e-3, "progress": False,
            "device": "cpu"}
    return UnsupervisedTrainConfig(**{**base, **kw})


def grads_of(trainer: UnsupervisedTrainer, seed: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.optimizer.zero_grad()
    torch.manual_seed(seed)
    loss = trainer.forward_backward(trainer.batches.batch(0, 0)).loss.item()
    return loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def assert_same_grads(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Equal within 1e-5 of each tensor's largest gradient: float32 sums in another order (the chunks) differ by
    ~2e-5 relative on the word-embedding gradient, a sum over every token, on some CPUs (AVX2-only AMD EPYC)."""
    assert got.keys() == ref.keys() and ref
    for name in ref:
        scale = max(float(ref[name].abs().max()), 1.0)
        err = float((got[name] - ref[name]).abs().max())
        assert err <= 1e-5 * scale, f"{name}: largest difference {err:.3g}, allowed {1e-5 * scale:.3g}"


@pytest.mark.parametrize("modes", [("dense",), ("dense", "sparse", "colbert")], ids=",".join)
def test_grad_cache_gives_the_uncached_full_batch_gradient(nodrop_ckpt, pairs_file, tmp_path, modes):
    ref_loss, ref = grads_of(UnsupervisedTrainer(config(nodrop_ckpt, pairs_file, tmp_path / "a", modes=modes,
                                                        grad_cache_chunk_size=None)))
    trainer = UnsupervisedTrainer(config(nodrop_ckpt, pairs_file, tmp_path / "b", modes=modes,
                                         grad_cache_chunk_size=3))
    assert isinstance(trainer.loss_fn, GradCacheLoss)
    loss, got = grads_of(trainer)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert_same_grads(got, ref)


def test_grad_cache_replays_dropout(xlmr_ckpt, pairs_file, tmp_path):
    """With dropout on, each re-run chunk draws the masks of its cached pass: the gradient equals that of the
    checkpointed sub-batches (the same chunks, the same RNG stream), which recompute under the same masks."""
    _, ref = grads_of(UnsupervisedTrainer(config(xlmr_ckpt, pairs_file, tmp_path / "a", grad_cache_chunk_size=None,
                                                 sub_batch_size=3)))
    _, got = grads_of(UnsupervisedTrainer(config(xlmr_ckpt, pairs_file, tmp_path / "b", grad_cache_chunk_size=3)))
    assert_same_grads(got, ref)


def test_config_keeps_in_batch_negatives_only():
    with pytest.raises(ValueError, match="train_group_size=2: must be 1"):
        UnsupervisedTrainConfig(model="m", train_data=["x"], train_group_size=2)
    with pytest.raises(ValueError, match="leave sub_batch_size unset"):
        UnsupervisedTrainConfig(model="m", train_data=["x"], sub_batch_size=4)


def test_cli_trains_and_saves_a_model_that_loads(nodrop_ckpt, pairs_file, tmp_path):
    out = tmp_path / "unsup"
    result = CliRunner().invoke(app, ["train-unsupervised", str(pairs_file), "-m", str(nodrop_ckpt), "-o", str(out),
                                      "--batch-size", "8", "--grad-cache-chunk-size", "4", "--max-steps", "3",
                                      "--device", "cpu", "--no-progress", "--save-steps", "2"])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all("dense" in r for r in log)
    assert (out / "checkpoint-2").is_dir()
    assert json.loads((out / "train_config.json").read_text())["modes"] == ["dense"]
    M3Model.from_pretrained(out, modes=("dense",))


@pytest.fixture(scope="module")
def title_body_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """{"title", "body"} rows, the body a plain string (every third a list), and a field the stage does not read."""
    texts = sample_texts(24, seed=4)
    rows = [{"title": " ".join(t.split()[:3]), "body": [t] if i % 3 == 0 else t, "url": f"u{i}"}
            for i, t in enumerate(texts)]
    path = tmp_path_factory.mktemp("title_body") / "articles.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_title_body_rows_train_through_the_python_api(nodrop_ckpt, title_body_file, tmp_path):
    from m3embed.train.unsupervised import train_unsupervised

    out = train_unsupervised(config(nodrop_ckpt, title_body_file, tmp_path / "out", query_field="title",
                                    pos_field="body", max_steps=1, grad_cache_chunk_size=4))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1] and log[0]["dense"] > 0
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["query_field"], saved["pos_field"]) == ("title", "body")
    assert UnsupervisedTrainConfig.load(out / "train_config.json").pos_field == "body"


def test_title_body_rows_train_through_the_cli(nodrop_ckpt, title_body_file, tmp_path):
    out = tmp_path / "unsup"
    result = CliRunner().invoke(app, ["train-unsupervised", str(title_body_file), "-m", str(nodrop_ckpt), "-o",
                                      str(out), "--query-field", "title", "--pos-field", "body", "--batch-size", "8",
                                      "--max-steps", "1", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["step"] == 1


def test_a_row_missing_the_field_is_one_error_naming_file_line_and_field(nodrop_ckpt, tmp_path, monkeypatch,
                                                                         capsys):
    from m3embed.cli import main

    path = tmp_path / "articles.jsonl"
    path.write_text(json.dumps({"title": "a", "body": "b c"}) + "\n" + json.dumps({"title": "d", "text": "e"}) + "\n")
    message = f"{path}:2: missing field(s) ['body']"
    with pytest.raises(ValueError, match=re.escape(message)):
        UnsupervisedTrainer(config(nodrop_ckpt, path, tmp_path / "out", query_field="title", pos_field="body"))
    monkeypatch.setattr("sys.argv", ["m3embed", "train-unsupervised", str(path), "-m", str(nodrop_ckpt), "-o",
                                     str(tmp_path / "cli"), "--query-field", "title", "--pos-field", "body",
                                     "--device", "cpu", "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines


def test_default_fields_still_take_a_list_only_in_fine_tuning(tmp_path):
    from m3embed.train.data import load_examples, parse_pair

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": "a positive"}) + "\n")
    assert load_examples(path, parse_pair)[0].pos == ("a positive",)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:1: 'pos' must be a list of strings, got str"):
        load_examples(path)
