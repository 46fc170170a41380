"""Peak memory of loading a bge-m3-shape checkpoint, per dtype, each in a fresh process.

For each engine/dtype a child process loads the checkpoint and reports `ru_maxrss` (peak resident set, MB) after
the load and after a first encode of a few short texts. A float32 load memory-maps the weights and pages them in
lazily, so its cost shows only once a forward pass has touched them: compare the "after load + encode" column.

    python benchmarks/load_memory.py                    # builds the bge-m3-shape checkpoint in a temp dir
    python benchmarks/load_memory.py --ckpt DIR --weights bin
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

ENGINES = ("m3embed float32", "m3embed bfloat16", "m3embed int8", "FlagEmbedding float32")


def child(engine: str, ckpt: str) -> dict:
    """Load and encode in this (fresh) process; report peak RSS in MB after each step."""
    from m3testkit.checkpoints import sample_texts

    def peak() -> int:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    start = peak()
    t = time.process_time()
    texts = sample_texts(16)
    if engine.startswith("FlagEmbedding"):
        from FlagEmbedding import BGEM3FlagModel

        model = BGEM3FlagModel(ckpt, use_fp16=False, devices="cpu")
        loaded, load_cpu = peak(), time.process_time() - t
        model.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    else:
        from m3embed.model import M3Model

        model = M3Model.from_pretrained(ckpt, device="cpu", dtype=engine.split()[1])
        loaded, load_cpu = peak(), time.process_time() - t
        model.encode(texts, modes=("dense", "sparse", "colbert"))
    return {"engine": engine, "python + imports": start, "after load": loaded, "after load + encode": peak(),
            "load CPU-s": round(load_cpu, 1)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=None, help="an existing checkpoint (default: build bge-m3 shape)")
    ap.add_argument("--weights", choices=["safetensors", "bin"], default="safetensors")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            from m3testkit.checkpoints import BGE_M3_SHAPE, write_random_checkpoint

            ckpt = write_random_checkpoint(Path(tmp) / "bge-m3", arch="xlmr", weights_format=args.weights,
                                           **BGE_M3_SHAPE)
        rows = []
        for engine in ENGINES:
            out = subprocess.run([sys.executable, __file__, "--child", engine, str(ckpt)], capture_output=True,
                                 text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    load = os.getloadavg()
    print(f"peak RSS in MB (ru_maxrss, fresh process each; {ckpt}); load average {load[0]:.1f} / {load[1]:.1f}")
    print(f"{'engine':24s} {'imports':>8s} {'after load':>11s} {'load + encode':>14s} {'load CPU-s':>11s}")
    for r in rows:
        print(f"{r['engine']:24s} {r['python + imports']:8d} {r['after load']:11d} {r['after load + encode']:14d} "
              f"{r['load CPU-s']:11.1f}")


if __name__ == "__main__":
    main()
