"""One 8,192-token training step and one 8,192-token encode on this CPU, with an extended position table.

`m3embed extend-positions` gives the shipped model (default minilm-m3, 512 positions) --max-length positions
(copy method); then, each in a fresh child process (peak RSS = its VmHWM): encoding one longdoc_leval document
cut at --max-length tokens, and one unified fine-tuning step (`m3embed.train`, all three modes, gradient
checkpointing) on one query with a long positive and a long negative from the same set (the train case's time
includes loading the model). --attention-dropout 0 trains with the fused attention kernel (memory linear in the
length); without it the checkpoint's dropout (0.1) sends attention down the path that materialises (T x T) maps.

    python benchmarks/long_step.py --max-length 8192 --attention-dropout 0
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

LONGDOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "longdoc_leval"


def longest_text() -> str:
    docs = [json.loads(line)["text"] for line in (LONGDOC / "corpus.jsonl").read_text().splitlines()]
    return max(docs, key=len)


def child(case: str, model: str, max_length: int, attention_dropout: float | None) -> None:
    from m3embed.index.footprint import memory_status

    text = longest_text()
    t = time.perf_counter()
    if case == "encode":
        from m3embed.model import M3Model

        m = M3Model.from_pretrained(model, device="cpu")
        loaded = time.perf_counter()
        out = m.encode_corpus([text], modes=("dense", "sparse", "colbert"), max_length=max_length)
        tokens = int(out.n_tokens[0])
    else:
        from m3embed.train.config import TrainConfig
        from m3embed.train.trainer import train

        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "pairs.jsonl"
            data.write_text(json.dumps({"query": "What is this report about?", "pos": [text],
                                        "neg": [text[len(text) // 2:]]}) + "\n")
            config = TrainConfig(model=model, train_data=[str(data)], output_dir=str(Path(tmp) / "out"),
                                 per_device_batch_size=1, train_group_size=2, passage_max_length=max_length,
                                 query_max_length=64, gradient_checkpointing=True, max_steps=1, progress=False,
                                 device="cpu", attention_dropout=attention_dropout)
            loaded = time.perf_counter()
            train(config)
        tokens = max_length
    seconds = time.perf_counter() - loaded
    peak = memory_status()["VmHWM"] / 2**30
    print(json.dumps({"case": case, "tokens": tokens, "seconds": round(seconds, 1),
                      "setup_seconds": round(loaded - t, 1), "peak_rss_gib": round(peak, 2)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-m3")
    p.add_argument("--max-length", type=int, default=8192)
    p.add_argument("--attention-dropout", type=float, default=None, help="training's attention dropout (default: "
                   "the checkpoint's)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.max_length, args.attention_dropout)
    print(f"{os.cpu_count()} CPUs, model {args.model} extended to {args.max_length}, attention dropout "
          f"{args.attention_dropout}, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        extended = Path(tmp) / "extended"
        subprocess.run([sys.executable, "-m", "m3embed", "extend-positions", args.model, str(extended),
                        "--max-length", str(args.max_length)], check=True, capture_output=True)
        for case in ("encode", "train"):
            extra = [] if args.attention_dropout is None else ["--attention-dropout", str(args.attention_dropout)]
            done = subprocess.run([sys.executable, __file__, "--max-length", str(args.max_length), *extra,
                                   "--child", case, str(extended)], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{case}: failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{case:6s}: {r['tokens']} tokens, {r['seconds']} s (after {r['setup_seconds']} s of loading), "
                  f"peak RSS {r['peak_rss_gib']} GiB (load {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
