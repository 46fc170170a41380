"""Two CPU processes under torchrun (gloo, DistributedDataParallel) against a single-process reference.

What is compared: the first step's loss and gradient norm. The reference runs in this process on the
same global batch, built the way the distributed run defines it: rank r's half of global batch 0 is
encoded separately; L_dense uses the dense scores of all 4 queries against all 12 passages (cross-device
negatives); the sparse, ColBERT, ensemble and self-distillation terms use each half's own in-batch scores;
the reference loss is the mean of the two halves' losses, which is what DDP's gradient averaging optimises.
The distributed run also encodes in checkpointed sub-batches with gradient checkpointing, the reference
does not.

The two earlier stages are checked the same way. `m3embed pretrain` (RetroMAE): each rank masks its half
from the global torch RNG, seeded by `seed` alone, so both ranks draw from the same stream; the reference
replays that state for each half. `m3embed train-unsupervised`: the distributed run goes through GradCache
(chunks smaller than a rank's batch, all but the last under `no_sync`), the reference is the plain loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m3embed.model import M3Model
from m3embed.train.checkpoints import MANIFEST_FILE, rng_file
from m3embed.train.data import GroupedBatches, read_jsonl
from m3embed.train.losses import dense_scores, m3_loss
from m3embed.train.retromae import PretrainTrainer, TextBatches
from m3embed.train.trainer import LOG_FILE, Trainer
from m3embed.train.unsupervised import UnsupervisedTrainer
from m3testkit.checkpoints import sample_texts
from tests.train import test_retromae, test_unsupervised
from tests.train.conftest import write_train_file
from tests.train.test_trainer import config

ARGS = {"train_group_size": 3, "per_device_batch_size": 2, "query_max_length": 32, "passage_max_length": 64}


def torchrun(*args: str | Path) -> str:
    """Run `m3embed *args` in two CPU processes; return its stderr (the test fails on a non-zero exit)."""
    m3embed = Path(sys.executable).parent / "m3embed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
           str(m3embed), *map(str, args), "--no-progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr


def log_rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / LOG_FILE).read_text().splitlines()]


def grad_norm(model: torch.nn.Module) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.nn.utils.clip_grad_norm_(params, float("inf")).item()


def reference_step(ckpt: Path, data: Path, out: Path) -> dict[str, float]:
    trainer = Trainer(config(ckpt, data, out, **ARGS))
    loss_fn = trainer.loss_fn
    examples = read_jsonl(data)
    halves = []
    for rank in (0, 1):
        batch = GroupedBatches(examples, 3, 2, world_size=2, rank=rank, seed=trainer.config.seed).batch(0, 0)
        x = trainer.collate(batch)
        q, p = loss_fn.encode(x["q_ids"], x["q_mask"]), loss_fn.encode(x["p_ids"], x["p_mask"])
        halves.append((q, p, loss_fn.scores(q, p, x["q_ids"], x["q_mask"], x["p_ids"], x["p_mask"])))
    dense_global = dense_scores(
        torch.cat([h[0]["dense"] for h in halves]), torch.cat([h[1]["dense"] for h in halves])
    )
    outs = [m3_loss(s, 3, 0.02, dense_global=dense_global, self_distill=True) for _, _, s in halves]
    loss = (outs[0].loss + outs[1].loss) / 2
    loss.backward()
    return {
        "loss": loss.item(),
        "grad_norm": grad_norm(trainer.model),
        "dense": outs[0].parts["dense"].item(),
        "sparse": (outs[0].parts["sparse"].item() + outs[1].parts["sparse"].item()) / 2,
    }


@pytest.mark.slow  # ~20-30 s on 2 shared cores: torchrun starts two Python processes that import torch
def test_two_processes_first_step_equals_single_process_reference(nodrop_ckpt, tmp_path):
    data = write_train_file(tmp_path / "train.jsonl", n=8, n_neg=3, seed=3)
    out = tmp_path / "ddp"
    stderr = torchrun("train", data, "-m", nodrop_ckpt, "-o", out, "--max-steps", "2", "--batch-size", "2",
                      "--train-group-size", "3", "--query-max-length", "32", "--passage-max-length", "64",
                      "--sub-batch-size", "2", "--gradient-checkpointing")
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [1, 2]  # the second step (after an optimizer step under DDP) ran too
    assert stderr.count("trained 2 steps") == 1  # only rank 0 reports

    ref = reference_step(nodrop_ckpt, data, tmp_path / "ref")
    first = rows[0]
    assert abs(first["loss"] - ref["loss"]) < 1e-5
    assert first["dense"] == pytest.approx(ref["dense"], abs=1e-5)  # the cross-device dense loss
    assert first["sparse"] == pytest.approx(ref["sparse"], abs=1e-5)  # local, averaged over the processes
    assert first["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)


def pretrain_reference_step(ckpt: Path, data: Path, out: Path) -> dict[str, float]:
    """Loss (mean of the two ranks') and gradient norm of step 1: each rank masks its half of global batch 0
    from the RNG state every process holds after set-up (seeded by `seed` only, the same on both ranks)."""
    trainer = PretrainTrainer(test_retromae.config(ckpt, data, out, per_device_batch_size=4, max_length=32))
    state = torch.get_rng_state()
    losses = []
    for rank in (0, 1):
        torch.set_rng_state(state)
        batch = TextBatches(trainer.batches.texts, 4, world_size=2, rank=rank, seed=trainer.config.seed).batch(0, 0)
        losses.append(trainer.compute_loss(batch).loss)
    loss = (losses[0] + losses[1]) / 2
    loss.backward()
    return {"loss": loss.item(), "grad_norm": grad_norm(trainer.model)}


@pytest.mark.slow  # ~12-20 s on 2 shared cores: torchrun with two processes, then the reference in this process
def test_two_processes_pretrain_first_step_equals_single_process_reference(nodrop_ckpt, tmp_path):
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(sample_texts(43, seed=1)[11:]) + "\n", encoding="utf-8")  # 32 texts: 4 global batches
    out = tmp_path / "pre"
    stderr = torchrun("pretrain", data, "-m", nodrop_ckpt, "-o", out, "--max-steps", "2", "--batch-size", "4",
                      "--max-length", "32", "--lr", "1e-3", "--warmup-ratio", "0", "--save-steps", "2")
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["epoch"] == 0.25  # 32 texts / (4 per process x 2 processes) = 4 steps per epoch
    assert stderr.count("trained 2 steps") == 1
    manifest = json.loads((out / "checkpoint-2" / MANIFEST_FILE).read_text())
    assert manifest["world_size"] == 2 and {rng_file(0), rng_file(1)} <= set(manifest["files"])

    ref = pretrain_reference_step(nodrop_ckpt, data, tmp_path / "ref")
    assert rows[0]["loss"] == pytest.approx(ref["loss"], rel=1e-5)  # logged: the mean over the processes
    assert rows[0]["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)  # of the averaged gradients
    trained, source = M3Model.from_pretrained(out), M3Model.from_pretrained(nodrop_ckpt)
    assert trained.pooling == "cls"
    assert not torch.equal(trained.backbone.embeddings.word_embeddings.weight,
                           source.backbone.embeddings.word_embeddings.weight)  # the optimizer steps were saved


def unsupervised_reference_step(ckpt: Path, data: Path, out: Path) -> dict[str, float]:
    """Loss and gradient norm of step 1 without GradCache: both halves of global batch 0, dense scores of all 8
    queries against all 8 passages; every rank's loss is that global InfoNCE, so their mean is too."""
    trainer = UnsupervisedTrainer(test_unsupervised.config(ckpt, data, out, per_device_batch_size=4,
                                                           grad_cache_chunk_size=None))
    loss_fn = trainer.loss_fn
    examples = read_jsonl(data)
    halves = []
    for rank in (0, 1):
        batch = GroupedBatches(examples, 1, 4, world_size=2, rank=rank, seed=trainer.config.seed).batch(0, 0)
        x = trainer.collate(batch)
        halves.append(tuple(loss_fn.encode(x[f"{r}_ids"], x[f"{r}_mask"])["dense"] for r in "qp"))
    dense_global = dense_scores(torch.cat([q for q, _ in halves]), torch.cat([p for _, p in halves]))
    outs = [m3_loss({"dense": dense_scores(q, p)}, 1, 0.02, dense_global=dense_global) for q, p in halves]
    loss = (outs[0].loss + outs[1].loss) / 2
    loss.backward()
    return {"loss": loss.item(), "grad_norm": grad_norm(trainer.model)}


@pytest.mark.slow  # ~12-20 s on 2 shared cores: torchrun with two processes, then the reference in this process
def test_two_processes_unsupervised_grad_cache_step_equals_single_process_reference(nodrop_ckpt, tmp_path):
    texts = sample_texts(27, seed=3)[11:]
    rows = [{"query": " ".join(t.split()[:3]), "pos": [t]} for t in texts]  # 16 pairs: 2 global batches
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "unsup"
    stderr = torchrun("train-unsupervised", data, "-m", nodrop_ckpt, "-o", out, "--max-steps", "2",
                      "--batch-size", "4", "--grad-cache-chunk-size", "3", "--query-max-length", "16",
                      "--passage-max-length", "48", "--lr", "1e-3", "--warmup-ratio", "0")
    log = log_rows(out)
    assert [r["step"] for r in log] == [1, 2]
    assert log[0]["epoch"] == 0.5  # 16 pairs / (4 per process x 2 processes) = 2 steps per epoch
    assert stderr.count("trained 2 steps") == 1

    ref = unsupervised_reference_step(nodrop_ckpt, data, tmp_path / "ref")
    assert log[0]["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert log[0]["dense"] == pytest.approx(ref["loss"], rel=1e-5)  # dense only: the loss is the dense InfoNCE
    assert log[0]["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
    M3Model.from_pretrained(out, modes=("dense",))
