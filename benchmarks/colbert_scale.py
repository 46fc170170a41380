"""ColBERT at scale (issue 10, the study's Scale part): `all` latency, resident memory and disk against corpus size.

One index is grown 10k -> 30k -> 100k ... synthetic bge-m3 documents (`m3testkit.synthetic`: 1024-d, 40-160
ColBERT rows per document) and optimized at each size. Each size is measured in a fresh child process that opens
the index and runs the queries (its VmRSS before and after opening and after the queries, its VmHWM, and the
resident share of the ColBERT files and of the write-ahead log from /proc/self/smaps), so the parent's corpus
arrays do not count. Disk is the index directory's allocated bytes; the peak during `optimize` (which writes the
optimized copies before dropping the old segments) is polled. A size whose projected disk use (measured bytes per
document x (size + the documents added since the last size, which optimize copies)) exceeds --max-disk-gb is
skipped and reported as not reached; a watchdog stops the run if the work directory grows past the budget.

Run alone, or as `benchmarks/colbert_storage.py --part scale` (the same arguments):

    python benchmarks/colbert_scale.py --storages float16 binary-disk --sizes 10000 30000 60000 \
        --plot docs/colbert_scale.png --out scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed

from m3embed.index import Index
from m3embed.types import M3Output
from m3testkit import synthetic

SCALE_STORAGES = ("float16", "binary-disk", "binary-ram", "int8-disk")


def scale_storage(name: str) -> dict:
    """`Index.create` options for a storage name; the quantized ones need `ColbertStorage` (index manifest)."""
    if name == "float16":
        return {}
    try:
        from m3embed.index.manifest import ColbertStorage
    except ImportError:
        raise SystemExit(f"--storage {name} needs ColbertStorage (the colbert storage options); this checkout "
                         "has only float16") from None
    quantization, originals = name.split("-")
    return {"colbert_storage": ColbertStorage(quantization=quantization, originals=originals)}


def allocated_bytes(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _proc_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024


def mapped_rss(root: Path) -> dict[str, int]:
    """Resident bytes of this process's file mappings under `root`, by part of the index (/proc/self/smaps):
    the write-ahead log, each vector storage, the rest of the index files."""
    parts: dict[str, int] = {}
    where = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
                path = head[5] if len(head) >= 6 else ""
                where = None
                if path.startswith(str(root)):
                    rel = path[len(str(root)):]
                    where = ("wal" if "/wal/" in rel else
                             next((seg for seg in rel.split("/") if seg.startswith("vector_storage-")), "other index"))
                    if where == "vector_storage-colbert":  # the quantized copy apart from the originals
                        where += " quantized" if rel.rsplit("/", 1)[-1].startswith("quantized") else " originals"
            elif where is not None and head and head[0] == "Rss:":
                parts[where] = parts.get(where, 0) + int(head[1]) * 1024
    return parts


def _malloc_trim() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def scale_child(args: argparse.Namespace) -> None:
    """In a fresh process: open the index, time `all` (and `dense+sparse`) queries, report memory as JSON."""
    queries, _ = M3Output.load(args.child_queries)
    rss_before = _proc_kb("VmRSS")  # the interpreter, NumPy, the engine's library: not the index
    t = time.perf_counter()
    index = Index.open(args.child_index)
    open_s = time.perf_counter() - t
    rss_open = _proc_kb("VmRSS")
    out: dict = {"open_s": open_s, "rss_before": rss_before, "rss_open": rss_open, "count": index.count()}
    n = len(queries)
    for mode in ("all", "dense+sparse"):
        for i in range(min(5, n)):  # warm up
            index.search(queries.select([i]), k=10, mode=mode, with_text=False)
        times = []
        for i in range(n):
            one = queries.select([i])
            t = time.perf_counter()
            index.search(one, k=10, mode=mode, with_text=False)
            times.append(time.perf_counter() - t)
        ms = np.array(times) * 1e3
        out[mode] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "queries": n}
    out["rss_after"] = _proc_kb("VmRSS")
    out["mapped"] = mapped_rss(Path(args.child_index).resolve())
    out["hwm"] = _proc_kb("VmHWM")
    # opening replays the write-ahead log into heap memory the allocator keeps: hand it back, then read what stays
    _malloc_trim()
    out["rss_trimmed"] = _proc_kb("VmRSS")
    out["anon_trimmed"] = _proc_kb("RssAnon")
    out["file_trimmed"] = _proc_kb("RssFile")
    out["load"] = os.getloadavg()[0]
    index.close()
    print("RESULT " + json.dumps(out), flush=True)


def _measure(directory: Path, queries: M3Output, workdir: Path) -> dict:
    qdir = workdir / "queries"
    shutil.rmtree(qdir, ignore_errors=True)
    queries.save(qdir)
    cmd = [sys.executable, __file__, "--child-index", str(directory), "--child-queries", str(qdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"the measuring child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def _watch_disk(workdir: Path, limit: float, stop: threading.Event) -> None:
    """Past `limit` bytes under workdir, remove it and end the process (a size too large for the budget)."""
    while not stop.wait(2.0):
        try:
            used = allocated_bytes(workdir)
        except FileNotFoundError:
            continue
        if used > limit:
            print(f"disk budget exceeded ({used / 1e9:.1f} GB > {limit / 1e9:.0f} GB): stopping", flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
            os._exit(3)


def _optimize_with_peak(index: Index, directory: Path) -> tuple[float, int]:
    """Run optimize while polling the directory's allocated bytes; (seconds, peak bytes)."""
    peak = [allocated_bytes(directory)]
    done = threading.Event()

    def poll() -> None:
        while not done.wait(1.0):
            try:
                peak[0] = max(peak[0], allocated_bytes(directory))
            except FileNotFoundError:  # a segment vanished mid-walk
                pass

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    t = time.perf_counter()
    try:
        index.optimize()
    finally:
        done.set()
        thread.join()
    return time.perf_counter() - t, max(peak[0], allocated_bytes(directory))


def grow(args: argparse.Namespace) -> list[dict]:
    """Grow one index with storage `args.storage` through `args.sizes`; a result row per size."""
    sizes = sorted(args.sizes)
    workdir = Path(tempfile.mkdtemp(prefix="m3scale-", dir=args.tmp))
    directory = workdir / "index"
    print(f"{os.cpu_count()} CPUs; storage {args.storage}; index in {directory}; disk budget {args.max_disk_gb} GB",
          flush=True)
    docs = synthetic.corpus(sizes[-1], colbert=False, seed=0)  # dense + sparse of the largest size (ColBERT on demand)
    rows_per_doc = docs.n_tokens - 1
    results: list[dict] = []
    stop = threading.Event()
    threading.Thread(target=_watch_disk, args=(workdir, args.max_disk_gb * 1e9, stop), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    try:
        index = Index.create(directory, fingerprint="synthetic-bge-m3", dim=1024, **scale_storage(args.storage))
        have = 0
        for n in sizes:
            if have:
                per_doc = results[-1]["disk_bytes"] / have
                need = per_doc * n + per_doc * (n - have) * args.copy_factor  # + what optimize copies
                if need > args.max_disk_gb * 1e9 or need > shutil.disk_usage(workdir).free * 0.9:
                    print(f"{n:,}: not reached: needs ~{need / 1e9:.0f} GB of disk at {per_doc / 1e3:.0f} kB/document "
                          f"(budget {args.max_disk_gb} GB)", flush=True)
                    results.append({"docs": n, "storage": args.storage,
                                    "skipped": f"needs ~{need / 1e9:.0f} GB of disk"})
                    break
            spent = 0.0  # writing only: making the synthetic rows is not timed
            flushed = have
            for start in range(have, n, args.batch):
                part = np.arange(start, min(n, start + args.batch))
                out = docs.select(part)
                out.colbert = synthetic.colbert_of(docs, part, 0)
                t = time.perf_counter()
                index.add_outputs([f"d{j}" for j in part], out)
                if part[-1] + 1 - flushed >= args.flush_docs:  # keeps the write-ahead log short
                    index.flush()
                    flushed = part[-1] + 1
                spent += time.perf_counter() - t
            t = time.perf_counter()
            index.flush()
            ingest = (n - have) / (spent + time.perf_counter() - t)
            have = n
            build_s, peak = _optimize_with_peak(index, directory)
            index.close()
            queries, _ = synthetic.queries(docs.select(np.arange(n)), args.scale_queries, seed=1)
            disk = allocated_bytes(directory)
            child = _measure(directory, queries, workdir)
            tokens = int(rows_per_doc[:n].sum())
            row = {"docs": n, "tokens": tokens, "storage": args.storage, "ingest_docs_s": ingest,
                   "optimize_s": build_s, "disk_bytes": disk, "disk_peak_bytes": peak, **child}
            results.append(row)
            # after every size: a run stopped later keeps what it measured
            (workdir.parent / f"m3scale-{args.storage}.partial.json").write_text(json.dumps(results, indent=1))
            print(f"{n:,} docs ({tokens:,} tokens): all p50 {child['all']['p50_ms']:.1f} ms p99 "
                  f"{child['all']['p99_ms']:.1f} ms; dense+sparse p50 {child['dense+sparse']['p50_ms']:.1f} ms; "
                  f"RSS {child['rss_after'] / 2**30:.2f} GiB (peak {child['hwm'] / 2**30:.2f}); disk "
                  f"{disk / 2**30:.2f} GiB (peak {peak / 2**30:.2f} while optimizing); ingest {ingest:,.0f} docs/s, "
                  f"optimize {build_s:.0f} s (load {child['load']:.1f})", flush=True)
            if n != sizes[-1]:
                index = Index.open(directory)
    finally:
        stop.set()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def scale_model(results: list[dict]) -> dict:
    """Least-squares lines through the measured sizes: bytes per document (RAM, disk) and ms per 100k documents,
    extrapolated to 10M documents."""
    done = [r for r in results if "skipped" not in r]
    if len(done) < 2:
        return {}
    n = np.array([r["docs"] for r in done], dtype=np.float64)
    fit = {}
    trimmed = all("rss_trimmed" in r for r in done)
    ram = [(r["rss_trimmed"] if trimmed else r["rss_after"]) - r["rss_before"] for r in done]  # one kind only
    for key, values in ((f"index RSS{'' if trimmed else ' (untrimmed)'}", ram),
                        ("disk_bytes", [r["disk_bytes"] for r in done]),
                        ("all_p50_ms", [r["all"]["p50_ms"] for r in done]),
                        ("dense+sparse_p50_ms", [r["dense+sparse"]["p50_ms"] for r in done])):
        slope, intercept = np.polyfit(n, np.array(values, dtype=np.float64), 1)
        fit[key] = {"per_doc": float(slope), "fixed": float(intercept), "at_10M": float(intercept + slope * 1e7)}
    return fit


def _index_ram(r: dict) -> int:
    """The index's resident bytes: after malloc_trim where measured, less the process before opening."""
    return r.get("rss_trimmed", r["rss_after"]) - r["rss_before"]


def _trimmed(r: dict) -> str:
    if "rss_trimmed" not in r:
        return "—"
    return f"{r['rss_trimmed'] / 2**30:.2f} ({r['anon_trimmed'] / 2**30:.2f} + {r['file_trimmed'] / 2**30:.2f})"


def _colbert_mapped(r: dict) -> str:
    """Resident ColBERT files: all of them, and (newer runs) the quantized copy and the originals apart."""
    m = r.get("mapped", {})
    if "vector_storage-colbert" in m:
        return _mapped(r, "vector_storage-colbert")
    q, o = m.get("vector_storage-colbert quantized", 0), m.get("vector_storage-colbert originals", 0)
    return f"{(q + o) / 2**30:.2f} (quantized {q / 2**30:.2f}, originals {o / 2**30:.2f})"


def _mapped(r: dict, part: str) -> str:
    return "—" if "mapped" not in r else f"{r['mapped'].get(part, 0) / 2**30:.2f}"


def scale_report(results: list[dict], model: dict) -> str:
    head = ("docs", "ColBERT tokens", "storage", "`all` p50 ms", "`all` p99 ms", "`dense+sparse` p50 ms",
            "RSS after open GiB", "RSS after queries GiB", "of it ColBERT files GiB", "of it WAL GiB",
            "RSS trimmed GiB (anon + files)", "peak RSS GiB",
            "disk GiB",
            "peak disk while optimizing GiB", "index RAM B/token", "disk B/token", "ingest docs/s", "optimize s",
            "load")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['docs']:,} | not reached: {r['skipped']} |" + " |" * (len(head) - 2))
            continue
        lines.append(
            f"| {r['docs']:,} | {r['tokens']:,} | {r['storage']} | {r['all']['p50_ms']:.1f} | {r['all']['p99_ms']:.1f} "
            f"| {r['dense+sparse']['p50_ms']:.1f} | {r['rss_open'] / 2**30:.2f} | {r['rss_after'] / 2**30:.2f} | "
            f"{_colbert_mapped(r)} | {_mapped(r, 'wal')} | {_trimmed(r)} | "
            f"{r['hwm'] / 2**30:.2f} | {r['disk_bytes'] / 2**30:.2f} | {r['disk_peak_bytes'] / 2**30:.2f} | "
            f"{_index_ram(r) / r['tokens']:.0f}{'' if 'rss_trimmed' in r else ' (untrimmed)'} | "
            f"{r['disk_bytes'] / r['tokens']:.0f} | "
            f"{r['ingest_docs_s']:,.0f} | "
            f"{r['optimize_s']:.0f} | {r['load']:.1f} |")
    if model:
        lines += ["", "| quantity | per document | fixed | at 10M documents (extrapolated) |", "|---|---|---|---|"]
        for key, m in model.items():
            if key.endswith("_ms"):
                lines.append(f"| {key} | {m['per_doc'] * 1e5:.2f} ms per 100k | {m['fixed']:.1f} ms | "
                             f"{m['at_10M']:,.0f} ms |")
            else:
                lines.append(f"| {key} | {m['per_doc'] / 1e3:.1f} kB | {m['fixed'] / 2**30:.2f} GiB | "
                             f"{m['at_10M'] / 2**40:.2f} TiB |")
    return "\n".join(lines)


def scale_plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, results in runs.items():
        done = [r for r in results if "skipped" not in r]
        n = [r["docs"] for r in done]
        lat.plot(n, [r["all"]["p50_ms"] for r in done], "o-", label=f"{name} all p50")
        lat.plot(n, [r["all"]["p99_ms"] for r in done], "o--", label=f"{name} all p99")
        mem.plot(n, [(r["rss_after"] - r["rss_before"]) / 2**30 for r in done], "o-",
                 label=f"{name} index RSS after queries (WAL replay heap included)")
        trimmed = [r for r in done if "rss_trimmed" in r]
        if trimmed:
            mem.plot([r["docs"] for r in trimmed], [(r["rss_trimmed"] - r["rss_before"]) / 2**30 for r in trimmed],
                     "^:", label=f"{name} index RSS after malloc_trim")
        mem.plot(n, [r["disk_bytes"] / 2**30 for r in done], "s--", label=f"{name} disk")
    for ax, title, unit in ((lat, "`all` latency (k=10, 100 candidates per route)", "ms"),
                            (mem, "memory", "GiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("documents (bge-m3 shapes, ~100 ColBERT rows each)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_scale_args(p: argparse.ArgumentParser) -> None:
    """The scale part's arguments (named apart from the other parts' of benchmarks/colbert_storage.py)."""
    p.add_argument("--storages", choices=SCALE_STORAGES, nargs="+", default=["float16"],
                   help="scale: ColBERT storages to grow (float16; binary/int8 with originals on disk or in RAM)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000], help="scale: corpus sizes")
    p.add_argument("--scale-queries", type=int, default=100, help="scale: queries timed per size and mode")
    p.add_argument("--batch", type=int, default=500, help="scale: documents per upsert")
    p.add_argument("--flush-docs", type=int, default=5000, help="scale: documents between flushes while growing")
    p.add_argument("--max-disk-gb", type=float, default=25.0,
                   help="scale: skip sizes projected to need more disk; stop if the work directory grows past it")
    p.add_argument("--copy-factor", type=float, default=1.0,
                   help="scale: projected optimize copy, in multiples of the documents added since the last size")
    p.add_argument("--plot", type=Path, default=None, help="scale: write a PNG of latency and memory against size")
    p.add_argument("--child-index", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-queries", type=Path, help=argparse.SUPPRESS)


def part_scale(args: argparse.Namespace) -> dict:
    """Every storage of `args.storages` grown through the sizes; {"rows": [...], "models": {storage: fit}}."""
    t = time.perf_counter()
    rows, models, runs = [], {}, {}
    for storage in args.storages:
        runs[storage] = grow(argparse.Namespace(**{**vars(args), "storage": storage}))
        models[storage] = scale_model(runs[storage])
        rows += runs[storage]
    if args.plot:
        scale_plot(runs, args.plot)
        print(f"plot: {args.plot}")
    print(f"total {time.perf_counter() - t:.0f} s")
    return {"rows": rows, "models": models}


def scale_table(rows: list[dict]) -> str:
    """The table of each storage's sizes, and its growth model."""
    out = []
    for storage in dict.fromkeys(r.get("storage") for r in rows if "storage" in r):
        mine = [r for r in rows if r.get("storage") == storage]
        out.append(scale_report(mine, scale_model(mine)))
    return "\n\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scale_args(p)
    p.add_argument("--tmp", type=Path, default=None, help="where the index is built (default: $TMPDIR)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args()
    if args.child_index:
        scale_child(args)
        return
    result = part_scale(args)
    print("\n" + scale_table(result["rows"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
