"""Training memory and speed with and without sub-batching / gradient checkpointing, at long passages.

One training step = Q queries x G passages of `--passage-len` tokens (default 2 x 4 x 2048) through the
unified M3 loss, on the small shape (random 6-layer 384-d XLM-R, 2050 positions). Each configuration runs in
its own process so that peak memory is its own:

    full     the whole batch in one encoder pass, all activations kept
    gc       + gradient checkpointing of the encoder layers
    sub      texts encoded `--sub-batch` at a time under torch.utils.checkpoint (only outputs kept)
    sub+gc   both

Peak memory: CUDA max_memory_allocated on GPU; on CPU the process's peak RSS (ru_maxrss), reported with the
RSS before the first step so that the step's own share is visible. Steps/s: mean over the timed steps after
one warm-up step. Dropout is off, so every configuration computes the same loss (printed); the test suite
checks that the gradients agree too.

    python benchmarks/train_batching.py                        # 2 x 4 x 2048, 3 timed steps
    python benchmarks/train_batching.py --queries 1 --steps 2 --configs full,sub --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed

SMALL = {"arch": "xlmr", "num_layers": 6, "hidden_size": 384, "num_heads": 12, "intermediate_size": 1536}
CONFIGS = {
    "full": {"sub_batch_size": None, "gradient_checkpointing": False},
    "gc": {"sub_batch_size": None, "gradient_checkpointing": True},
    "sub": {"sub_batch_size": "SUB", "gradient_checkpointing": False},
    "sub+gc": {"sub_batch_size": "SUB", "gradient_checkpointing": True},
}


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_inputs(workdir: Path, passage_len: int, queries: int, group_size: int) -> tuple[Path, Path]:
    """A random small-shape checkpoint and a jsonl whose passages all exceed `passage_len` tokens."""
    import random

    from m3testkit.checkpoints import sample_texts, write_random_checkpoint

    ckpt = write_random_checkpoint(workdir / "ckpt", max_position_embeddings=passage_len + 2, seed=0, **SMALL)
    # no dropout: every configuration computes the same loss
    config = json.loads((ckpt / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))
    texts = sample_texts(480, seed=1)
    rng = random.Random(0)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)

    def long_text() -> str:  # sample sentences until the text is longer than passage_len tokens
        words: list[str] = []
        while len(tok(" ".join(words), verbose=False)["input_ids"]) <= passage_len:
            words.extend(rng.sample(texts, 20))
        return " ".join(words)

    rows = [
        {
            "query": " ".join(texts[i].split()[:8]),
            "pos": [long_text()],
            "neg": [long_text() for _ in range(group_size - 1)],
        }
        for i in range(queries)
    ]
    data = workdir / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return ckpt, data


def worker(args: argparse.Namespace) -> dict:
    """Run one configuration in this process and return its measurements."""
    import torch

    from m3embed.train.config import TrainConfig
    from m3embed.train.trainer import Trainer

    settings = dict(CONFIGS[args.worker])
    if settings["sub_batch_size"] == "SUB":
        settings["sub_batch_size"] = args.sub_batch
    config = TrainConfig(
        model=str(args.ckpt),
        train_data=[str(args.data)],
        output_dir=str(args.tmp / args.worker),
        per_device_batch_size=args.queries,
        train_group_size=args.group_size,
        query_max_length=64,
        passage_max_length=args.passage_len,
        group_by_length=False,
        max_steps=args.steps + 1,
        warmup_steps=1,
        progress=False,
        bf16=args.bf16,
        **settings,
    )
    trainer = Trainer(config)
    cuda = trainer.device.type == "cuda"
    batch = trainer.batches.batch(0, 0)
    n_tokens = int(trainer.collate(batch)["p_mask"].sum())
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mb()
    times, losses = [], []
    for _ in range(args.steps + 1):
        t0 = time.perf_counter()
        losses.append(trainer.training_step(batch)["loss"])
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "config": args.worker,
        **settings,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "passage_tokens": n_tokens,
        "memory_before_mb": round(before, 1),
        "peak_mb": round(peak / 2**20, 1),
        "step_s": [round(t, 3) for t in times],
        "steps_per_s": round(len(times[1:]) / sum(times[1:]), 4),
        "first_loss": losses[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passage-len", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=2, help="queries per step")
    parser.add_argument("--group-size", type=int, default=4, help="passages per query")
    parser.add_argument("--sub-batch", type=int, default=1, help="texts per checkpointed chunk")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--configs", default="full,gc,sub,sub+gc")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, data = write_inputs(tmp, args.passage_len, args.queries, args.group_size)
        results = []
        for name in args.configs.split(","):
            options = {
                "worker": name,
                "ckpt": ckpt,
                "data": data,
                "tmp": tmp,
                "passage-len": args.passage_len,
                "queries": args.queries,
                "group-size": args.group_size,
                "sub-batch": args.sub_batch,
                "steps": args.steps,
            }
            cmd = [sys.executable, __file__, *(x for k, v in options.items() for x in (f"--{k}", str(v)))]
            cmd += ["--bf16"] if args.bf16 else []
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                results.append({"config": name, "error": run.stderr.strip().splitlines()[-1:]})
            else:
                results.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)

    print(
        f"\n{args.queries} queries x {args.group_size} passages of {args.passage_len} tokens, small shape "
        "(6 layers, 384-d)"
    )
    print(f"{'config':8} {'peak MiB':>9} {'before MiB':>10} {'steps/s':>8}  first loss")
    for r in results:
        if "error" in r:
            print(f"{r['config']:8} failed: {r['error']}")
        else:
            print(
                f"{r['config']:8} {r['peak_mb']:9.0f} {r['memory_before_mb']:10.0f} {r['steps_per_s']:8.4f}  "
                f"{r['first_loss']:.6f}"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
