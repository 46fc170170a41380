"""Encoding on a real local Ray cluster: shards equal one process's encode, a re-run resumes, a killed actor's
part is encoded again and every id is written exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from m3embed import shards
from m3embed.corpus import read_records
from m3embed.model import M3Model
from m3embed.ray_data import M3Encoder, encode_job
from m3embed.types import M3Output
from m3testkit import raycluster
from m3testkit.checkpoints import sample_texts
from tests.index.test_cli_index import m3embed

pytest.importorskip("ray")

MODES = ("dense", "sparse", "colbert")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local cluster for the session: 2 CPUs on 127.0.0.1, no dashboard."""
    ray = raycluster.start(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model(xlmr_ckpt: Path) -> M3Model:
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu")


def write_inputs(directory: Path, n_jsonl: int, n_parquet: int) -> Path:
    """A jsonl file (titles, metadata, a blank line) and a parquet file of several row groups."""
    directory.mkdir()
    texts = sample_texts(n_jsonl + n_parquet, seed=2)
    with (directory / "a.jsonl").open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts[:n_jsonl]):
            f.write(json.dumps({"id": f"a{i}", "text": text, "title": "Title" if i % 4 == 0 else "", "n": i},
                               ensure_ascii=False) + ("\n\n" if i == 5 else "\n"))
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(n_parquet)], "text": texts[n_jsonl:]}),
                   directory / "b.parquet", row_group_size=7)
    return directory


def read_shards(files: list[Path], vocab: int) -> tuple[list[str], M3Output, list[shards.EncodedRows]]:
    rows = [shards.from_table(pq.read_table(f), vocab) for f in files]
    return [i for r in rows for i in r.ids], M3Output.concat([r.outputs for r in rows]), rows


# The comparison at 1e-6 needs the same arithmetic on both sides: texts encoded one per forward pass
# (batch_tokens=1) and one torch thread (an actor at 0.5 CPU has OMP_NUM_THREADS=1). Sparse weights of this random
# checkpoint reach ~2.5 and move by up to ~2e-6 between batch compositions or thread counts (float32 steps there
# are 2.4e-7), in one process as much as across processes.
ALONE = 1


def reference(model: M3Model, texts: list[str]) -> M3Output:
    """What one process returns, computed as an actor does (one text per pass, one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return model.encode_corpus(texts, modes=MODES, batch_tokens=ALONE)
    finally:
        torch.set_num_threads(threads)


def assert_equal_outputs(got: M3Output, want: M3Output) -> None:
    """Every value within 1e-6; the same sparse keys."""
    assert np.abs(got.dense - want.dense).max() <= 1e-6
    assert np.array_equal(got.sparse.indptr, want.sparse.indptr)
    assert np.array_equal(got.sparse.indices, want.sparse.indices)
    assert np.abs(got.sparse.data - want.sparse.data).max() <= 1e-6
    assert all(np.abs(a - b).max() <= 1e-6 for a, b in zip(got.colbert, want.colbert))
    assert np.array_equal(got.n_tokens, want.n_tokens)


def test_job_with_two_actors_equals_one_process_and_resumes(ray_cluster, tmp_path: Path, model: M3Model,
                                                             xlmr_ckpt: Path) -> None:
    inputs = write_inputs(tmp_path / "in", 70, 40)
    out = tmp_path / "out"
    result = encode_job(inputs, out, str(xlmr_ckpt), MODES, actors=2, cpus_per_actor=0.5, rows_per_part=25,
                        batch_size=16, batch_tokens=ALONE)
    records = [r for f in shards.expand_inputs(inputs) for r in read_records(f)]
    assert (result.written, result.skipped, result.documents) == (5, 0, 110)  # jsonl 3 parts, parquet 2
    summary = json.loads((out / shards.SUCCESS_FILE).read_text())
    assert summary["fingerprint"] == model.fingerprint and summary["documents"] == 110
    assert summary["modes"] == list(MODES) and summary["dim"] == model.hidden_size
    ids, got, rows = read_shards(shards.open_encoded(out).files, model.vocab_size)
    assert ids == [r.id for r in records]  # input order: shards sort by file, then part
    assert [t for r in rows for t in r.texts] == [r.text for r in records]
    assert [m for r in rows for m in r.metadata] == [r.metadata for r in records]
    assert_equal_outputs(got, reference(model, [r.text for r in records]))

    again = encode_job(inputs, out, str(xlmr_ckpt), MODES, actors=2, cpus_per_actor=0.5, rows_per_part=25)
    assert (again.written, again.skipped, again.summary["documents"]) == (0, 5, 110)
    with pytest.raises(ValueError, match="another encode job"):
        encode_job(inputs, out, str(xlmr_ckpt), ("dense",), rows_per_part=25)


def test_encoder_class_in_a_pipeline_with_one_actor(ray_cluster, tmp_path: Path, model: M3Model,
                                                      xlmr_ckpt: Path) -> None:
    ray = ray_cluster
    path = write_inputs(tmp_path / "in", 40, 1) / "a.jsonl"
    encoded = ray.data.read_json(str(path)).map_batches(
        M3Encoder, fn_constructor_kwargs={"model": str(xlmr_ckpt), "modes": MODES, "batch_tokens": ALONE},
        batch_size=16,
        batch_format="pyarrow", num_cpus=0.5, compute=ray.data.ActorPoolStrategy(size=1))
    table = pa.concat_tables(ray.get(encoded.to_arrow_refs()))
    rows = shards.from_table(table, model.vocab_size)
    records = list(read_records(path, title_field=None))
    by_id = {i: k for k, i in enumerate(rows.ids)}
    assert sorted(by_id) == sorted(r.id for r in records)
    order = [by_id[r.id] for r in records]
    assert_equal_outputs(rows.outputs.select(order), reference(model, [r.text for r in records]))
    assert rows.metadata[by_id["a1"]] == {"title": "", "n": 1}


def _part_encoder_pids() -> list[int]:
    """The job's actor processes: descendants of this test process (its cluster), named after the actor class."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any("PartEncoder" in part for part in proc.cmdline()):
                found.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_killed_actor_is_retried_and_every_id_is_written_once(ray_cluster, tmp_path: Path,
                                                                 xlmr_ckpt: Path) -> None:
    inputs = write_inputs(tmp_path / "in", 240, 1)
    out = tmp_path / "out"
    job: dict = {}
    thread = threading.Thread(target=lambda: job.update(result=encode_job(
        inputs, out, str(xlmr_ckpt), ("dense", "sparse"), actors=1, cpus_per_actor=0.5, rows_per_part=3)))
    thread.start()
    deadline = time.monotonic() + 120
    while not shards.finished_parts(out) and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = _part_encoder_pids()
    assert pids, "no PartEncoder actor process found"
    os.kill(pids[0], signal.SIGKILL)
    killed_at = len(shards.finished_parts(out))
    thread.join(timeout=300)
    assert not thread.is_alive() and "result" in job
    assert killed_at < 81, "the job finished before the actor was killed"
    assert _part_encoder_pids() != pids  # Ray started the actor again
    ids, _, _ = read_shards(shards.open_encoded(out).files, 1)
    expected = [r.id for f in shards.expand_inputs(inputs) for r in read_records(f)]
    assert len(ids) == len(set(ids)) == 241 and ids == expected


@pytest.mark.slow
def test_cli_encodes_on_the_running_cluster_then_builds_an_index(ray_cluster, tmp_path: Path,
                                                                   xlmr_ckpt: Path) -> None:
    inputs = write_inputs(tmp_path / "in", 30, 12)
    out, idx = tmp_path / "out", tmp_path / "idx"
    address = ray_cluster.get_runtime_context().gcs_address
    run = m3embed("encode", inputs / "*.*", "-o", out, "--model", xlmr_ckpt, "--modes", "dense,sparse", "--ray",
                  "--ray-address", address, "--cpus-per-actor", "0.5", "--rows-per-shard", "20")
    assert run.returncode == 0, run.stderr
    assert "3 shards written (42 documents" in run.stderr and "0 already there; 42 documents in all" in run.stderr
    run = m3embed("index", "build", idx, "--encoded", out)
    assert run.returncode == 0 and "42 loaded, 0 already stored; 42 documents" in run.stderr, run.stderr
    run = m3embed("search", idx, "Title", "-k", "2", "--json")
    assert run.returncode == 0 and len(run.stdout.splitlines()) == 2, run.stderr


def test_an_actor_pool_the_cluster_cannot_place_is_refused_at_once(ray_cluster, tmp_path: Path,
                                                                    xlmr_ckpt: Path) -> None:
    """`--gpus-per-actor 1` on a cluster without GPUs used to wait forever (Ray's "the job may hang forever")."""
    inputs = write_inputs(tmp_path / "in", 6, 0)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"cannot place 1 actor\(s\) of 1 CPU and 1 GPU \(--actors, --cpus-per-actor, "
                       r"--gpus-per-actor\): its nodes have 2 CPU, 0 GPU, room for 0; .*--gpus-per-actor 0"):
        encode_job(inputs, tmp_path / "out", str(xlmr_ckpt), ("dense",), gpus_per_actor=1)
    with pytest.raises(ValueError, match=r"cannot place 5 actor\(s\) of 0.5 CPU and 0 GPU .* room for 4"):
        encode_job(inputs, tmp_path / "out", str(xlmr_ckpt), ("dense",), actors=5, cpus_per_actor=0.5)
    assert time.monotonic() - started < 30
    address = ray_cluster.get_runtime_context().gcs_address
    run = m3embed("encode", inputs / "a.jsonl", "-o", tmp_path / "out2", "--model", xlmr_ckpt, "--ray",
                  "--ray-address", address, "--gpus-per-actor", "1", timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: the Ray cluster cannot place"), run.stderr


def test_the_ray_processes_a_killed_driver_started_are_stopped(tmp_path: Path) -> None:
    """After kill -9 of a driver that started a local cluster, its raylet, GCS and agents used to keep running.
    A driver prints its Ray descendants; once it is killed, the watchdog stops every one of them."""
    code = (
        "import os, time\n"
        "from m3embed.ray_data import connect\n"
        "ray = connect()\n"
        "print(ray.cluster_resources()['CPU'], flush=True)\n"
        "time.sleep(600)\n")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert float(driver.stdout.readline() or 0) >= 1, driver.stderr.read() if driver.poll() is not None else ""
        time.sleep(3)  # the watchdog records the descendants once a second
        kids = descendants(driver.pid)
        assert any("raylet" in cmd for cmd in kids.values()), kids
    finally:
        driver.kill()
        driver.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in kids):
        time.sleep(0.5)
    left = {p: cmd for p, cmd in kids.items() if alive(p)}
    assert not left, left
    assert driver.stderr.read() == ""  # no Ray log lines on the user's stderr


def descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every descendant of `pid` (Linux /proc)."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parents[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, todo = set(), {pid}
    while todo:
        todo = {p for p, pp in parents.items() if pp in todo} - found
        found |= todo
    return {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for p in found if alive(p)}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
