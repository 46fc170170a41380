"""Scale-out throughput on one machine: one process, the CPU EncodePool, and Ray with 1 and 2 actors, same input.

Each path encodes the same passages (about `--tokens` tokens each: MIRACL-sized, see below) into dense + sparse +
ColBERT; documents/s is measured once the model is loaded (start-up is reported apart):

* single: one process, `--threads` torch threads (default: all cores), `M3Model.encode_corpus`;
* pool: `EncodePool` with one worker per core, one thread each;
* ray-1 / ray-2: `encode_job` on a local cluster: 1 actor with the single process's threads, 2 actors with half each
  (0.5 CPU reserved each, so nothing starves), reading jsonl parts and writing Parquet shards; the rate runs from
  the first part's start to the last part's end. Ray overhead = 1 − ray-1 / single (target ≤ 15 %).

On a shared machine wall-clock rates move with other load; documents per CPU second move much less: for single
and pool the CPU of the process and its workers while encoding, for Ray the actors' CPU per part (reading the
part, encoding, writing the shard; actor start-up and Ray's own daemons not counted).

Shapes: "minilm" is the shipped `minilm-m3` (6 layers, 384-d, trained); "bge-m3" a random-weight checkpoint of
the real bge-m3 shape (24 layers, 1024-d, vocab 250002; same compute as the real model). The projection to 10M
passages uses the CPU figures measured here and, for GPUs, an assumed per-GPU rate from published numbers for a
24×1024 encoder (no GPU was measured): an estimate, printed as one.

    python benchmarks/scale_out.py --shape minilm --docs 1200
    python benchmarks/scale_out.py --shape minilm --docs 600 --threads 1   # Ray overhead at equal work, 1 thread
    python benchmarks/scale_out.py --shape bge-m3 --docs 24 --batch-tokens 1024 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed

from m3embed.model import M3Model  # noqa: E402
from m3embed.pool import EncodePool  # noqa: E402
from m3testkit import raycluster  # noqa: E402
from m3testkit.checkpoints import BGE_M3_SHAPE, sample_texts, write_random_checkpoint  # noqa: E402

MODES = ("dense", "sparse", "colbert")
# MIRACL passages are Wikipedia paragraphs: NanoMIRACL-en documents average 472 characters (hakari-bench
# leaderboard page), about 110-120 XLM-R tokens with the title; 128 is used here, 200 for a pessimistic projection.
MIRACL_TOKENS = 128
PASSAGES = 10_000_000
# Assumed GPU rate for a 24x1024 encoder (bge-m3's backbone): Infinity's L4 benchmark of bge-large measured
# ~20k tok/s with sentence-transformers fp16 and ~60k tok/s with TEI / infinity+flash-attention
# (shared/research/anchors.md §4.3). Not measured for m3embed: no GPU was available.
GPU_TOKENS_PER_S = {"L4-class, ST-like (20k tok/s)": 20_000, "L4-class, TEI-like (60k tok/s)": 60_000}


def passages(tokenizer, n: int, tokens: int) -> list[str]:
    """n texts of about `tokens` tokens: sample sentences joined, cut at a token count."""
    pool = tokenizer(sample_texts(480, seed=1), add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids: list[int] = []
        while len(ids) < tokens - 2:
            ids += pool[rng.integers(len(pool))]
        out.append(tokenizer.decode(ids[: tokens - 2]))
    return out


def cpu_seconds() -> float:
    """CPU time of this process and its descendants (the pool's workers), reaped children included."""
    total = 0.0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def best_rate(encode, n: int, rounds: int) -> tuple[float, float]:
    """(documents per wall second, per CPU second) of the fastest of `rounds` calls (the machine is shared: the
    best round is the least disturbed; CPU seconds are little affected by other load)."""
    best, cpu = float("inf"), float("inf")
    for _ in range(rounds):
        start, cpu0 = time.perf_counter(), cpu_seconds()
        encode()
        best, cpu = min(best, time.perf_counter() - start), min(cpu, cpu_seconds() - cpu0)
    return n / best, n / cpu


def bench_single(model_dir: str, texts: list[str], threads: int, rounds: int, batch_tokens: int | None) -> dict:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = M3Model.from_pretrained(model_dir, device="cpu", modes=MODES)
    load = time.perf_counter() - start
    model.encode_corpus(texts[:4], modes=MODES)  # warm-up
    rate, per_cpu = best_rate(lambda: model.encode_corpus(texts, modes=MODES, batch_tokens=batch_tokens), len(texts),
                              rounds)
    return {"start_s": load, "docs_per_s": rate, "docs_per_cpu_s": per_cpu}


def bench_pool(model_dir: str, texts: list[str], workers: int, rounds: int, batch_tokens: int | None) -> dict:
    start = time.perf_counter()
    with EncodePool(model_dir, ["cpu"] * workers, modes=MODES, threads=1) as pool:
        load = time.perf_counter() - start
        pool.encode(texts[:4], MODES)  # warm-up
        rate, per_cpu = best_rate(lambda: pool.encode(texts, MODES, batch_tokens=batch_tokens), len(texts), rounds)
        return {"start_s": load, "docs_per_s": rate, "docs_per_cpu_s": per_cpu}


def bench_ray(model_dir: str, texts: list[str], actors: int, threads: int, work: Path, rounds: int,
              batch_tokens: int | None) -> dict:
    runs = [_ray_job(model_dir, texts, actors, threads, work, batch_tokens) for _ in range(rounds)]
    return max(runs, key=lambda r: r["docs_per_s"])


def _ray_job(model_dir: str, texts: list[str], actors: int, threads: int, work: Path,
             batch_tokens: int | None) -> dict:
    from m3embed.ray_data import encode_job

    src = work / "docs.jsonl"
    if not src.exists():
        src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    out = work / f"ray-{actors}"
    shutil.rmtree(out, ignore_errors=True)
    parts = max(2 * actors, 4)
    result = encode_job(src, out, model_dir, MODES, actors=actors, cpus_per_actor=0.5, threads=threads,
                        rows_per_part=-(-len(texts) // parts), batch_size=256, batch_tokens=batch_tokens)
    # the actors' CPU reading, encoding and writing the parts (their start-up and Ray's daemons excluded)
    return {"start_s": result.seconds - result.busy_seconds, "docs_per_s": result.documents / result.busy_seconds,
            "wall_docs_per_s": result.docs_per_second, "docs_per_cpu_s": result.documents / result.cpu_seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("minilm", "bge-m3"), default="minilm")
    ap.add_argument("--docs", type=int, default=None, help="passages (default: minilm 1200, bge-m3 48)")
    ap.add_argument("--tokens", type=int, default=MIRACL_TOKENS, help="tokens per passage")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads of the single process and of the 1-actor job (the 2-actor job: half each)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per forward pass, every path "
                    "(the pool splits work at batch boundaries: a small input needs several batches)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per path; the fastest is reported")
    ap.add_argument("--skip", default="", help="comma-separated paths to skip: single,pool,ray-1,ray-2")
    args = ap.parse_args()
    n = args.docs or (1200 if args.shape == "minilm" else 48)
    cores = os.cpu_count() or 1
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="m3embed-scale-") as tmp:
        work = Path(tmp)
        if args.shape == "minilm":
            model_dir = "minilm-m3"
        else:
            model_dir = str(write_random_checkpoint(work / "bge-m3", arch="xlmr", seed=0, **BGE_M3_SHAPE))
        from transformers import AutoTokenizer

        from m3embed.sources import resolve

        texts = passages(AutoTokenizer.from_pretrained(resolve(model_dir)), n, args.tokens)
        load = os.getloadavg()
        rows: dict[str, dict] = {}
        if "single" not in skip:
            rows["single"] = bench_single(model_dir, texts, args.threads, args.rounds, args.batch_tokens)
        if "pool" not in skip:
            rows["pool"] = bench_pool(model_dir, texts, cores, args.rounds, args.batch_tokens)
        if not {"ray-1", "ray-2"} <= skip:
            raycluster.start(num_cpus=cores)
            for actors in (1, 2):
                if f"ray-{actors}" not in skip:
                    rows[f"ray-{actors}"] = bench_ray(model_dir, texts, actors, max(1, args.threads // actors),
                                                      work, args.rounds, args.batch_tokens)
        load = (load, os.getloadavg())
    print(f"\nshape {args.shape}, {n} passages x {args.tokens} tokens, modes {'+'.join(MODES)}, {cores} CPUs, "
          f"{args.threads} thread(s) single / ray-1, batch_tokens {args.batch_tokens or 'default'}, "
          f"torch {torch.__version__}, best of {args.rounds} rounds, 1-min load average {load[0][0]:.2f} before / "
          f"{load[1][0]:.2f} after")
    print(f"{'path':<8} {'docs/s':>8} {'tok/s':>8} {'vs single':>9} {'docs/CPU-s':>10} {'vs single':>9} "
          f"{'start s':>8}")
    base = rows.get("single", {})
    for name, r in rows.items():
        ratio = f"{r['docs_per_s'] / base['docs_per_s']:.2f}x" if base else "-"
        cpu_ratio = f"{r['docs_per_cpu_s'] / base['docs_per_cpu_s']:.2f}x" if base else "-"
        rate = r["docs_per_s"]
        print(f"{name:<8} {rate:>8.1f} {rate * args.tokens:>8.0f} {ratio:>9} {r['docs_per_cpu_s']:>10.2f} "
              f"{cpu_ratio:>9} {r['start_s']:>8.1f}")
    if base and "ray-1" in rows:
        print(f"Ray overhead at 1 actor vs single process (target <= 15 %; positive = slower): wall "
              f"{1 - rows['ray-1']['docs_per_s'] / base['docs_per_s']:+.1%}, CPU per document "
              f"{base['docs_per_cpu_s'] / rows['ray-1']['docs_per_cpu_s'] - 1:+.1%} (the actor's CPU per part: "
              "read, encode, write)")
    for name in ("ray-1", "ray-2"):
        if name in rows:
            print(f"{name}: {rows[name]['wall_docs_per_s']:.1f} docs/s over the whole job, start-up included")
    best = max(r["docs_per_s"] for r in rows.values())
    print(f"\nProjection (an estimate, not a measurement) for {PASSAGES:,} passages, linear scaling assumed:")
    for tokens in (MIRACL_TOKENS, 200):
        total = PASSAGES * tokens
        cpu_hours = PASSAGES / (best * args.tokens / tokens) / 3600  # docs/s falls as passages grow
        print(f"  at {tokens} tokens/passage: this {cores}-CPU machine (measured {best:.1f} docs/s at {args.tokens} "
              f"tokens): {cpu_hours:,.0f} h")
        if args.shape == "bge-m3":
            for label, rate in GPU_TOKENS_PER_S.items():
                per_gpu = total / rate / 3600
                print(f"    {label}, assumed: 1 GPU {per_gpu:.1f} h, 8 GPUs {per_gpu / 8:.1f} h, "
                      f"32 GPUs {per_gpu / 32:.2f} h")


if __name__ == "__main__":
    main()
