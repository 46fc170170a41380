"""The trainer: sub-batch gradients, training switches, checkpoints/resume, log, loaders, CLI."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from m3embed.cli import app
from m3embed.model import M3Model
from m3embed.train.checkpoints import MANIFEST_FILE, STATE_FILE, missing_checkpoint_files
from m3embed.train.config import TrainConfig
from m3embed.train.data import read_jsonl
from m3embed.train.trainer import LOG_FILE, Trainer, train
from tests.train.conftest import SHARED_DATA


def config(ckpt: Path, data: Path, out: Path, **kw) -> TrainConfig:
    base = {
        "model": str(ckpt),
        "train_data": [str(data)],
        "output_dir": str(out),
        "train_group_size": 3,
        "per_device_batch_size": 2,
        "query_max_length": 32,
        "passage_max_length": 64,
        "learning_rate": 1e-3,
        "progress": False,
        "device": "cpu",
    }
    return TrainConfig(**{**base, **kw})


def grads_of(trainer: Trainer) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.optimizer.zero_grad()
    out = trainer.compute_loss(trainer.batches.batch(0, 0))
    out.loss.backward()
    return out.loss.item(), {
        n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None
    }


def test_sub_batches_and_checkpointing_give_the_full_batch_gradient(nodrop_ckpt, train_file, tmp_path):
    ref_loss, ref = grads_of(
        Trainer(config(nodrop_ckpt, train_file, tmp_path / "a", per_device_batch_size=4))
    )
    assert len(ref) == sum(
        1 for _ in M3Model.from_pretrained(nodrop_ckpt).parameters()
    )  # every weight learns
    for kw in ({"sub_batch_size": 3}, {"sub_batch_size": 1, "gradient_checkpointing": True}):
        loss, got = grads_of(
            Trainer(config(nodrop_ckpt, train_file, tmp_path / "b", per_device_batch_size=4, **kw))
        )
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert got.keys() == ref.keys()
        # Only float32 noise may differ. Chunks are padded differently, so hidden states differ by ~1e-6
        # relative; a tensor whose gradient is a near-cancelling sum of large terms (the sparse head, key
        # biases) inherits noise on the scale of the whole gradient, hence the floor relative to the total.
        total = torch.cat([ref[n].flatten() for n in ref]).norm()
        for name in ref:
            assert (got[name] - ref[name]).norm() <= 1e-4 * ref[name].norm() + 1e-5 * total, f"{kw} {name}"
        assert torch.cat([(got[n] - ref[n]).flatten() for n in ref]).norm() <= 1e-5 * total


def changed_parts(ckpt: Path, data: Path, out: Path, **kw) -> set[str]:
    before = M3Model.from_pretrained(ckpt).state_dict()
    trainer = Trainer(config(ckpt, data, out, max_steps=2, **kw))
    trainer.train()
    after = trainer.model.state_dict()
    parts = set()
    for name, value in before.items():
        if not torch.equal(value, after[name]):
            parts.add(name.split(".")[0])
    return parts


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"modes": "dense"}, {"backbone"}),
        ({}, {"backbone", "sparse_linear", "colbert_linear"}),
        ({"freeze": "encoder"}, {"sparse_linear", "colbert_linear"}),
        ({"modes": "sparse", "freeze": "encoder"}, {"sparse_linear"}),
        ({"modes": "dense,colbert"}, {"backbone", "colbert_linear"}),
        ({"freeze": "colbert"}, {"backbone", "sparse_linear"}),
    ],
)
def test_switches_train_exactly_the_chosen_parts(xlmr_ckpt, train_file, tmp_path, kw, expected):
    assert changed_parts(xlmr_ckpt, train_file, tmp_path, **kw) == expected


def test_plain_encoder_gets_heads_only_for_trained_modes(xlmr_ckpt, train_file, tmp_path):
    plain = Path(shutil.copytree(xlmr_ckpt, tmp_path / "plain"))
    for f in ("colbert_linear.pt", "sparse_linear.pt"):
        (plain / f).unlink()
    dense_out = train(config(plain, train_file, tmp_path / "dense", modes="dense", max_steps=1))
    assert not (dense_out / "colbert_linear.pt").exists() and not (dense_out / "sparse_linear.pt").exists()
    m3_out = train(config(plain, train_file, tmp_path / "m3", max_steps=1))
    assert (m3_out / "colbert_linear.pt").is_file() and (m3_out / "sparse_linear.pt").is_file()
    M3Model.from_pretrained(m3_out)  # loads with every head


def test_resume_continues_to_the_same_state(xlmr_ckpt, train_file, tmp_path):
    # dropout is on in xlmr_ckpt: equal results also need the restored RNG state
    full = Trainer(
        config(
            xlmr_ckpt,
            train_file,
            tmp_path / "full",
            max_steps=4,
            save_steps=2,
            save_total_limit=0,
            sub_batch_size=2,
        )
    )
    full.train()
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    # an interrupted run: copy what was on disk at step 2, then resume from it
    (tmp_path / "cut").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    resumed = Trainer(
        config(xlmr_ckpt, train_file, tmp_path / "cut", max_steps=4, resume_from="auto", sub_batch_size=2)
    )
    assert resumed.step == 2
    resumed.train()
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    a, b = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)
    logs = [
        [json.loads(x) for x in (tmp_path / d / LOG_FILE).read_text().splitlines()] for d in ("full", "cut")
    ]
    assert [r["step"] for r in logs[1]] == [3, 4]
    assert [r["loss"] for r in logs[0][2:]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-6)


@pytest.fixture(scope="module")
def saved_run(xlmr_ckpt, train_file, tmp_path_factory) -> Path:
    """A 4-step run (dropout on) with checkpoints at steps 2 and 4 and its log."""
    out = tmp_path_factory.mktemp("saved") / "run"
    train(config(xlmr_ckpt, train_file, out, max_steps=4, save_steps=2, save_total_limit=0))
    return out


def test_checkpoints_appear_complete_with_a_manifest_of_their_files(saved_run):
    assert sorted(p.name for p in saved_run.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]  # no checkpoint-N.partial left behind
    for ckpt in saved_run.glob("checkpoint-*"):
        manifest = json.loads((ckpt / MANIFEST_FILE).read_text())
        assert manifest["world_size"] == 1 and manifest["step"] == int(ckpt.name.split("-")[1])
        assert {STATE_FILE, "rng_state_rank0.pt", "model.safetensors"} <= set(manifest["files"])
        assert missing_checkpoint_files(ckpt) == []


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "written-before-manifests"])
def test_resume_skips_or_refuses_a_checkpoint_missing_its_rng_file(
    saved_run, xlmr_ckpt, train_file, tmp_path, manifest
):
    # a run killed between writing trainer_state.pt and rng_state_rank0.pt of checkpoint-4
    cut = tmp_path / "cut"
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(saved_run / name, cut / name)
    (cut / "checkpoint-4" / "rng_state_rank0.pt").unlink()
    if not manifest:
        (cut / "checkpoint-4" / MANIFEST_FILE).unlink()
    shutil.copytree(saved_run / "checkpoint-4", cut / "checkpoint-6.partial")  # killed while saving step 6
    with pytest.warns(UserWarning, match=r"skipping .*checkpoint-4, incomplete \(rng_state_rank0\.pt missing\)"):
        resumed = Trainer(config(xlmr_ckpt, train_file, cut, max_steps=4, resume_from="auto"))
    assert resumed.resume_dir == cut / "checkpoint-2" and resumed.step == 2  # the newest complete one
    with pytest.raises(FileNotFoundError) as err:
        Trainer(config(xlmr_ckpt, train_file, cut, max_steps=4, resume_from=str(cut / "checkpoint-4")))
    assert f"{cut / 'checkpoint-4'} is incomplete: rng_state_rank0.pt missing" in str(err.value)
    assert "\n" not in str(err.value)  # the CLI prints it as one line


def test_resumed_run_drops_the_log_lines_after_its_checkpoint(saved_run, xlmr_ckpt, train_file, tmp_path):
    full = [json.loads(x) for x in (saved_run / LOG_FILE).read_text().splitlines()]
    # killed after logging step 3 and while writing step 4's line; checkpoint-2 is the newest on disk
    cut = tmp_path / "cut"
    shutil.copytree(saved_run / "checkpoint-2", cut / "checkpoint-2")
    lines = (saved_run / LOG_FILE).read_text().splitlines()
    (cut / LOG_FILE).write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    Trainer(config(xlmr_ckpt, train_file, cut, max_steps=4, resume_from="auto")).train()
    rows = [json.loads(x) for x in (cut / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in full], rel=1e-6)


def test_log_has_loss_per_mode_and_checkpoints_rotate(xlmr_ckpt, train_file, tmp_path):
    train(config(xlmr_ckpt, train_file, tmp_path, max_steps=4, save_steps=1, save_total_limit=2))
    rows = [json.loads(x) for x in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "dense", "sparse", "colbert", "inter", "distill", "lr", "grad_norm", "epoch"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["lr"] == 0.0 and rows[1]["lr"] == pytest.approx(1e-3)  # 1 warm-up step of 4 (10 %)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert TrainConfig.load(tmp_path / "train_config.json").max_steps == 4


def test_checkpoint_loads_in_our_loader_and_in_flagembedding(xlmr_ckpt, train_file, tmp_path):
    FlagEmbedding = pytest.importorskip("FlagEmbedding")
    train(config(xlmr_ckpt, train_file, tmp_path, max_steps=1, save_steps=1, lr_scheduler="constant"))
    ckpt = tmp_path / "checkpoint-1"
    texts = ["the blue house", "Der Hund liest einen langen Brief."]
    ours = M3Model.from_pretrained(ckpt).encode(texts, modes="dense,sparse,colbert")
    flag = FlagEmbedding.BGEM3FlagModel(str(ckpt), use_fp16=False, devices="cpu")
    ref = flag.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    np.testing.assert_allclose(ours.dense, ref["dense_vecs"], atol=1e-5)
    for a, b in zip(ours.lexical_weights, ref["lexical_weights"]):
        assert a.keys() == b.keys() and np.allclose(list(a.values()), [b[k] for k in a], atol=1e-5)
    for a, b in zip(ours.colbert, ref["colbert_vecs"]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    before = M3Model.from_pretrained(xlmr_ckpt).encode(texts).dense
    assert not np.allclose(before, ours.dense, atol=1e-5)  # the checkpoint holds trained weights


def test_teacher_scores_and_bf16_autocast_train(xlmr_ckpt, scored_file, tmp_path):
    out = train(config(xlmr_ckpt, scored_file, tmp_path, max_steps=2, bf16=True, kd_loss="kl_div"))
    rows = [json.loads(x) for x in (out / LOG_FILE).read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_bad_data_fails_before_any_training(xlmr_ckpt, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n{"query": "q", "pos": "p", "neg": []}\n')
    with pytest.raises(ValueError, match=f"{bad}:2: 'pos' must be a list"):
        Trainer(config(xlmr_ckpt, bad, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_train_and_user_errors(xlmr_ckpt, train_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = runner.invoke(
            app,
            [
                "train",
                str(train_file),
                "-m",
                str(xlmr_ckpt),
                "-o",
                str(out),
                "--max-steps",
                "2",
                "--train-group-size",
                "2",
                "--batch-size",
                "2",
                "--modes",
                "dense,sparse",
                "--sub-batch-size",
                "2",
                "--no-progress",
                "--device",
                "cpu",
            ],
        )
    assert r.exit_code == 0, r.output
    # the default passage length (256) is above the model's 128 positions: capped silently
    assert not [w for w in caught if "max_length" in str(w.message)]
    assert "trained 2 steps" in r.output and (out / "model.safetensors").is_file()
    kept, source = (torch.load(d / "colbert_linear.pt")["weight"] for d in (out, xlmr_ckpt))
    assert torch.equal(kept, source)  # not trained (modes dense,sparse) but kept, so the model stays complete
    r = runner.invoke(
        app,
        [
            "train",
            str(train_file),
            "-m",
            str(xlmr_ckpt),
            "-o",
            str(out),
            "--modes",
            "dense",
            "--freeze",
            "encoder",
        ],
    )
    assert isinstance(r.exception, ValueError) and "leaves nothing to train" in str(r.exception)
    # an explicit length above the model's positions is an error, raised before training starts
    r = runner.invoke(
        app,
        ["train", str(train_file), "-m", str(xlmr_ckpt), "-o", str(tmp_path / "long"), "--passage-max-length", "256"],
    )
    assert isinstance(r.exception, ValueError), r.output
    assert "passage_max_length=256 exceeds the model's position limit of 128 tokens" in str(r.exception)
    assert not (tmp_path / "long").exists()


def test_cli_train_options_are_train_config_fields(tmp_path, monkeypatch):
    import m3embed.train.trainer as trainer_module

    seen = []

    def fake_train(config: TrainConfig) -> Path:
        seen.append(config)
        (tmp_path / LOG_FILE).write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
        return tmp_path

    monkeypatch.setattr(trainer_module, "train", fake_train)
    runner = CliRunner()
    r = runner.invoke(app, ["train", "a.jsonl", "b.jsonl", "-m", "ckpt", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert seen[-1] == TrainConfig(model="ckpt", train_data=["a.jsonl", "b.jsonl"], output_dir=str(tmp_path))
    args = ["--batch-size", "3", "--lr", "0.5", "--no-cross-device-negatives", "--resume", "auto"]
    args += ["--query-max-length", "16", "--max-grad-norm", "0", "--modes", "dense", "--no-progress"]
    r = runner.invoke(app, ["train", "a.jsonl", "-m", "ckpt", "-o", str(tmp_path), *args])
    assert r.exit_code == 0, r.output
    c = seen[-1]
    assert (c.per_device_batch_size, c.learning_rate, c.negatives_cross_device, c.resume_from) == (
        3, 0.5, False, "auto"
    )
    assert (c.query_max_length, c.passage_max_length, c.max_grad_norm, c.modes, c.progress) == (
        16, None, 0.0, ("dense",), False
    )


@pytest.mark.skipif(not (SHARED_DATA / "xquad/en/train.jsonl").is_file(), reason="shared data absent")
def test_real_data_smoke_loss_goes_down(xlmr_ckpt, tmp_path):
    lines = (SHARED_DATA / "xquad/en/train.jsonl").read_text().splitlines()[:8]
    data = tmp_path / "xquad8.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert len(read_jsonl(data)) == 8
    trainer = Trainer(
        config(
            xlmr_ckpt,
            data,
            tmp_path / "o",
            modes="dense",
            train_group_size=2,
            per_device_batch_size=8,
            max_steps=6,
            warmup_steps=1,
            learning_rate=3e-4,
        )
    )
    trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "o" / LOG_FILE).read_text().splitlines()]
    assert rows[-1]["dense"] < rows[0]["dense"]  # the same 8 queries each step: training must fit them
