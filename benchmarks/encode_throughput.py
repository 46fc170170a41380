"""Encoding speed: m3embed (float32, bfloat16, int8) against FlagEmbedding 1.4.2 float32, same run, same checkpoint.

Checkpoints are random-weight models built offline at two shapes: "small" (6 layers, hidden 384) and "bge-m3"
(24 layers, hidden 1024, 16 heads, intermediate 4096, vocab 250002). Texts come from the shared data when present
(XQuAD questions and paragraphs), else from a built-in sample, cut to target token counts.

Two ratios per case, because FlagEmbedding runs a batch-size probe (one extra forward pass of its first batch of
up to 256 texts) before every encode call:

* per call: the whole `encode` call, probe included: what a caller sees; for calls of up to 256 texts the probe
  runs the whole job a second time;
* per forward: only the forward passes both engines run (each model's forward is wrapped and timed; the probe is
  left out): the speed of the encoder itself.

Both in CPU-seconds (`time.process_time`, robust to other jobs on a shared machine) and wall seconds. Engines run
interleaved, round after round (`--repeat`, at least 2); each round re-measures the matmul peak, and the
"% of peak" column divides forward FLOPs per CPU-second by that round's bfloat16 peak (the best of torch.matmul
and oneDNN's linear on the feed-forward shape). Peak RSS per engine comes from a fresh process that loads the
model and encodes the "call" case (its VmHWM). The load average is printed with every table.

    python benchmarks/encode_throughput.py                          # both shapes, default sizes
    python benchmarks/encode_throughput.py --shape small --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
ENGINES = ("FlagEmbedding fp32", "m3embed fp32", "m3embed bf16", "m3embed int8")
MODES = ("dense", "sparse", "colbert")


# ---- texts and FLOPs ----

def source_texts() -> list[str]:
    texts = []
    for name in ("queries.jsonl", "corpus.jsonl"):
        path = DATA / "xquad" / "en" / name
        if path.is_file():
            texts += [json.loads(line)["text"] for line in path.open()]
    return texts or sample_texts(480)


def make_texts(tokenizer, lengths: list[int], seed: int) -> list[str]:
    """One text per target token count, built by joining source texts and cutting at that count."""
    rng = np.random.default_rng(seed)
    pool = source_texts()
    pool_ids = tokenizer(pool, add_special_tokens=False)["input_ids"]
    out = []
    for tokens in lengths:
        ids: list[int] = []
        while len(ids) < tokens - 2:
            ids += pool_ids[rng.integers(len(pool))]
        out.append(tokenizer.decode(ids[: tokens - 2]))
    return out


def forward_flops(cfg, lengths: np.ndarray) -> float:
    """Matmul FLOPs of one encoder pass plus the ColBERT head over texts of these token counts (padding not counted)."""
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_token = layers * 2 * (4 * h * h + 2 * h * i) + 2 * h * h
    attention = layers * 4 * h * (lengths.astype(np.float64) ** 2).sum()
    return float(per_token * lengths.sum() + attention)


def matmul_peak() -> dict[str, float]:
    """GFLOP per CPU-second of the fastest matmul per dtype on the feed-forward shape (2048x1024 @ 1024x4096)."""
    a32, w32 = torch.randn(2048, 1024), torch.randn(4096, 1024)
    peaks = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, w = a32.to(dtype), w32.to(dtype)
        kernels: list[Callable[[], torch.Tensor]] = [lambda a=a, w=w: a @ w.T]
        if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            kernels.append(lambda a=a, w=w: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], ""))
        best = 0.0
        for kernel in kernels:
            kernel()
            for _ in range(3):
                c = time.process_time()
                for _ in range(3):
                    kernel()
                best = max(best, 3 * 2 * 2048 * 1024 * 4096 / max(time.process_time() - c, 1e-9) / 1e9)
        peaks[name] = best
    return peaks


# ---- timing ----

class ForwardTimer:
    """Wraps a module's forward method `name` ("forward", or m3embed's "infer", which `m3embed.encode` calls):
    sums wall and CPU seconds of the forward passes, the probe kept apart. `sync` runs before and after each
    pass (torch.cuda.synchronize on a GPU, where kernels run asynchronously)."""

    def __init__(self, module: torch.nn.Module, is_probe: Callable[[dict], bool], name: str = "forward",
                 sync: Callable[[], None] = lambda: None) -> None:
        self.inner, self.is_probe, self.sync = getattr(module, name), is_probe, sync
        setattr(module, name, self)  # instance attribute: found before the class's method
        self.reset()

    def reset(self) -> None:
        self.wall = self.cpu = self.probe_wall = self.probe_cpu = 0.0

    def __call__(self, *args, **kwargs):
        self.sync()
        w, c = time.perf_counter(), time.process_time()
        out = self.inner(*args, **kwargs)
        self.sync()
        w, c = time.perf_counter() - w, time.process_time() - c
        if self.is_probe(kwargs):
            self.probe_wall, self.probe_cpu = self.probe_wall + w, self.probe_cpu + c
        else:
            self.wall, self.cpu = self.wall + w, self.cpu + c
        return out


def load_engine(engine: str, ckpt: Path):
    if engine == "FlagEmbedding fp32":
        from FlagEmbedding import BGEM3FlagModel

        flag = BGEM3FlagModel(str(ckpt), use_fp16=False, devices="cpu")
        # the probe is the one forward FlagEmbedding 1.4.2 calls without truncate_dim (m3.py encode_single_device)
        return flag, ForwardTimer(flag.model, lambda kwargs: "truncate_dim" not in kwargs)
    dtype = {"m3embed fp32": "float32", "m3embed bf16": "bfloat16", "m3embed int8": "int8"}[engine]
    model = M3Model.from_pretrained(ckpt, device="cpu", dtype=dtype)
    return model, ForwardTimer(model, lambda kwargs: False, "infer")


def encode(engine: str, model, texts: list[str], max_length: int):
    if engine.startswith("FlagEmbedding"):
        return model.encode(texts, batch_size=256, max_length=max_length, return_dense=True, return_sparse=True,
                            return_colbert_vecs=True)
    return model.encode(texts, modes=MODES, max_length=max_length, progress=False)


def timed_call(engine: str, model, timer: ForwardTimer, texts: list[str], max_length: int) -> dict:
    gc.collect()
    timer.reset()
    w, c = time.perf_counter(), time.process_time()
    out = encode(engine, model, texts, max_length)
    return {"call_wall": time.perf_counter() - w, "call_cpu": time.process_time() - c, "fwd_wall": timer.wall,
            "fwd_cpu": timer.cpu, "probe_cpu": timer.probe_cpu, "out": out}


# ---- quality against m3embed float32 ----

def quality(ref, out) -> dict:
    """Min dense cosine, mean top-10 sparse id overlap, min / mean ColBERT token cosine against float32."""
    dense = float(np.einsum("ih,ih->i", ref.dense, out.dense).min())
    shares = []
    for va, vb in zip(ref.sparse_vectors(), out.sparse_vectors()):
        ta = set(va.ids[np.argsort(-va.weights)[:10]].tolist())
        tb = set(vb.ids[np.argsort(-vb.weights)[:10]].tolist())
        if ta:
            shares.append(len(ta & tb) / len(ta))
    col = np.concatenate([np.einsum("th,th->t", a, b) for a, b in zip(ref.colbert, out.colbert)])
    return {"dense cos min": round(dense, 5), "sparse top-10 overlap": round(float(np.mean(shares)), 3),
            "colbert cos min": round(float(col.min()), 4), "colbert cos mean": round(float(col.mean()), 5)}


# ---- peak RSS in a fresh process ----

def child_rss(engine: str, ckpt: Path, texts_file: Path, max_length: int) -> dict:
    """Run in a fresh process: load, encode, report the peak resident set (MB) after each step.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child of this (large) benchmark process
    would report the parent's peak; VmHWM belongs to the child's own address space.
    """

    def rss() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

    texts = json.loads(texts_file.read_text())
    model, _ = load_engine(engine, ckpt)
    loaded = rss()
    encode(engine, model, texts, max_length)
    return {"after load": round(loaded), "after load + encode": round(rss())}


def rss_in_subprocess(engine: str, ckpt: Path, texts: list[str], max_length: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
    try:
        out = subprocess.run([sys.executable, __file__, "--rss-child", engine, str(ckpt), f.name, str(max_length)],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- one shape ----

def bench_shape(shape_name: str, shape: dict, cases: dict[str, list[int]], repeat: int, engines: tuple[str, ...],
                out_rows: list[dict], ckpt: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if ckpt is None:
            t = time.perf_counter()
            ckpt = write_random_checkpoint(Path(tmp) / shape_name, arch="xlmr", **shape)
            print(f"[{shape_name}] built checkpoint in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
        models = {e: load_engine(e, ckpt) for e in engines}
        tokenizer = models["m3embed fp32"][0].tokenizer
        cfg = models["m3embed fp32"][0].backbone.config
        texts = {case: make_texts(tokenizer, lengths, seed=len(lengths)) for case, lengths in cases.items()}
        runs: dict[tuple[str, str], list[dict]] = {}
        peaks: list[dict[str, float]] = []
        for r in range(repeat):
            peaks.append(matmul_peak())
            for case, case_texts in texts.items():
                max_length = max(cases[case]) + 8
                order = engines if r % 2 == 0 else engines[::-1]  # alternate who goes first
                for engine in order:
                    model, timer = models[engine]
                    res = timed_call(engine, model, timer, case_texts, max_length)
                    res["peak"] = peaks[-1]
                    runs.setdefault((case, engine), []).append(res)
                    print(f"[{shape_name}] round {r + 1}/{repeat} {case:6s} {engine:18s} call {res['call_cpu']:7.1f} "
                          f"CPU-s  forwards {res['fwd_cpu']:7.1f} CPU-s  load {os.getloadavg()[0]:.1f}",
                          file=sys.stderr, flush=True)
        for case, case_texts in texts.items():
            lengths = np.array([len(x) for x in tokenizer(case_texts, truncation=True,
                                                          max_length=max(cases[case]) + 8)["input_ids"]])
            flops = forward_flops(cfg, lengths)
            ref = runs[(case, "m3embed fp32")][-1]["out"]
            flag = runs[(case, "FlagEmbedding fp32")]
            for engine in engines:
                rs = runs[(case, engine)]
                row = {"shape": shape_name, "case": case, "texts": len(case_texts), "tokens/text": int(lengths.mean()),
                       "engine": engine, "rounds": len(rs),
                       "call CPU-s best": round(min(x["call_cpu"] for x in rs), 2),
                       "fwd CPU-s best": round(min(x["fwd_cpu"] for x in rs), 2),
                       "probe share of Flag call CPU": round(statistics.median(
                           x["probe_cpu"] / x["call_cpu"] for x in flag), 2)}
                for kind in ("call", "fwd"):
                    for clock in ("cpu", "wall"):
                        ratios = [f[f"{kind}_{clock}"] / x[f"{kind}_{clock}"] for f, x in zip(flag, rs)]
                        row[f"x Flag {kind} {clock} median"] = round(statistics.median(ratios), 2)
                        row[f"x Flag {kind} {clock} best"] = round(
                            min(f[f"{kind}_{clock}"] for f in flag) / min(x[f"{kind}_{clock}"] for x in rs), 2)
                gflops = [flops / x["fwd_cpu"] / 1e9 for x in rs]
                row["fwd GFLOP/CPU-s median"] = round(statistics.median(gflops), 1)
                row["% of bf16 peak median"] = round(statistics.median(
                    100 * g / x["peak"]["bfloat16"] for g, x in zip(gflops, rs)), 1)
                if engine in ("m3embed bf16", "m3embed int8"):
                    row.update(quality(ref, rs[-1]["out"]))
                out_rows.append(row)
        _print_table(shape_name, out_rows, peaks)
        del models, runs
        gc.collect()
        rss_rows = []
        for engine in engines:  # the "call" case: each child pays FlagEmbedding's probe too, so keep it small
            rss = rss_in_subprocess(engine, ckpt, texts["call"], max(cases["call"]) + 8)
            rss_rows.append({"shape": shape_name, "engine": engine, "encoded": "call case", **rss})
        _print_rss(shape_name, rss_rows)
        out_rows.extend(rss_rows)


def _print_table(shape: str, rows: list[dict], peaks: list[dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    load = os.getloadavg()
    p32 = statistics.median(p["float32"] for p in peaks)
    p16 = statistics.median(p["bfloat16"] for p in peaks)
    title = (f"{shape}: encode speed vs FlagEmbedding fp32 (ratios > 1 = faster; median over interleaved rounds, "
             f"best-of in brackets)\nmatmul peak per CPU-second, median of {len(peaks)} rounds: fp32 {p32:.0f}, "
             f"bf16 {p16:.0f} GFLOP/s; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
             f"{torch.get_num_threads()} threads")
    cols = ["case", "texts", "tokens/text", "engine", "call CPU-s", "per call CPU", "per call wall",
            "per forward CPU", "per forward wall", "GFLOP/CPU-s", "% bf16 peak", "quality vs m3embed fp32"]
    table = Table(*cols, title=title)
    for r in rows:
        if r.get("shape") != shape or "case" not in r:
            continue
        q = "" if "dense cos min" not in r else (
            f"dense {r['dense cos min']:.4f} sparse {r['sparse top-10 overlap']:.2f} "
            f"colbert {r['colbert cos min']:.3f}/{r['colbert cos mean']:.4f}")
        table.add_row(r["case"], str(r["texts"]), str(r["tokens/text"]), r["engine"], str(r["call CPU-s best"]),
                      *[f"{r[f'x Flag {k} {c} median']} ({r[f'x Flag {k} {c} best']})"
                        for k in ("call", "fwd") for c in ("cpu", "wall")],
                      str(r["fwd GFLOP/CPU-s median"]), str(r["% of bf16 peak median"]), q)
    Console(width=250).print(table)
    probe = {r["case"]: r["probe share of Flag call CPU"] for r in rows if r.get("shape") == shape and "case" in r}
    print(f"FlagEmbedding's probe, share of its call CPU time: {probe}; quality: dense cos min, sparse top-10 id "
          "overlap, colbert token cos min/mean", flush=True)


def _print_rss(shape: str, rows: list[dict]) -> None:
    load = os.getloadavg()
    print(f"{shape}: peak RSS (MB, VmHWM of a fresh process per engine); load average {load[0]:.1f}")
    for r in rows:
        print(f"  {r['engine']:20s} after load {r['after load']:6d}   after load + encode ({r['encoded']}) "
              f"{r['after load + encode']:6d}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        engine, ckpt, texts_file, max_length = sys.argv[2:6]
        print(json.dumps(child_rss(engine, Path(ckpt), Path(texts_file), int(max_length))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["small", "bge-m3", "both"], default="both")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved rounds per shape (at least 2)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    ap.add_argument("--ckpt", type=Path, default=None,
                    help="a bge-m3-shape checkpoint to reuse (default: build one in a temp dir, ~1-3 min)")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    if args.repeat < 2:
        ap.error("--repeat must be at least 2: one round cannot show how noisy the machine is")
    engines = tuple(e.strip() for e in args.engines.split(","))
    for need in ("FlagEmbedding fp32", "m3embed fp32"):
        if need not in engines:
            ap.error(f"--engines must include {need!r} (the reference and the quality baseline)")

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    if args.shape in ("small", "both"):
        # "call": a small call (FlagEmbedding's probe repeats all of it); "corpus": 2,000 texts of mixed length
        cases = {"call": [40] * 128, "long": [2000] * 16, "corpus": rng.integers(20, 120, 2000).tolist()}
        bench_shape("small", SMALL_SHAPE, cases, args.repeat, engines, rows, None)
    if args.shape in ("bge-m3", "both"):
        cases = {"call": [40] * 16, "long": [2000], "corpus": rng.integers(16, 32, 512).tolist()}
        bench_shape("bge-m3", BGE_M3_SHAPE, cases, args.repeat, engines, rows, args.ckpt)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
