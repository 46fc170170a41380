"""The ColBERT token store against the engine-native multivector field and the NumPy GEMM floor, in one run.

Synthetic bge-m3-shaped documents (1024-d, 40-160 ColBERT rows, ~100 lexical ids; m3testkit.synthetic), k 10,
100 dense + 100 sparse candidates. Per corpus size and storage it prints:

- ingest docs/s with the vectors given (the engine's write-ahead log and our token store both durable);
- search p50 / p99 of `all`, `colbert`, `dense+sparse` (k 10), and of one raw `dense` and one raw `sparse`
  query for the 100 candidates a hybrid search takes from each route;
- the floor: the exact MaxSim over the same `all` candidates as one float32 NumPy GEMM + max + sum
  (`(D @ q.T).reshape(c, t, n_q).max(1).sum(1)` over the gathered rows), timed alone.

Ratios are against the engine-native path (Qdrant Edge's multivector field, float16, the layout before the token
store) and the floor, measured in this run; the load average is printed with every figure.

    python benchmarks/colbert_tokens.py --sizes 10000 --storages binary float16 engine
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed
from m3embed.index import ColbertStorage, Index  # noqa: E402
from m3embed.index.maxsim import kernel_isa  # noqa: E402
from m3testkit import synthetic  # noqa: E402

STORAGES = {
    "binary": dict(colbert_storage=ColbertStorage("binary", originals="none", rescore=False)),
    "int8": dict(colbert_storage=ColbertStorage("int8", originals="none", rescore=False)),
    "float16": dict(),
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


def floor(index: Index, docs, queries, reps: int) -> np.ndarray:
    """The exact float32 MaxSim over each query's `all` candidates (the dense and sparse top 100), alone."""
    cases = []
    for i in range(reps):
        q = queries.select([i])
        ids = {h.id for m in ("dense", "sparse") for h in index.search(q, k=100, mode=m, with_text=False)[0]}
        rows = sorted(int(d[1:]) for d in ids)
        cols = synthetic.colbert_of(docs, rows)
        counts = np.array([len(c) for c in cols])
        cases.append((np.concatenate(cols).astype(np.float32), counts, queries.colbert[i].astype(np.float32)))

    def run(i: int) -> None:
        d, counts, qc = cases[i % len(cases)]
        sims = d @ qc.T  # (tokens, n_q)
        np.maximum.reduceat(sims, np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0).sum(1)

    return timed(run, reps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    p.add_argument("--storages", nargs="+", default=["binary", "float16", "engine"], choices=list(STORAGES))
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    print(f"kernel: {kernel_isa()}; {os.cpu_count()} CPUs; {load()}")
    for n in args.sizes:
        docs = synthetic.corpus(n, colbert=False, seed=0)
        queries, _ = synthetic.queries(synthetic.corpus(min(n, 2000), seed=0), args.queries, seed=1)
        work = Path(tempfile.mkdtemp(dir=args.workdir))
        base = None
        results = {}
        for storage in args.storages:
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
            info = index.info()
            row["bytes_per_token"] = info.get("colbert_disk_bytes_per_token")
            print(f"  colbert on disk {row['bytes_per_token']} B/token, index {info['disk_bytes'] / 2**20:.0f} MiB")
            if base is None:
                base = floor(index, docs, queries, args.queries)
                print(f"  floor (float32 GEMM over the all candidates) p50 {np.median(base):.2f} ms ({load()})")
            ds = row["dense"][0] + row["sparse"][0]
            print(f"  ratios: all / floor {row['all'][0] / np.median(base):.2f}, dense+sparse / (dense + sparse) "
                  f"{row['dense+sparse'][0] / ds:.2f}, all p99/p50 {row['all'][1] / row['all'][0]:.2f}")
            results[storage] = row
            index.close()
        if "engine" in results:
            for storage, row in results.items():
                if storage != "engine":
                    e = results["engine"]
                    print(f"{n} docs {storage} vs engine: all {e['all'][0] / row['all'][0]:.1f}x faster, "
                          f"ingest {row['ingest'] / e['ingest']:.1f}x")


if __name__ == "__main__":
    main()
