"""ColBERT storage study: what quantization, rescoring and token pooling cost in quality, and what they save in
bytes, measured on built indexes (issue 10). One function per part:

- `--part quality`: the shipped model `minilm-m3` (bfloat16; passages cut at 256 tokens, queries at 512, as in
  docs/results.md) on the 6 classic sets and xquad/en (dev qrels). Each set is encoded once (cached in
  --cache); then every storage option x pool factor 1/2/3 gets its own Qdrant Edge index built from those
  outputs (`Index.add_outputs`), searched with `colbert` and `all` (k 10, 100 dense + 100 sparse candidates:
  rescoring reads the originals of oversampling x 10 of the union),
  scored with pytrec_eval (nDCG@10), and measured: the colbert storage's allocated bytes on disk and the
  index's resident memory once opened, per ColBERT token.
- `--part fidelity`: synthetic bge-m3-shaped documents (1024-d, `m3testkit.synthetic` as in
  benchmarks/search.py): recall@10 of `all` against the exact float32 M3 formula over the whole corpus, per
  option, with the same byte measurements at bge-m3's width.
- `--part ram`: RAM and disk per ColBERT token at the margin (`part_ram`), at 1024-d and at minilm-m3's 384-d.
- `--part scale`: `all` latency, resident memory and disk against corpus size (`colbert_scale.part_scale`,
  in benchmarks/colbert_scale.py, which also runs alone).

RAM is measured in a fresh process (`m3embed.index.footprint.measure_ram`) on a copy of the built index
without its write-ahead log: Qdrant Edge 0.9 replays the whole log when it opens a shard, which peaks at ~25x
the log's size (a passing cost of opening, the same for every option, reported separately by `index info
--measure-ram`). The quality and fidelity rows record the whole index's resident bytes and those of a twin
index without the colbert field; on small corpora both are dominated by fixed costs (Qdrant Edge maps its
appendable segments in 32 MB chunks), so the per-token RAM figures come from `--part ram`, which measures
at the margin between two corpus sizes.

    python benchmarks/colbert_storage.py --part quality     # about an hour on 2 busy cores
    python benchmarks/colbert_storage.py --part fidelity    # about 15 minutes
    python benchmarks/colbert_storage.py --part ram         # about 15 minutes
    python benchmarks/colbert_storage.py --part scale --storages float16 binary-disk --sizes 10000 30000 \\
        --plot docs/colbert_scale.png
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # m3testkit/ is at the repo root, not installed

from colbert_scale import add_scale_args, part_scale, scale_child, scale_table  # benchmarks/ is on sys.path

from m3embed.index import Index
from m3embed.index.footprint import measure_ram
from m3embed.index.manifest import ColbertStorage
from m3embed.types import M3Output

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository
SETS = {**{f"classic/{name}": "qrels.tsv" for name in ("adi", "cacm", "cranfield", "lisa", "medline", "time")},
        "xquad/en": "qrels.dev.tsv"}
OPTIONS = {  # name: storage (pool factor set per run)
    "float16": ColbertStorage(),
    "int8": ColbertStorage("int8"),
    "int8 no-rescore": ColbertStorage("int8", rescore=False),
    "binary": ColbertStorage("binary"),
    "binary no-rescore": ColbertStorage("binary", rescore=False),
    "binary disk": ColbertStorage("binary", originals="disk"),
    "binary disk no-rescore": ColbertStorage("binary", originals="disk", rescore=False),
}
POOL_FACTORS = (1, 2, 3)
WEIGHTS = (0.4, 0.2, 0.4)


@dataclass
class Built:
    """One built index's measurements."""

    docs: int
    colbert_tokens: int
    colbert_disk_bytes: int
    ram_bytes: int
    build_s: float


def build(path: Path, outputs: M3Output, ids: list[str], storage: ColbertStorage | None, identity: dict[str, Any],
          batch: int = 256) -> Index:
    """An Edge index at `path` holding `outputs` (no colbert field when `storage` is None), optimized."""
    modes = ("dense", "sparse", "colbert") if storage is not None else ("dense", "sparse")
    index = Index.create(path, modes=modes, colbert_storage=storage, store_text=False, **identity)
    for start in range(0, len(ids), batch):
        index.add_outputs(ids[start : start + batch], outputs.select(range(start, min(start + batch, len(ids)))))
    index.optimize()
    return index


def ram_without_wal(path: Path) -> int:
    """Resident bytes of the opened index, measured on a copy without its write-ahead log (see module doc)."""
    copy = path.with_name(path.name + "-nowal")
    shutil.copytree(path, copy, ignore=lambda d, names: ["wal"] if Path(d).name == "shard" else [])
    try:
        return measure_ram(copy)["ram_bytes"]
    finally:
        shutil.rmtree(copy)


def measure(index: Index, path: Path, started: float) -> Built:
    info = index.info()
    built = time.perf_counter() - started
    index.close()
    return Built(info["count"], info.get("colbert_tokens", 0), info.get("colbert_disk_bytes", 0),
                 ram_without_wal(path), round(built, 1))


def storage_for(name: str, pool: int) -> ColbertStorage:
    return ColbertStorage(**{**asdict(OPTIONS[name]), "pool_factor": pool})


# ---- quality ----


def encode_set(name: str, model: Any, cache: Path) -> tuple[Any, M3Output, M3Output]:
    """The dataset and its encoded corpus and queries, from the cache when there."""
    from m3embed.evaluate import load_dataset

    dataset = load_dataset(DATA / name, qrels=SETS[name])
    path = cache / (name.replace("/", "_") + ".pkl")
    if path.exists():
        docs, queries = pickle.loads(path.read_bytes())
        return dataset, docs, queries
    modes = ("dense", "sparse", "colbert")
    docs = model.encode_corpus(dataset.doc_texts, modes=modes, max_length=256)
    queries = model.encode_queries(list(dataset.queries.values()), modes=modes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps((docs, queries)))
    return dataset, docs, queries


def ndcg(index: Index, dataset: Any, queries: M3Output, mode: str) -> float:
    from m3embed.evaluate import evaluate_run

    spec = index.prepare(k=10, mode=mode, weights=WEIGHTS, candidates=100)
    hits = index.run(spec, queries)
    run = {q: {h.id: h.score for h in found} for q, found in zip(dataset.queries, hits)}
    return evaluate_run(dataset.qrels, run)["nDCG@10"]


def part_quality(args: argparse.Namespace) -> dict[str, Any]:
    from m3embed.model import M3Model

    model = M3Model.from_pretrained("minilm-m3", dtype="bfloat16")
    identity = {"fingerprint": model.fingerprint, "model_name": "minilm-m3", "dim": model.hidden_size}
    rows = []
    for name in args.sets:
        tick = time.perf_counter()
        dataset, docs, queries = encode_set(name, model, args.cache)
        print(f"{name}: {len(docs)} documents, {len(queries)} queries (encoded/loaded in "
              f"{time.perf_counter() - tick:.0f} s)", flush=True)
        ids = dataset.doc_ids
        with tempfile.TemporaryDirectory(prefix="colbert-storage-", dir=args.tmp) as tmp:
            twin = build(Path(tmp) / "twin", docs, ids, None, identity)
            twin_ram = measure(twin, Path(tmp) / "twin", time.perf_counter()).ram_bytes
            for pool in POOL_FACTORS:
                for option in args.options:
                    storage = storage_for(option, pool)
                    path = Path(tmp) / f"{option}-{pool}".replace(" ", "_")
                    started = time.perf_counter()
                    index = build(path, docs, ids, storage, identity)
                    scores = {mode: ndcg(index, dataset, queries, mode) for mode in ("colbert", "all")}
                    built = measure(index, path, started)
                    shutil.rmtree(path)
                    row = {"set": name, "option": option, "pool_factor": pool, **scores, **asdict(built),
                           "twin_ram_bytes": twin_ram, **per_token(built, twin_ram)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return {"part": "quality", "rows": rows}


def per_token(built: Built, twin_ram: int) -> dict[str, float]:
    tokens = max(built.colbert_tokens, 1)
    return {"disk_bytes_per_token": round(built.colbert_disk_bytes / tokens, 1),
            "ram_bytes_per_token": round((built.ram_bytes - twin_ram) / tokens, 1)}


# ---- fidelity ----


def part_fidelity(args: argparse.Namespace) -> dict[str, Any]:
    from m3embed import scoring
    from m3testkit import synthetic

    docs = synthetic.corpus(args.docs, seed=0)
    queries, _ = synthetic.queries(docs, args.queries, seed=1)
    ids = [f"d{i}" for i in range(len(docs))]
    identity = {"fingerprint": "synthetic-bge-m3-shape", "dim": docs.dense.shape[1]}
    colbert = [np.asarray(c, dtype=np.float32) for c in docs.colbert]
    exact = []  # the exact float32 M3 top 10 of `all` over every document
    for i in range(len(queries)):
        total = (WEIGHTS[0] * scoring.dense_scores(queries.dense[i : i + 1], docs.dense)[0]
                 + WEIGHTS[1] * scoring.lexical_scores(queries.sparse[[i]], docs.sparse)[0]
                 + WEIGHTS[2] * scoring.colbert_scores(np.asarray(queries.colbert[i], np.float32), colbert))
        exact.append(set(np.argsort(-total, kind="stable")[:10].tolist()))
    print(f"exact top 10 of {len(queries)} queries over {len(docs)} documents computed", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="colbert-fidelity-", dir=args.tmp) as tmp:
        twin = build(Path(tmp) / "twin", docs, ids, None, identity)
        twin_ram = measure(twin, Path(tmp) / "twin", time.perf_counter()).ram_bytes
        for pool in POOL_FACTORS:
            for option in args.options:
                path = Path(tmp) / f"{option}-{pool}".replace(" ", "_")
                started = time.perf_counter()
                index = build(path, docs, ids, storage_for(option, pool), identity)
                hits = index.search(queries, k=10, mode="all", weights=WEIGHTS)
                recall = float(np.mean([len(exact[i] & {int(h.id[1:]) for h in found}) / 10
                                        for i, found in enumerate(hits)]))
                built = measure(index, path, started)
                shutil.rmtree(path)
                row = {"option": option, "pool_factor": pool, "recall@10": round(recall, 4), **asdict(built),
                       "twin_ram_bytes": twin_ram, **per_token(built, twin_ram)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"part": "fidelity", "docs": args.docs, "queries": args.queries, "rows": rows}


# ---- ram ----


def part_ram(args: argparse.Namespace) -> dict[str, Any]:
    """Bytes per ColBERT token at the margin. Each option is built at two corpus sizes (synthetic, at each
    width) twice: with the documents' ColBERT rows, and as a twin whose documents keep one row each (same
    option, so the same kind of segments). RAM per token = (growth of the index - growth of the twin) /
    (growth in rows - growth in documents): what every index has whatever its size (the engine's 32 MB file
    chunks, thread pools) and what the other fields and the per-document offsets take cancel."""
    from m3testkit import synthetic

    rows = []
    sizes = (args.docs // 2, args.docs)
    for dim in args.dims:
        docs = synthetic.corpus(args.docs, dim=dim, seed=0)
        ones = M3Output(dense=docs.dense, sparse=docs.sparse, colbert=[c[:1] for c in docs.colbert],
                        n_tokens=np.full(len(docs), 2))
        ids = [f"d{i}" for i in range(len(docs))]
        identity = {"fingerprint": f"synthetic-{dim}", "dim": dim}
        with tempfile.TemporaryDirectory(prefix="colbert-ram-", dir=args.tmp) as tmp:
            for option in args.options:
                got: dict[str, list[Built]] = {"index": [], "twin": []}
                for n in sizes:
                    for kind, outputs in (("index", docs), ("twin", ones)):
                        path = Path(tmp) / f"{option}-{kind}-{n}".replace(" ", "_")
                        index = build(path, outputs.select(range(n)), ids[:n], OPTIONS[option], identity)
                        got[kind].append(measure(index, path, time.perf_counter()))
                        shutil.rmtree(path)
                grow = {kind: (b[1].ram_bytes - b[0].ram_bytes, b[1].colbert_tokens - b[0].colbert_tokens,
                               b[1].colbert_disk_bytes - b[0].colbert_disk_bytes) for kind, b in got.items()}
                rows_added = grow["index"][1] - grow["twin"][1]
                row = {"dim": dim, "option": option, "docs": list(sizes),
                       **{f"{kind}_{field}": [getattr(b, field) for b in built] for kind, built in got.items()
                          for field in ("ram_bytes", "colbert_tokens", "colbert_disk_bytes")},
                       "index_ram_bytes_per_doc": round(grow["index"][0] / (sizes[1] - sizes[0]), 1),
                       "colbert_ram_bytes_per_token": round((grow["index"][0] - grow["twin"][0]) / rows_added, 1),
                       "colbert_disk_bytes_per_token": round((grow["index"][2] - grow["twin"][2]) / rows_added, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"part": "ram", "sizes": list(sizes), "rows": rows}


# ---- tables ----


def quality_table(rows: list[dict[str, Any]]) -> str:
    """Per option and pool factor: nDCG@10 of colbert and all per set, the mean, the loss of `all` against
    float16 (pool 1), and measured bytes per token (mean over the sets, and on the largest set)."""
    sets = list(dict.fromkeys(r["set"] for r in rows))
    base = {r["set"]: r for r in rows if r["option"] == "float16" and r["pool_factor"] == 1}
    largest = max(sets, key=lambda s: base[s]["colbert_tokens"] if s in base else 0)
    short = [s.split("/")[-1] for s in sets]
    lines = ["| option | pool | mode | " + " | ".join(short) + " | mean | Δall mean | Δall worst | "
             f"ColBERT disk B/tok ({largest.split('/')[-1]}) | index RAM MB ({largest.split('/')[-1]}) |",
             "|---|---|---|" + "---|" * (len(sets) + 5)]
    for (option, pool) in dict.fromkeys((r["option"], r["pool_factor"]) for r in rows):
        got = {r["set"]: r for r in rows if r["option"] == option and r["pool_factor"] == pool}
        for mode in ("colbert", "all"):
            values = [got[s][mode] if s in got else float("nan") for s in sets]
            cells = [f"{v:.3f}" for v in values] + [f"{np.mean(values):.3f}"]
            if mode == "all" and base:
                loss = [got[s]["all"] - base[s]["all"] for s in sets if s in got and s in base]
                cells += [f"{np.mean(loss):+.4f}", f"{min(loss):+.4f}"]
                big = got.get(largest, {})
                cells += [f"{big.get('disk_bytes_per_token', float('nan')):.0f}",
                          f"{big.get('ram_bytes', float('nan')) / 1e6:.0f}"]
            else:
                cells += ["", "", "", ""]
            lines.append(f"| {option} | {pool} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fidelity_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| option | pool | recall@10 of all vs exact | ColBERT tokens | ColBERT disk B/tok | index RAM MB | "
             "build s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['option']} | {r['pool_factor']} | {r['recall@10']:.3f} | {r['colbert_tokens']} | "
                     f"{r['disk_bytes_per_token']:.0f} | {r['ram_bytes'] / 1e6:.0f} | {r['build_s']} |")
    return "\n".join(lines)


def ram_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| width | option | index RAM B/doc | ColBERT RAM B/token | ColBERT disk B/token |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dim']} | {r['option']} | {r['index_ram_bytes_per_doc']:.0f} | "
                     f"{r['colbert_ram_bytes_per_token']:.1f} | {r['colbert_disk_bytes_per_token']:.0f} |")
    return "\n".join(lines)


PARTS: dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], Callable[[list], str]]] = {
    "quality": (part_quality, quality_table),
    "fidelity": (part_fidelity, fidelity_table),
    "ram": (part_ram, ram_table),
    "scale": (part_scale, scale_table),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=list(PARTS), required=True)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--docs", type=int, default=1000, help="fidelity, ram: synthetic documents")
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 384], help="ram: vector widths")
    parser.add_argument("--queries", type=int, default=50, help="fidelity: synthetic queries")
    parser.add_argument("--cache", type=Path, default=Path("runs/colbert_storage/encoded"),
                        help="quality: encoded sets (reused across runs)")
    parser.add_argument("--tmp", type=Path, default=None, help="where the indexes are built (default: $TMPDIR)")
    parser.add_argument("--out", type=Path, default=Path("runs/colbert_storage"))
    parser.add_argument("--tables", type=Path, default=None, help="print the tables of an earlier run's JSON")
    add_scale_args(parser)
    args = parser.parse_args()
    if args.child_index:  # a measuring child of --part scale
        scale_child(args)
        return
    run, table = PARTS[args.part]
    if args.tables:
        print(table(json.loads(args.tables.read_text())["rows"]))
        return
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.part}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result["rows"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
