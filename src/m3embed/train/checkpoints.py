"""Training checkpoints on disk: their files, which are complete, which one to resume from, RNG states, the log.

    <output_dir>/checkpoint-N/   the model at step N + STATE_FILE + one rng_file per process, and last
                                 MANIFEST_FILE listing them all

`Trainer.save_checkpoint` writes them (into checkpoint-N.partial/, renamed once complete); resuming refuses a
checkpoint that lacks a file, and "auto" takes the newest complete one.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "checkpoint_complete.json"  # written last: the checkpoint's step, world size and files


def rng_file(rank: int) -> str:
    """The checkpoint file holding process `rank`'s RNG states."""
    return f"rng_state_rank{rank}.pt"


def checkpoint_step(path: Path) -> int | None:
    """N for a directory named checkpoint-N, else None (checkpoint-N.partial included)."""
    prefix, _, n = path.name.partition("-")
    return int(n) if prefix == "checkpoint" and n.isdigit() else None


def missing_checkpoint_files(directory: str | Path, world_size: int = 1) -> list[str]:
    """The files a checkpoint lacks ([] when complete).

    Expected are the files its manifest lists; a checkpoint written before manifests existed must hold the
    trainer state and the RNG state of each of `world_size` processes.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST_FILE
    if manifest.is_file():
        expected = json.loads(manifest.read_text())["files"]
    else:
        expected = [STATE_FILE, *(rng_file(r) for r in range(world_size))]
    return [f for f in expected if not (directory / f).is_file()]


def scan_checkpoints(output_dir: str | Path, world_size: int = 1) -> list[tuple[Path, list[str]]]:
    """(checkpoint-N directory, its missing files) for every checkpoint in output_dir, newest first."""
    found = [(n, p) for p in Path(output_dir).glob("checkpoint-*") if (n := checkpoint_step(p)) is not None]
    return [(p, missing_checkpoint_files(p, world_size)) for _, p in sorted(found, reverse=True) if p.is_dir()]


def resume_checkpoint(resume: str | None, output_dir: Path, world_size: int, warn: bool) -> Path | None:
    """The checkpoint to resume from: None for none, the newest complete one for "auto" (warning about each
    incomplete one skipped when `warn`), else the directory given, which must be complete."""
    if not resume:
        return None
    if resume == "auto":
        for path, missing in scan_checkpoints(output_dir, world_size):
            if not missing:
                return path
            if warn:
                warnings.warn(f"resume auto: skipping {path}, incomplete ({', '.join(missing)} missing)",
                              stacklevel=3)
        return None
    directory = Path(resume)
    if not (directory / MANIFEST_FILE).is_file() and not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"{directory}/{STATE_FILE} missing: resume_from must be a checkpoint-N "
            "directory written by m3embed train, or 'auto'"
        )
    missing = missing_checkpoint_files(directory, world_size)
    if missing:
        raise FileNotFoundError(
            f"{directory} is incomplete: {', '.join(missing)} missing (the run stopped while saving it); "
            "resume from an earlier checkpoint, or with 'auto' for the newest complete one"
        )
    return directory


def trim_log(path: Path, step: int) -> None:
    """Keep the lines of a train log up to `step`: a resumed run re-logs the steps after its checkpoint.

    A line cut short (the run was killed while writing it) is dropped too.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def rng_state() -> dict:
    """This process's Python, NumPy, torch (and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
