"""Two CPU processes under torchrun (gloo, DistributedDataParallel) against a single-process reference.

What is compared: the first step's loss and gradient norm. The reference runs in this process on the
same global batch, built the way the distributed run defines it: rank r's half of global batch 0 is
encoded separately; L_dense uses the dense scores of all 4 queries against all 12 passages (cross-device
negatives); the sparse, ColBERT, ensemble and self-distillation terms use each half's own in-batch scores;
the reference loss is the mean of the two halves' losses, which is what DDP's gradient averaging optimises.
The distributed run also encodes in checkpointed sub-batches with gradient checkpointing, the reference
does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m3embed.train.data import GroupedBatches, read_jsonl
from m3embed.train.losses import dense_scores, m3_loss
from m3embed.train.trainer import LOG_FILE, Trainer
from tests.train.conftest import write_train_file
from tests.train.test_trainer import config

ARGS = {"train_group_size": 3, "per_device_batch_size": 2, "query_max_length": 32, "passage_max_length": 64}


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
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    return {
        "loss": loss.item(),
        "grad_norm": grad_norm.item(),
        "dense": outs[0].parts["dense"].item(),
        "sparse": (outs[0].parts["sparse"].item() + outs[1].parts["sparse"].item()) / 2,
    }


@pytest.mark.slow  # ~20-30 s on 2 shared cores: torchrun starts two Python processes that import torch
def test_two_processes_first_step_equals_single_process_reference(nodrop_ckpt, tmp_path):
    data = write_train_file(tmp_path / "train.jsonl", n=8, n_neg=3, seed=3)
    out = tmp_path / "ddp"
    m3embed = Path(sys.executable).parent / "m3embed"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--no-python",
        str(m3embed),
        "train",
        str(data),
        "-m",
        str(nodrop_ckpt),
        "-o",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--train-group-size",
        "3",
        "--query-max-length",
        "32",
        "--passage-max-length",
        "64",
        "--sub-batch-size",
        "2",
        "--gradient-checkpointing",
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(x) for x in (out / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # the second step (after an optimizer step under DDP) ran too
    assert run.stderr.count("trained 2 steps") == 1  # only rank 0 reports

    ref = reference_step(nodrop_ckpt, data, tmp_path / "ref")
    first = rows[0]
    assert abs(first["loss"] - ref["loss"]) < 1e-5
    assert first["dense"] == pytest.approx(ref["dense"], abs=1e-5)  # the cross-device dense loss
    assert first["sparse"] == pytest.approx(ref["sparse"], abs=1e-5)  # local, averaged over the processes
    assert first["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
