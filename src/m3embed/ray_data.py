"""Encode on a Ray cluster (optional extra `m3embed[ray]`): a callable class for `Dataset.map_batches`, and a
resumable job that writes Parquet shards (the format of `m3embed.shards`).

In a pipeline of your own:

    ds = ray.data.read_parquet("s3://bucket/docs/")
    encoded = ds.map_batches(M3Encoder, fn_constructor_kwargs={"model": "BAAI/bge-m3", "modes": ("dense", "sparse"),
                                                              "dtype": "float16"},
                             batch_size=512, batch_format="pyarrow", num_gpus=1,
                             compute=ray.data.ActorPoolStrategy(size=8))
    encoded.write_parquet("s3://bucket/encoded/")   # rows of m3embed.shards.output_schema

As a job (`m3embed encode INPUT -o OUT --ray [ADDRESS]`): `encode_job` cuts the input into parts, skips the
parts whose shard is already written, and has an actor pool encode each remaining part into one shard. A part
is written whole or not at all, so a killed actor's part is simply encoded again (Ray retries the task).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3embed import shards
from m3embed._optional import require
from m3embed._progress import Progress
from m3embed.modes import check_modes

pa = require("pyarrow", "ray")

DEFAULT_ROWS_PER_PART = 10_000  # documents per shard: the unit of resumption
DEFAULT_BATCH_SIZE = 512  # documents per encode call inside a part (and per Parquet row group)


class M3Encoder:
    """Encode batches of documents into rows of `m3embed.shards.output_schema`; the model loads once per actor.

    Args:
        model: checkpoint directory (visible on every node), shipped name or hub id.
        modes: representations to encode.
        dtype: float32, bfloat16 or float16 (GPU).
        max_length: passage truncation in tokens (default: the model's passage_max_length).
        device: "cpu", "cuda", ...; default cuda when the actor has a GPU (Ray sets CUDA_VISIBLE_DEVICES).
        batch_tokens: padded tokens per forward pass (default: from the device, see `default_batch_tokens`).
        threads: torch threads (default: Ray's OMP_NUM_THREADS for the actor, i.e. its CPUs).
        id_column, text_column: input columns; every other column is kept as JSON metadata.
    """

    def __init__(self, model: str, modes: Sequence[str] | str = ("dense",), *, dtype: str = "float32",
                 max_length: int | None = None, device: str | None = None, batch_tokens: int | None = None,
                 threads: int | None = None, id_column: str = "id", text_column: str = "text") -> None:
        import torch

        from m3embed.model import M3Model

        if threads:
            torch.set_num_threads(threads)
        self.modes = check_modes(modes)
        self.model = M3Model.from_pretrained(model, device=device, dtype=dtype, modes=self.modes)
        self.fingerprint = self.model.fingerprint
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.id_column, self.text_column = id_column, text_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        """A `batch_format="pyarrow"` batch of documents → their encoded rows, in the same order."""
        for column in (self.id_column, self.text_column):
            if column not in batch.column_names:
                raise ValueError(f"input batch has no column {column!r} (columns: {', '.join(batch.column_names)}); "
                                 "set id_column / text_column")
        others = [c for c in batch.column_names if c not in (self.id_column, self.text_column)]
        metadata = batch.select(others).to_pylist() if others else None
        return self.encode([str(i) for i in batch.column(self.id_column).to_pylist()],
                           batch.column(self.text_column).to_pylist(), metadata)

    def encode(self, ids: Sequence[str], texts: Sequence[str],
               metadata: Sequence[Mapping[str, Any]] | None = None) -> pa.Table:
        """Encode texts and return their rows (id, text, metadata, fingerprint, outputs)."""
        out = self.model.encode_corpus(list(texts), modes=self.modes, max_length=self.max_length,
                                       batch_tokens=self.batch_tokens, progress=False)
        return shards.to_table(ids, out, self.fingerprint, self.model.hidden_size, texts=texts, metadata=metadata)


class PartEncoder:
    """The job's actor: each input row names a part; read it, encode it, write its shard, report the counts."""

    def __init__(self, out: str, spec_json: str, batch_size: int, *, device: str | None = None,
                 batch_tokens: int | None = None, threads: int | None = None) -> None:
        spec = json.loads(spec_json)
        self.out = Path(out)
        self.fields = (spec["text_field"], spec["id_field"], spec["title_field"], spec.get("generate_ids", False))
        self.batch_size = batch_size
        self.encoder = M3Encoder(spec["model"], spec["modes"], dtype=spec["dtype"], max_length=spec["max_length"],
                                 device=device, batch_tokens=batch_tokens, threads=threads)
        self.schema = shards.output_schema(self.encoder.modes, self.encoder.model.hidden_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        names, counts, started, finished, cpu = [], [], [], [], []
        for text in batch["part"]:
            started.append(time.time())  # wall clock: comparable across the nodes of a cluster
            cpu0 = time.process_time()
            part = shards.Part.from_json(str(text))
            records = shards.read_part(part, *self.fields)
            writer = shards.ShardWriter(self.out, part.name)
            for i in range(0, len(records), self.batch_size):
                chunk = records[i : i + self.batch_size]
                writer.write(self.encoder.encode([r.id for r in chunk], [r.text for r in chunk],
                                                 [r.metadata for r in chunk]))
            writer.close(self.schema)
            names.append(part.name)
            counts.append(len(records))
            finished.append(time.time())
            cpu.append(time.process_time() - cpu0)
        return {"shard": names, "documents": counts, "started": started, "finished": finished, "cpu_seconds": cpu}


@dataclass
class JobResult:
    """What `encode_job` did.

    Attributes:
        written, skipped: shards written by this run, and found written by an earlier one.
        documents: documents encoded by this run.
        seconds: wall time of the run (cluster start, actors loading the model, encoding, writing).
        busy_seconds: from the first shard's start to the last shard's end (the actors were up).
        cpu_seconds: CPU time the actors spent reading, encoding and writing shards (start-up excluded).
        summary: the job's `_SUCCESS.json`.
    """

    written: int
    skipped: int
    documents: int
    seconds: float
    busy_seconds: float
    cpu_seconds: float
    summary: dict[str, Any]

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0


def connect(address: str | None = None) -> Any:
    """Join the Ray cluster at `address`, or start a local one (None) unless connected already; returns `ray`.

    Ray's own log lines (the token-auth notice, "Started a local Ray instance", its workers' output) stay off the
    user's stderr: only errors are logged. A local cluster listens on 127.0.0.1 only, so no outside address is
    looked up (Ray's "Failed to determine local IP" on a machine without a route).
    """
    import logging

    ray = require("ray", "ray")
    if not ray.is_initialized():
        local = {"_node_ip_address": "127.0.0.1"} if address is None else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 **local)
        if address is None:
            watch_driver()
    return ray


# the watchdog's code (Linux /proc): every second it records the driver's descendants (pid and start time); once
# the driver is gone it sends them SIGTERM, then SIGKILL to those left after 3 s
_WATCHDOG = r"""
import os, signal, sys, time
driver, me = int(sys.argv[1]), os.getpid()
def table():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d)] = (int(f[1]), f[19])
    return out
seen = {}
while os.path.exists(f"/proc/{driver}"):
    t = table()
    kids = {driver}
    for _ in range(8):
        kids |= {p for p, (pp, _) in t.items() if pp in kids and p != me}
    seen.update({p: t[p][1] for p in kids - {driver} if p in t})
    time.sleep(1)
for sig in (signal.SIGTERM, signal.SIGKILL):
    t = table()
    alive = [p for p, start in seen.items() if p in t and t[p][1] == start]
    for p in alive:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    if not alive:
        break
    time.sleep(3)
"""


def watch_driver() -> None:
    """Start a watchdog that stops the Ray processes this driver started (its raylet, GCS, dashboard and
    runtime-env agents, workers) when the driver dies without `ray.shutdown` (kill -9); Linux only."""
    import os
    import subprocess
    import sys

    if os.path.isdir("/proc"):
        subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid())], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def check_placement(actors: int, cpus_per_actor: float, gpus_per_actor: float) -> None:
    """Refuse at once an actor pool the cluster cannot place (Ray would wait for it forever), naming what each
    node has; the cluster's total resources are compared, not what other jobs leave free now."""
    import ray

    if actors < 1 or cpus_per_actor < 0 or gpus_per_actor < 0:
        raise ValueError(f"actors (--actors) must be >= 1 and cpus/gpus per actor (--cpus-per-actor, "
                         f"--gpus-per-actor) >= 0, got {actors}, {cpus_per_actor:g}, {gpus_per_actor:g}")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]

    def fits(have: Mapping[str, float]) -> int:
        counts = [int(have.get(k, 0.0) / need + 1e-9) for k, need in (("CPU", cpus_per_actor),
                                                                       ("GPU", gpus_per_actor)) if need > 0]
        return min(counts) if counts else actors

    placed = sum(fits(n) for n in nodes)
    if placed < actors:
        has = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes) or "no live nodes"
        raise ValueError(f"the Ray cluster cannot place {actors} actor(s) of {cpus_per_actor:g} CPU and "
                         f"{gpus_per_actor:g} GPU (--actors, --cpus-per-actor, --gpus-per-actor): its nodes have "
                         f"{has}, room for {placed}; ask for what it has (--gpus-per-actor 0 on CPU nodes, fewer "
                         "or smaller actors) or add nodes")


def encode_job(input: str | Path, out: str | Path, model: str, modes: Sequence[str] | str = ("dense",), *,
               address: str | None = None, actors: int = 1, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
               rows_per_part: int = DEFAULT_ROWS_PER_PART, batch_size: int = DEFAULT_BATCH_SIZE,
               dtype: str = "float32", max_length: int | None = None, device: str | None = None,
               batch_tokens: int | None = None, threads: int | None = None, text_field: str = "text",
               id_field: str = "id", title_field: str | None = "title", generate_ids: bool = False,
               progress: bool = False) -> JobResult:
    """Encode jsonl/parquet documents on Ray into Parquet shards in `out`; a re-run skips the shards written.

    Args:
        input: a file, a directory of *.jsonl / *.parquet, or a glob (paths visible on every node).
        out: the job directory (visible on every node): shards, `_JOB.json`, and `_SUCCESS.json` at the end.
        model, modes, dtype, max_length, device, batch_tokens, threads: see `M3Encoder`.
        address: the Ray cluster ("auto", "ray://head:10001"); None starts a local one unless connected already.
        actors: the actor pool's size; cpus_per_actor, gpus_per_actor: what each actor reserves (on a machine
            with few cores leave a CPU for reading, e.g. 2 actors at 0.5 CPU on 2 cores).
        rows_per_part: documents per shard; batch_size: documents per encode call and Parquet row group.
        text_field, id_field, title_field, generate_ids: as `m3embed.corpus.read_records`.
        progress: show shards, documents and documents/s across the cluster on stderr.
    """
    ray = require("ray", "ray")
    out = Path(out)
    if Path(model).exists():
        model = str(Path(model).resolve())  # the actors (and a later index) load it from this path
    files = shards.expand_inputs(input)
    spec = shards.JobSpec(model=model, modes=check_modes(modes), max_length=max_length, dtype=dtype,
                          inputs=[str(f) for f in files], rows_per_part=rows_per_part, text_field=text_field,
                          id_field=id_field, title_field=title_field, generate_ids=generate_ids)
    shards.open_job(out, spec)
    parts = shards.plan_parts(files, rows_per_part)
    done = shards.finished_parts(out)
    todo = [p for p in parts if p.name not in done]
    start = time.perf_counter()
    documents = 0
    first, last, cpu = float("inf"), 0.0, 0.0
    if todo:
        connect(address)
        check_placement(actors, cpus_per_actor, gpus_per_actor)
        if progress:  # ours shows documents/s; Ray's bars would draw over it
            ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"part": p.to_json()} for p in todo], override_num_blocks=len(todo))
        encoded = ds.map_batches(
            PartEncoder, batch_size=1, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"out": str(out.resolve()), "spec_json": json.dumps(spec.to_json()),
                                   "batch_size": batch_size, "device": device, "batch_tokens": batch_tokens,
                                   "threads": threads})
        rows = sum(p.rows for p in todo)
        with Progress(progress, "encoding shards", len(todo), status=f"0/{rows:,} docs") as bar:
            for row in encoded.iter_rows():
                documents += int(row["documents"])
                first, last = min(first, float(row["started"])), max(last, float(row["finished"]))
                cpu += float(row["cpu_seconds"])
                rate = documents / max(time.perf_counter() - start, 1e-9)
                bar.advance(1, status=f"{documents:,}/{rows:,} docs, {rate:,.1f} docs/s")
    summary = shards.finish_job(out, spec)
    return JobResult(len(todo), len(parts) - len(todo), documents, time.perf_counter() - start,
                     max(0.0, last - first), cpu, summary)
