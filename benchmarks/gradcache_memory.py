"""GradCache against the uncached contrastive loss: peak RSS and time of one training step, per batch size.

Each case runs in a fresh child process (peak RSS = its VmHWM): the unsupervised stage
(`m3embed.train.unsupervised`, dense only, in-batch negatives) takes one optimiser step on B (query, passage)
pairs at 128 tokens each, from the XQuAD train splits of the 6 languages (question, paragraph). GradCache
re-runs chunks of --chunk texts; "uncached" is one pass with the whole batch's graph. The model is the shipped
e5-m3-small (multilingual-e5-small: 12 layers, 384-d), float32 on the CPU.

    python benchmarks/gradcache_memory.py --cached 1024 --uncached 64 128 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

XQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "xquad"
DATA = [XQUAD / lang / "train.jsonl" for lang in ("en", "de", "es", "ru", "zh", "ar")]


def child(batch: int, chunk: int | None, model: str, data: list[Path]) -> None:
    from m3embed.index.footprint import memory_status
    from m3embed.train.config import UnsupervisedTrainConfig
    from m3embed.train.unsupervised import train_unsupervised

    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.jsonl"
        rows = [json.loads(line) for path in data for line in path.read_text().splitlines()]
        with pairs.open("w") as f:
            for r in rows[:batch]:
                f.write(json.dumps({"query": r["query"], "pos": r["pos"][:1]}) + "\n")
        config = UnsupervisedTrainConfig(model=model, train_data=[str(pairs)], output_dir=str(Path(tmp) / "out"),
                                         per_device_batch_size=batch, grad_cache_chunk_size=chunk, max_steps=1,
                                         query_max_length=128, passage_max_length=128, progress=False,
                                         warmup_steps=0, device="cpu")
        before = memory_status()["VmRSS"]
        t = time.perf_counter()
        train_unsupervised(config)
        seconds = time.perf_counter() - t
    print(json.dumps({"batch": batch, "chunk": chunk, "seconds": round(seconds, 1),
                      "peak_rss_gib": round(memory_status()["VmHWM"] / 2**30, 2),
                      "rss_before_gib": round(before / 2**30, 2)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cached", type=int, nargs="*", default=[1024], help="batch sizes (pairs) run by GradCache")
    p.add_argument("--uncached", type=int, nargs="*", default=[64, 128, 256], help="batch sizes run uncached")
    p.add_argument("--chunk", type=int, default=32, help="texts per GradCache chunk")
    p.add_argument("--model", default="e5-m3-small")
    p.add_argument("--data", type=Path, nargs="+", default=DATA)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        batch, chunk = int(args.child[0]), (None if args.child[1] == "none" else int(args.child[1]))
        return child(batch, chunk, args.model, args.data)
    print(f"{os.cpu_count()} CPUs, model {args.model}, 128 tokens a text, load {os.getloadavg()[0]:.2f}", flush=True)
    cases = [(b, args.chunk) for b in args.cached] + [(b, None) for b in args.uncached]
    for batch, chunk in cases:
        done = subprocess.run([sys.executable, __file__, "--model", args.model, "--data", *map(str, args.data),
                               "--child", str(batch), str(chunk or "none")], capture_output=True, text=True)
        line = (done.stdout.strip().splitlines() or ["{}"])[-1]
        if done.returncode != 0:
            print(f"batch {batch} chunk {chunk}: failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(line)
        kind = f"GradCache chunk {chunk}" if chunk else "uncached"
        print(f"{batch:5d} pairs, {kind:18s}: step {r['seconds']:7.1f} s, peak RSS {r['peak_rss_gib']:5.2f} GiB "
              f"(process before the step {r['rss_before_gib']:.2f} GiB) (load {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
