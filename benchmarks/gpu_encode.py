"""GPU encoding: m3embed float16 and bfloat16 against FlagEmbedding 1.4.2 `use_fp16=True`, same card, same run.

A random-weight checkpoint of the bge-m3 shape (24 layers, hidden 1024, 16 heads, intermediate 4096, vocab
250,002, 8,194 positions) is built offline. Two cases: "short" (texts of 128 tokens) and "long" (texts of 8,192
tokens, the model's limit). Every engine encodes all three outputs (dense, sparse, ColBERT). Per engine and case:

* call tok/s: non-padding tokens over the wall time of the whole `encode` call (FlagEmbedding's batch-size probe
  included: what a caller sees);
* fwd tok/s: the same tokens over the forward passes alone (CUDA synchronised around each; the probe left out);
* peak GiB: `torch.cuda.max_memory_allocated` during the call (m3embed sizes its batches from free memory,
  `m3embed.encode.default_batch_tokens`: this is where that estimate meets a card);
* agreement with FlagEmbedding on the same texts: min dense cosine, min ColBERT token cosine, mean top-10 sparse
  id overlap.

Engines run interleaved, round after round, after one warm-up call each; the best round is reported.

    python benchmarks/gpu_encode.py --short 8192 --long 64 --out gpu_encode.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed
sys.path.insert(0, str(Path(__file__).resolve().parent))

from encode_throughput import ForwardTimer, make_texts  # noqa: E402

from m3embed.model import M3Model  # noqa: E402
from m3testkit.checkpoints import BGE_M3_SHAPE, write_random_checkpoint  # noqa: E402

ENGINES = ("FlagEmbedding fp16", "m3embed fp16", "m3embed bf16")
MODES = ("dense", "sparse", "colbert")


def load(engine: str, ckpt: Path):
    if engine.startswith("FlagEmbedding"):
        from FlagEmbedding import BGEM3FlagModel

        flag = BGEM3FlagModel(str(ckpt), use_fp16=True, devices="cuda:0")
        # FlagEmbedding 1.4.2 probes the batch size with the one forward it calls without truncate_dim
        return flag, ForwardTimer(flag.model, lambda kwargs: "truncate_dim" not in kwargs, sync=torch.cuda.synchronize)
    model = M3Model.from_pretrained(ckpt, device="cuda", dtype=torch.float16 if "fp16" in engine else torch.bfloat16)
    return model, ForwardTimer(model, lambda kwargs: False, "infer", torch.cuda.synchronize)


def encode(engine: str, model, texts: list[str], max_length: int) -> dict:
    """Dense (n, h), ColBERT (list of (t, h)) and the top-10 sparse ids of each text, as numpy."""
    if engine.startswith("FlagEmbedding"):
        out = model.encode(texts, batch_size=256, max_length=max_length, return_dense=True, return_sparse=True,
                           return_colbert_vecs=True)
        dense, colbert = np.asarray(out["dense_vecs"], np.float32), [np.asarray(c, np.float32)
                                                                     for c in out["colbert_vecs"]]
        top = [{int(k) for k, _ in sorted(w.items(), key=lambda kv: -kv[1])[:10]} for w in out["lexical_weights"]]
        return {"dense": dense, "colbert": colbert, "top": top}
    out = model.encode(texts, modes=MODES, max_length=max_length, progress=False)
    top = []
    for i in range(len(texts)):
        v = out.sparse_vector(i)
        top.append(set(v.ids[np.argsort(-v.weights)[:10]].tolist()))
    return {"dense": out.dense, "colbert": out.colbert, "top": top}


def agreement(ref: dict, out: dict) -> dict:
    dense = float(np.einsum("ih,ih->i", ref["dense"], out["dense"]).min())
    col = min(float(np.einsum("th,th->t", a, b).min()) for a, b in zip(ref["colbert"], out["colbert"]))
    top = float(np.mean([len(a & b) / max(len(a), 1) for a, b in zip(ref["top"], out["top"])]))
    return {"dense cos min": round(dense, 5), "colbert cos min": round(col, 4), "sparse top-10 overlap": round(top, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=int, default=8192, help="texts of 128 tokens")
    ap.add_argument("--long", type=int, default=64, help="texts of 8,192 tokens")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(torch.cuda.get_device_name(0), "| torch", torch.__version__, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "bge-m3-shape", **BGE_M3_SHAPE)
        tokenizer = M3Model.from_pretrained(ckpt, device="cpu", modes=("dense",)).tokenizer
        cases = {"short": (make_texts(tokenizer, [128] * args.short, 0), 128),
                 "long": (make_texts(tokenizer, [8192] * args.long, 1), 8192)}
        engines = {e: load(e, ckpt) for e in ENGINES}
        rows, ref = [], {}
        for case, (texts, max_length) in cases.items():
            tokens = int(sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]))
            for engine, (model, _) in engines.items():  # warm-up: kernels, allocator, FlagEmbedding's probe
                encode(engine, model, texts[:8], max_length)
            best: dict[str, dict] = {}
            for _ in range(args.repeat):
                for engine, (model, timer) in engines.items():
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    timer.reset()
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    out = encode(engine, model, texts, max_length)
                    call = time.perf_counter() - start
                    row = {"case": case, "engine": engine, "texts": len(texts), "tokens": tokens,
                           "call tok/s": round(tokens / call), "fwd tok/s": round(tokens / timer.wall),
                           "peak GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
                    if engine.startswith("FlagEmbedding"):
                        ref[case] = out
                    if engine not in best or row["call tok/s"] > best[engine]["call tok/s"]:
                        best[engine] = row | ({} if engine.startswith("Flag") else agreement(ref[case], out))
            flag = best[ENGINES[0]]
            for row in best.values():
                row["call x FlagEmbedding"] = round(row["call tok/s"] / flag["call tok/s"], 2)
                row["fwd x FlagEmbedding"] = round(row["fwd tok/s"] / flag["fwd tok/s"], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
