"""Encoding throughput: m3embed against FlagEmbedding 1.4.2 in the same run, on the same checkpoint.

Checkpoints are random-weight models built offline at two shapes: "small" (6 layers, hidden 384) and
"bge-m3" (24 layers, hidden 1024, 16 heads, intermediate 4096, vocab 250002). Texts come from the shared
data when present (XQuAD questions and paragraphs), else from a built-in sample, cut to target token counts.

For every case it prints texts/s, tokens/s, peak RSS growth, the ratio to FlagEmbedding, and achieved
GFLOP/s against a float32 / bfloat16 matmul peak measured in the same run; bf16 rows also report the
dense cosine to m3embed's float32 output and the overlap of the top-10 sparse ids.

    python benchmarks/encode_throughput.py                      # both shapes, default sizes
    python benchmarks/encode_throughput.py --shape small --short 2000 --long 64
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed

from m3embed.model import M3Model  # noqa: E402
from m3testkit.checkpoints import BGE_M3_SHAPE, sample_texts, write_random_checkpoint  # noqa: E402

SMALL_SHAPE = dict(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536, vocab_size=250002,
                   max_position_embeddings=8194)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class PeakRSS:
    """Peak resident memory growth (MB) of this process while the block runs, sampled every 10 ms."""

    def __enter__(self):
        self.base = self.peak = _rss_mb()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, _rss_mb())
        self.growth = self.peak - self.base


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def source_texts() -> list[str]:
    texts = []
    for name in ("queries.jsonl", "corpus.jsonl"):
        path = DATA / "xquad" / "en" / name
        if path.is_file():
            texts += [json.loads(line)["text"] for line in path.open()]
    return texts or sample_texts(480)


def make_texts(tokenizer, n: int, tokens: int, seed: int) -> list[str]:
    """n texts of about `tokens` tokens each, built by joining source texts and cutting at a token count."""
    rng = np.random.default_rng(seed)
    pool = source_texts()
    pool_ids = tokenizer(pool, add_special_tokens=False)["input_ids"]
    out = []
    for _ in range(n):
        ids: list[int] = []
        while len(ids) < tokens - 2:
            ids += pool_ids[rng.integers(len(pool))]
        out.append(tokenizer.decode(ids[: tokens - 2]))
    return out


def matmul_peak(dtype: torch.dtype) -> float:
    a, b = torch.randn(2048, 1024, dtype=dtype), torch.randn(1024, 4096, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * 2048 * 1024 * 4096 / (time.perf_counter() - t) / 1e9)
    return best


def forward_flops(cfg, lengths: np.ndarray, colbert: bool) -> float:
    """Matmul FLOPs of one encoder pass over texts of these token counts (no padding counted)."""
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_token = layers * 2 * (4 * h * h + 2 * h * i) + (2 * h * h if colbert else 0)
    attention = layers * 4 * h * (lengths.astype(np.float64) ** 2).sum()
    return float(per_token * lengths.sum() + attention)


def run_ours(model: M3Model, texts, modes, max_length):
    return model.encode(texts, modes=modes, max_length=max_length, progress=False)


def run_flag(flag, texts, modes, max_length):
    return flag.encode(texts, batch_size=256, max_length=max_length, return_dense="dense" in modes,
                       return_sparse="sparse" in modes, return_colbert_vecs="colbert" in modes)


def timed(fn, *args):
    gc.collect()
    with PeakRSS() as mem:
        t = time.perf_counter()
        result = fn(*args)
        seconds = time.perf_counter() - t
    return result, seconds, mem.growth


def bench_shape(shape_name: str, shape: dict, cases: list[tuple[str, int, int]], mode_sets, out_rows, peaks,
                repeat: int = 1):
    from FlagEmbedding import BGEM3FlagModel

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ckpt = write_random_checkpoint(Path(tmp) / shape_name, arch="xlmr", **shape)
        print(f"[{shape_name}] built checkpoint in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        ours32 = M3Model.from_pretrained(ckpt, device="cpu")
        ours16 = M3Model.from_pretrained(ckpt, device="cpu", dtype="bfloat16")
        flag = BGEM3FlagModel(str(ckpt), use_fp16=False, devices="cpu")
        cfg = ours32.backbone.config
        for case, n, tokens in cases:
            texts = make_texts(ours32.tokenizer, n, tokens, seed=n)
            max_length = max(512, tokens + 8)
            lengths = np.array([len(x) for x in ours32.tokenizer(texts, truncation=True,
                                                                  max_length=max_length)["input_ids"]])
            for modes in mode_sets:
                label = "+".join(modes)
                flops = forward_flops(cfg, lengths, "colbert" in modes)
                # interleave the engines and keep each one's best time: the shared machine's load drifts
                t_flag = t32 = t16 = float("inf")
                m_flag = m32 = m16 = 0.0
                for _ in range(repeat):
                    _, t, m = timed(run_flag, flag, texts, modes, max_length)
                    t_flag, m_flag = min(t_flag, t), max(m_flag, m)
                    ref32, t, m = timed(run_ours, ours32, texts, modes, max_length)
                    t32, m32 = min(t32, t), max(m32, m)
                    ref16, t, m = timed(run_ours, ours16, texts, modes, max_length)
                    t16, m16 = min(t16, t), max(m16, m)
                cos = float(np.einsum("ih,ih->i", ref32.dense, ref16.dense).min()) if ref32.dense is not None else None
                overlap = _sparse_overlap(ref32, ref16) if ref32.sparse is not None else None
                for engine, secs, mem, peak, extra in (
                    ("FlagEmbedding fp32", t_flag, m_flag, peaks["float32"], {}),
                    ("m3embed fp32", t32, m32, peaks["float32"], {}),
                    ("m3embed bf16", t16, m16, peaks["bfloat16"], {"min dense cos vs fp32": cos,
                                                                   "top-10 sparse id overlap": overlap}),
                ):
                    row = {"shape": shape_name, "case": case, "texts": n, "tokens/text": int(lengths.mean()),
                           "modes": label, "engine": engine, "seconds": round(secs, 2),
                           "texts/s": round(n / secs, 2), "tokens/s": round(lengths.sum() / secs, 1),
                           "peak RSS +MB": round(mem), "x FlagEmbedding": round(t_flag / secs, 2),
                           "GFLOP/s": round(flops / secs / 1e9, 1), "% of matmul peak": round(
                               100 * flops / secs / 1e9 / peak, 1), **extra}
                    out_rows.append(row)
                    print(json.dumps(row), flush=True)
        del ours32, ours16, flag


def _sparse_overlap(a, b) -> float:
    """Mean share of each text's top-10 sparse ids (fp32) found in the bf16 top-10."""
    shares = []
    for va, vb in zip(a.sparse_vectors(), b.sparse_vectors()):
        ta = set(va.ids[np.argsort(-va.weights)[:10]].tolist())
        tb = set(vb.ids[np.argsort(-vb.weights)[:10]].tolist())
        if ta:
            shares.append(len(ta & tb) / len(ta))
    return round(float(np.mean(shares)), 3) if shares else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["small", "bge-m3", "both"], default="both")
    ap.add_argument("--short", type=int, default=2000, help="short texts (~40 tokens), small shape")
    ap.add_argument("--long", type=int, default=64, help="long texts (~2,000 tokens), small shape")
    ap.add_argument("--m3-short", type=int, default=128, help="short texts on the bge-m3 shape")
    ap.add_argument("--m3-long", type=int, default=4, help="long texts on the bge-m3 shape")
    ap.add_argument("--repeat", type=int, default=2, help="runs per engine, interleaved; best time kept")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()

    torch.manual_seed(0)
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s, "
          f"threads {torch.get_num_threads()}", flush=True)
    rows: list[dict] = []
    both = [("dense",), ("dense", "sparse", "colbert")]
    if args.shape in ("small", "both"):
        bench_shape("small", SMALL_SHAPE, [("short", args.short, 40), ("long", args.long, 2000)], both, rows, peaks,
                    args.repeat)
    if args.shape in ("bge-m3", "both"):
        bench_shape("bge-m3", BGE_M3_SHAPE, [("short", args.m3_short, 40), ("long", args.m3_long, 2000)],
                    [("dense", "sparse", "colbert")], rows, peaks, 1)
    _print_table(rows)
    if args.out:
        args.out.write_text(json.dumps({"peaks": peaks, "rows": rows}, indent=2))


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = ["shape", "case", "modes", "engine", "texts/s", "tokens/s", "peak RSS +MB", "x FlagEmbedding",
            "GFLOP/s", "% of matmul peak", "min dense cos vs fp32", "top-10 sparse id overlap"]
    table = Table(*cols, title="encode throughput (same run, same checkpoint)")
    for r in rows:
        table.add_row(*[("" if r.get(c) is None else str(r[c])) for c in cols])
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
