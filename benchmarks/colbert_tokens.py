"""The ColBERT token store against the engine-native multivector field and the NumPy GEMM floor, in one run.

Synthetic bge-m3-shaped documents (1024-d, 40-160 ColBERT rows, ~100 lexical ids; m3testkit.synthetic), k 10,
100 dense + 100 sparse candidates. Per corpus size and storage it prints:

- ingest docs/s with the vectors given (the engine's write-ahead log and our token store both durable);
- search p50 / p99 of `all`, `colbert`, `dense+sparse` (k 10), and of one raw `dense` and one raw `sparse`
  query for the 100 candidates a hybrid search takes from each route;
- the floors: the exact MaxSim over the same `all` candidates as one GEMM + max + sum, timed alone, in
  NumPy float32 and in torch bfloat16 (the issue's definition; on every core torch uses);
- the index reopened in a fresh process: seconds to open, resident memory after open, disk.

Ratios are against the engine-native path (Qdrant Edge's multivector field, float16, the layout before the token
store) and the floor, measured in this run; the load average is printed with every figure.

    python benchmarks/colbert_tokens.py --sizes 10000 --storages binary float16 engine

`--part quality` is the study behind the default encoding: each shipped model (bfloat16; passages cut at 256
tokens, queries at the model's own length) encodes each shared set once (cached under --cache), then every
encoding (float32 = exact scoring, float16, int8, binary, binary with float16 originals rescoring the best
oversampling x 10) x pool factor 1/2 gets its own token-store index from those outputs, searched with `colbert`
and `all` (k 10, 100 + 100 candidates) and scored with pytrec_eval (nDCG@10); the ColBERT bytes per token are
the token store's allocated bytes over its tokens (its files are memory-mapped: the same bytes are what it
keeps in RAM when hot). Quality does not depend on the load, so this part may run beside other work.

    python benchmarks/colbert_tokens.py --part quality --out runs/token_quality.jsonl
    python benchmarks/colbert_tokens.py --part quality-table --out runs/token_quality.jsonl   # the tables
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed
from m3embed.index import ColbertStorage, Index  # noqa: E402
from m3embed.index.footprint import measure_ram  # noqa: E402
from m3embed.index.maxsim import ISAS, kernel_isa, limit_isa  # noqa: E402
from m3testkit import synthetic  # noqa: E402

STORAGES = {
    "binary": dict(colbert_storage=ColbertStorage("binary", originals="none", rescore=False)),
    "int8": dict(colbert_storage=ColbertStorage("int8", originals="none", rescore=False)),
    "float16": dict(colbert_storage=ColbertStorage()),  # the float16 rows (the default before binary)
    "engine": dict(colbert_store="engine"),  # Qdrant Edge's multivector field (indexes of format <= 3)
}


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def build(path: Path, storage: str, docs, batch: int) -> tuple[Index, float]:
    index = Index.create(path, fingerprint="bench", dim=docs.dense.shape[1], **STORAGES[storage])
    n = len(docs)
    took = 0.0
    for start in range(0, n, batch):
        part = docs.select(range(start, min(n, start + batch)))
        part.colbert = synthetic.colbert_of(docs, range(start, min(n, start + batch)))
        t = time.perf_counter()
        index.add_outputs([f"d{i}" for i in range(start, start + len(part))], part)
        took += time.perf_counter() - t
    t = time.perf_counter()
    index.flush()
    index.optimize()
    print(f"  optimize {time.perf_counter() - t:.1f} s ({load()})", flush=True)
    return index, n / took


def timed(fn, reps: int) -> np.ndarray:
    fn(0)
    out = []
    for i in range(reps):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return np.array(out) * 1e3


def floors(index: Index, docs, queries, reps: int) -> dict[str, np.ndarray]:
    """The exact MaxSim over each query's `all` candidates (the dense and sparse top 100), timed alone:
    - "float32": one NumPy float32 GEMM of the candidates' rows, a segment max, a sum;
    - "bf16": the issue's floor, one torch bfloat16 GEMM over the candidates padded to their longest
      (`(D @ q.T).view(c, t, n_q).amax(1).sum(1)`, padding rows zero), on every core torch uses."""
    import torch

    cases = []
    for i in range(reps):
        q = queries.select([i])
        ids = {h.id for m in ("dense", "sparse") for h in index.search(q, k=100, mode=m, with_text=False)[0]}
        rows = sorted(int(d[1:]) for d in ids)
        cols = synthetic.colbert_of(docs, rows)
        counts = np.array([len(c) for c in cols])
        padded = np.zeros((len(cols), counts.max(), cols[0].shape[1]), dtype=np.float32)
        for j, c in enumerate(cols):
            padded[j, :len(c)] = c
        qc = queries.colbert[i].astype(np.float32)
        cases.append((np.concatenate(cols).astype(np.float32), counts, qc,
                      torch.from_numpy(padded.reshape(-1, padded.shape[2])).bfloat16(), len(cols), padded.shape[1],
                      torch.from_numpy(qc).bfloat16()))

    def numpy_f32(i: int) -> None:
        d, counts, qc = cases[i % len(cases)][:3]
        sims = d @ qc.T  # (tokens, n_q)
        np.maximum.reduceat(sims, np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0).sum(1)

    def torch_bf16(i: int) -> None:
        d, c, t, qc = cases[i % len(cases)][3:]
        (d @ qc.T).view(c, t, -1).amax(1).float().sum(1)

    with torch.inference_mode():
        return {"float32": timed(numpy_f32, reps), "bf16": timed(torch_bf16, reps)}


# ---- quality ----

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository
LANGS = ("en", "de", "es", "ru", "zh", "ar")
QUALITY_SETS = {**{f"classic/{name}": "qrels.tsv" for name in ("adi", "cacm", "cranfield", "lisa", "medline", "time")},
                **{f"xquad/{lang}": "qrels.dev.tsv" for lang in LANGS},
                **{f"xquad_r/{lang}": "qrels.dev.tsv" for lang in LANGS},
                "longdoc_leval": "qrels.tsv"}
QUALITY_STORAGES = {
    "float32": ColbertStorage(dtype="float32"),
    "float16": ColbertStorage(),
    "int8": ColbertStorage("int8", originals="none", rescore=False),
    "binary": ColbertStorage("binary", originals="none", rescore=False),
    "binary+rescore": ColbertStorage("binary"),  # float16 originals on disk rescore the best oversampling x k
}


def encoded(name: str, model_name: str, model, cache: Path):
    """A shared set and its corpus and queries encoded by the model, from the cache when there."""
    import pickle

    from m3embed.evaluate import load_dataset

    dataset = load_dataset(DATA / name, qrels=QUALITY_SETS[name])
    path = cache / model_name / (name.replace("/", "_") + ".pkl")
    if path.exists():
        return (dataset, *pickle.loads(path.read_bytes()))
    modes = ("dense", "sparse", "colbert")
    docs = model.encode_corpus(dataset.doc_texts, modes=modes, max_length=256)
    queries = model.encode_queries(list(dataset.queries.values()), modes=modes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps((docs, queries)))
    return dataset, docs, queries


def part_quality(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from m3embed.evaluate import evaluate_run
    from m3embed.model import M3Model

    done = set()
    if args.out.exists():  # resumable: rows already written are kept
        done = {(r["model"], r["set"], r["encoding"], r["pool_factor"])
                for r in map(json.loads, args.out.read_text().splitlines())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for model_name in args.models:
        model = M3Model.from_pretrained(model_name, dtype="bfloat16")
        for name in args.sets:
            t = time.perf_counter()
            dataset, docs, queries = encoded(name, model_name, model, args.cache)
            print(f"{model_name} {name}: {len(docs)} docs, {len(queries)} queries ({time.perf_counter() - t:.0f} s)",
                  flush=True)
            for pool in (1, 2):
                for encoding in args.encodings:
                    if (model_name, name, encoding, pool) in done:
                        continue
                    storage = replace(QUALITY_STORAGES[encoding], pool_factor=pool)
                    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                        index = Index.create(Path(tmp) / "i", fingerprint=model.fingerprint, model_name=model_name,
                                             dim=model.hidden_size, colbert_storage=storage, store_text=False)
                        for start in range(0, len(docs), 512):
                            part = range(start, min(start + 512, len(docs)))
                            index.add_outputs([dataset.doc_ids[i] for i in part], docs.select(part))
                        index.optimize()
                        row = {"model": model_name, "set": name, "encoding": encoding, "pool_factor": pool}
                        for mode in ("colbert", "all"):
                            hits = index.run(index.prepare(k=10, mode=mode, candidates=100, with_text=False), queries)
                            run = {q: {h.id: h.score for h in found} for q, found in zip(dataset.queries, hits)}
                            row[mode] = round(evaluate_run(dataset.qrels, run)["nDCG@10"], 4)
                        info = index.info()
                        row["colbert_tokens"] = info["colbert_tokens"]
                        row["colbert_bytes_per_token"] = round(info["colbert_disk_bytes"] / info["colbert_tokens"], 1)
                        index.close()
                    print(json.dumps(row), flush=True)
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")


def quality_table(rows_path: Path) -> None:
    """Markdown tables of the quality rows: per model x encoding x pool factor, the mean nDCG@10 of colbert and all
    over the sets, the mean and worst change of `all` against exact float32 scoring (pool 1), bytes per token; then
    `all` per set for float32 and binary at pool 1."""
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    exact = {(r["model"], r["set"]): r for r in rows if r["encoding"] == "float32" and r["pool_factor"] == 1}
    print("| model | encoding | pool | sets | colbert | all | all − float32: mean | worst | best | ColBERT B/token |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in dict.fromkeys(r["model"] for r in rows):
        for encoding in QUALITY_STORAGES:
            for pool in (1, 2):
                mine = [r for r in rows if (r["model"], r["encoding"], r["pool_factor"]) == (model, encoding, pool)
                        and (model, r["set"]) in exact]
                if not mine:
                    continue
                delta = [r["all"] - exact[model, r["set"]]["all"] for r in mine]
                print(f"| {model} | {encoding} | {pool} | {len(mine)} | {np.mean([r['colbert'] for r in mine]):.4f} "
                      f"| {np.mean([r['all'] for r in mine]):.4f} | {np.mean(delta):+.4f} | {min(delta):+.4f} "
                      f"| {max(delta):+.4f} | {np.mean([r['colbert_bytes_per_token'] for r in mine]):.1f} |")
    print()
    models = list(dict.fromkeys(r["model"] for r in rows))
    print("| set | " + " | ".join(f"{m} all float32 | binary" for m in models) + " |")
    print("|---|" + "---|---|" * len(models))
    for name in QUALITY_SETS:
        cells = []
        for m in models:
            f = exact.get((m, name))
            b = next((r for r in rows if (r["model"], r["set"], r["encoding"], r["pool_factor"]) ==
                      (m, name, "binary", 1)), None)
            cells += [f"{f['all']:.4f}" if f else "", f"{b['all']:.4f}" if b else ""]
        if any(cells):
            print(f"| {name} | " + " | ".join(cells) + " |")


def plot(rows_path: Path, out: Path) -> None:
    """p50 of all / colbert / dense+sparse, and RSS after open and disk, against corpus size, per storage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for storage in sorted({r["storage"] for r in rows}):
        mine = sorted((r for r in rows if r["storage"] == storage), key=lambda r: r["docs"])
        sizes = [r["docs"] for r in mine]
        for mode, style in (("all", "-o"), ("colbert", "--s"), ("dense+sparse", ":^")):
            left.plot(sizes, [r[mode][0] for r in mine], style, label=f"{storage} {mode}")
        right.plot(sizes, [r["ram_bytes"] / 2**30 for r in mine], "-o", label=f"{storage} RSS after open")
        right.plot(sizes, [r["disk_bytes"] / 2**30 for r in mine], "--s", label=f"{storage} disk")
    for ax, label in ((left, "p50 latency, ms (k 10, 100 + 100 candidates)"), (right, "GiB")):
        ax.set_xscale("log")
        ax.set_xlabel("documents (synthetic, 1024-d, ~100 ColBERT rows each)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["speed", "quality", "quality-table"], default="speed")
    p.add_argument("--models", nargs="+", default=["minilm-m3", "e5-m3-small"])
    p.add_argument("--sets", nargs="+", default=list(QUALITY_SETS), choices=list(QUALITY_SETS))
    p.add_argument("--encodings", nargs="+", default=list(QUALITY_STORAGES), choices=list(QUALITY_STORAGES))
    p.add_argument("--cache", type=Path, default=Path("runs/token_quality_cache"))
    p.add_argument("--out", type=Path, default=Path("runs/token_quality.jsonl"))
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--storages", nargs="+", default=["binary", "float16", "engine"], choices=list(STORAGES))
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--engine-max", type=int, default=10_000, help="largest corpus the engine path is built for")
    p.add_argument("--speed-out", type=Path, default=None, help="append each size x storage row here (JSON lines)")
    p.add_argument("--plot", type=Path, default=None, help="draw the --speed-out rows against corpus size (PNG)")
    args = p.parse_args()
    args.sizes_given = args.sizes is not None
    args.sizes = args.sizes or [10_000]
    if args.part == "quality":
        return part_quality(args)
    if args.part == "quality-table":
        return quality_table(args.out)
    if args.plot and not args.sizes_given:
        return plot(args.speed_out, args.plot)
    print(f"kernel: {kernel_isa()}; {os.cpu_count()} CPUs; {load()}")
    for n in args.sizes:
        docs = synthetic.corpus(n, colbert=False, seed=0)
        queries, _ = synthetic.queries(synthetic.corpus(min(n, 2000), seed=0), args.queries, seed=1)
        work = Path(tempfile.mkdtemp(dir=args.workdir))
        base = None
        results = {}
        for storage in args.storages:
            if storage == "engine" and n > args.engine_max:
                print(f"{n} docs, engine: skipped (over --engine-max {args.engine_max}: ~180 docs/s ingest)")
                continue
            print(f"{n} docs, {storage}: building", flush=True)
            index, rate = build(work / storage, storage, docs, args.batch)
            print(f"  ingest {rate:.0f} docs/s ({load()})", flush=True)
            row = {"ingest": rate}
            # the hybrid modes at k 10; the raw routes at k 100, the candidates a hybrid search takes from each
            for mode, k in (("all", 10), ("colbert", 10), ("dense+sparse", 10), ("dense", 100), ("sparse", 100)):
                def search(i: int, mode: str = mode, k: int = k, index: Index = index, qs=queries) -> None:
                    index.search(qs.select([i % args.queries]), k=k, mode=mode, with_text=False)

                ms = timed(search, args.queries)
                row[mode] = (float(np.median(ms)), float(np.percentile(ms, 99)))
                print(f"  {mode:13s} k {k:3d} p50 {row[mode][0]:7.2f} ms  p99 {row[mode][1]:7.2f} ms ({load()})",
                      flush=True)
            if storage in ("binary", "int8"):  # `all` with each kernel level this CPU has, in the same run
                row["all_by_kernel"] = {}
                for isa in ISAS:
                    limit_isa(isa)
                    if kernel_isa() == isa:
                        ms = timed(lambda i, index=index, qs=queries: index.search(
                            qs.select([i % args.queries]), k=10, mode="all", with_text=False), args.queries)
                        row["all_by_kernel"][isa] = (float(np.median(ms)), float(np.percentile(ms, 99)))
                        print(f"  all with the {isa:11s} kernel p50 {np.median(ms):7.2f} ms ({load()})", flush=True)
                limit_isa(ISAS[-1])
            info = index.info()
            row["bytes_per_token"] = info.get("colbert_disk_bytes_per_token")
            print(f"  colbert on disk {row['bytes_per_token']} B/token, index {info['disk_bytes'] / 2**20:.0f} MiB, "
                  f"colbert {info.get('colbert_disk_bytes', 0) / 2**20:.0f} MiB", flush=True)
            if base is None:
                base = floors(index, docs, queries, args.queries)
                for name, ms in base.items():
                    print(f"  floor ({name} GEMM over the all candidates) p50 {np.median(ms):.2f} ms ({load()})")
            best = min(float(np.median(ms)) for ms in base.values())
            ds = row["dense"][0] + row["sparse"][0]
            print(f"  ratios: all / best floor {row['all'][0] / best:.2f}, dense+sparse / (dense + sparse) "
                  f"{row['dense+sparse'][0] / ds:.2f}, all p99/p50 {row['all'][1] / row['all'][0]:.2f}")
            results[storage] = row
            index.close()
            ram = measure_ram(work / storage)
            shutil.rmtree(work / storage)
            print(f"  reopened in a fresh process: open {ram['open_s']:.2f} s, RSS after open "
                  f"{ram['ram_bytes'] / 2**20:.0f} MiB (write-ahead log mapped {ram['wal_ram_bytes'] / 2**20:.0f} MiB,"
                  f" peak {ram['ram_peak_bytes'] / 2**20:.0f} MiB) ({load()})", flush=True)
            row.update(docs=n, storage=storage, kernel=kernel_isa(), load=os.getloadavg()[0],
                       disk_bytes=info["disk_bytes"], colbert_disk_bytes=info.get("colbert_disk_bytes"),
                       colbert_tokens=info.get("colbert_tokens"), **ram,
                       floors={name: float(np.median(ms)) for name, ms in base.items()})
            if args.speed_out:
                args.speed_out.parent.mkdir(parents=True, exist_ok=True)
                with args.speed_out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        if "engine" in results:
            for storage, row in results.items():
                if storage != "engine":
                    e = results["engine"]
                    print(f"{n} docs {storage} vs engine: all {e['all'][0] / row['all'][0]:.1f}x faster, "
                          f"ingest {row['ingest'] / e['ingest']:.1f}x")
    if args.plot:
        plot(args.speed_out, args.plot)


if __name__ == "__main__":
    main()
