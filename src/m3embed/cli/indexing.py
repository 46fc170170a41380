"""Commands over indexes: index build / add / delete / info, and search."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from m3embed.cli._common import (
    CollectionOpt,
    DeviceOpt,
    DtypeOpt,
    IndexArg,
    ModelOpt,
    RerankMaxLengthOpt,
    SearchWeightsOpt,
    _index_model,
    _load,
    _load_reranker,
    app,
    console,
    out,
)
from m3embed.modes import SEARCH_MODES

index_app = typer.Typer(no_args_is_help=True, help="Build and manage M3 indexes (Qdrant Edge on disk, or Qdrant).")
app.add_typer(index_app, name="index")


def _check_input(input: Path, text_field: str, id_field: str, title_field: str) -> int:
    """Read and validate every record of the input before anything is loaded or written; the record count."""
    from m3embed.corpus import read_records
    from m3embed.index.ingest import check_records

    return check_records(read_records(input, text_field=text_field, id_field=id_field,
                                      title_field=title_field or None))


def _ingest(index, input: Path, batch_size: int, text_field: str, id_field: str, title_field: str,
            skip_existing: bool, log_commits: bool, max_length: int | None = None, total: int | None = None) -> None:
    from m3embed.corpus import read_records
    from m3embed.diskspace import DiskFullError
    from m3embed.index.ingest import ingest

    def report(stats) -> None:
        if log_commits:  # one line per durable batch, for scripts that watch progress
            typer.echo(f"committed {stats.seen} records ({stats.added} added, {stats.skipped} already stored)")
            sys.stdout.flush()

    records = read_records(input, text_field=text_field, id_field=id_field, title_field=title_field or None)
    stats = ingest(index, records, batch_size=batch_size, skip_existing=skip_existing, total=total,
                   progress=not log_commits, on_commit=report, max_length=max_length)
    try:
        index.optimize()
    except DiskFullError as e:
        raise DiskFullError(f"{index.location}: {stats.added} documents added ({index.count()} stored), but {e}",
                            e.filename) from None
    dups = f"; {stats.duplicates} repeated ids (the last copy kept)" if stats.duplicates else ""
    console.print(f"{escape(index.location)}: {stats.added} added, {stats.skipped} already stored; "
                  f"{index.count()} documents{dups}", highlight=False)


BatchSizeOpt = typer.Option(64, help="documents encoded (or loaded) and committed together")
TextFieldOpt = typer.Option("text", help="field holding the text")
IdFieldOpt = typer.Option("id", help="field holding the document id")
TitleFieldOpt = typer.Option("title", help="field prepended to the text when present ('' for none)")
LogCommitsOpt = typer.Option(False, help="print a line per committed batch instead of a progress bar")


EncodedOpt = typer.Option(None, "--encoded", help="load shards of `m3embed encode --ray` (a job directory or a "
                          "shard) instead of encoding INPUT")


def _load_encoded(index, encoded: Path, batch_size: int, skip_existing: bool, log_commits: bool) -> None:
    from m3embed.index.bulk import load_encoded

    def report(stats) -> None:
        if log_commits:  # one line per durable batch, for scripts that watch progress
            typer.echo(f"committed {stats.seen} records ({stats.added} added, {stats.skipped} already stored)")
            sys.stdout.flush()

    stats = load_encoded(index, encoded, batch_size=batch_size, skip_existing=skip_existing, on_commit=report)
    index.optimize()
    console.print(f"{escape(index.location)}: {stats.added} loaded, {stats.skipped} already stored; "
                  f"{index.count()} documents", highlight=False)


def _load_encoded_on_ray(index: str, encoded: Path, collection: str, batch_size: int, skip_existing: bool,
                         address: str | None) -> None:
    from m3embed.index.bulk import load_encoded_ray

    stats = load_encoded_ray(index, encoded, collection=collection, batch_size=batch_size,
                             skip_existing=skip_existing, address=address)
    console.print(f"{escape(index)}: {stats.added} loaded, {stats.skipped} already stored", highlight=False)


@index_app.command("build")
def index_build(
    index: str = IndexArg,
    input: Path | None = typer.Argument(None, help="documents: .jsonl, .txt or .parquet"),
    encoded: Path | None = EncodedOpt,
    ray: bool = typer.Option(False, "--ray", help="--encoded into a Qdrant server: one Ray task per shard"),
    ray_address: str | None = typer.Option(None, help="--ray: cluster to join (default: the running one, else "
                                           "a new local one)"),
    model: str = ModelOpt,
    engine: str | None = typer.Option(None, help="edge (embedded, on disk; the default for a directory) or qdrant "
                                      "(qdrant-client: a URL, or a local path)"),
    modes: str | None = typer.Option(None, help="representations to store (default: all the model has)"),
    colbert_dtype: str = typer.Option("float16", help="colbert storage: float16 or float32"),
    colbert_quantization: str | None = typer.Option(None, help="colbert vectors scored quantized: none, int8 "
                                                    "or binary [default: none]"),
    colbert_originals: str | None = typer.Option(None, help="where colbert's float vectors live: ram, disk "
                                                 "(memory-mapped) or none [default: ram]"),
    colbert_rescore: bool | None = typer.Option(None, "--colbert-rescore/--no-colbert-rescore",
                                                help="quantized colbert: rescore the best hits with the originals "
                                                     "[default: on]"),
    colbert_oversampling: float | None = typer.Option(None, help="quantized colbert: hits rescored = this x k "
                                                      "[default: 4]"),
    pool_factor: int | None = typer.Option(None, help="colbert token pooling at ingest: n tokens become "
                                           "ceil(n / pool_factor) [default: 1, off]"),
    store_text: bool = typer.Option(True, "--store-text/--no-store-text", help="keep texts in the index"),
    batch_size: int = BatchSizeOpt,
    max_length: int | None = typer.Option(None, help="truncate documents to this many tokens"),
    text_field: str = TextFieldOpt,
    id_field: str = IdFieldOpt,
    title_field: str = TitleFieldOpt,
    collection: str = CollectionOpt,
    log_commits: bool = LogCommitsOpt,
    shards: int | None = typer.Option(None, help="Qdrant server: shards of the new collection"),
    replicas: int | None = typer.Option(None, help="Qdrant server: copies of each shard (>= 2 on a cluster)"),
    write_consistency: int | None = typer.Option(None, help="Qdrant server: replicas that must confirm a write"),
    on_disk: bool = typer.Option(False, help="Qdrant: keep vectors and payloads on disk (memory-mapped)"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Create an index (or resume one built with the same model) and add a file of documents or encoded shards."""
    from m3embed.index import open_index
    from m3embed.index.core import is_remote
    from m3embed.modes import check_modes

    options = {k: v for k, v in {"shard_number": shards, "replication_factor": replicas,
                                 "write_consistency_factor": write_consistency, "on_disk": on_disk or None}.items()
               if v is not None}
    if options and engine != "qdrant" and not is_remote(index):
        raise ValueError("--shards, --replicas, --write-consistency and --on-disk apply to the qdrant engine "
                         "(a Qdrant URL, or --engine qdrant)")
    storage = _colbert_storage(colbert_quantization, colbert_originals, colbert_rescore, colbert_oversampling,
                               pool_factor)
    create = {"engine": engine, "colbert_dtype": colbert_dtype, "colbert_storage": storage, "store_text": store_text,
              "collection": collection, "collection_options": options or None}
    if (input is None) == (encoded is None):
        raise ValueError("give a documents file (INPUT) or --encoded shards, one of the two")
    if encoded is not None:
        from m3embed.index.bulk import open_for_encoded

        with open_for_encoded(index, encoded, modes=check_modes(modes) if modes else None, **create) as idx:
            if not ray:
                _load_encoded(idx, encoded, batch_size, True, log_commits)
                return
        _load_encoded_on_ray(index, encoded, collection, batch_size, True, ray_address)
        return
    if ray:
        raise ValueError("--ray loads --encoded shards; encode documents on Ray with `m3embed encode --ray`")
    if Path(model).exists():
        model = str(Path(model).resolve())  # the index records it: later searches reload it from anywhere
    chosen = check_modes(modes) if modes else None
    total = _check_input(input, text_field, id_field, title_field)  # a bad record stops us before any write
    m = _load(model, chosen or ("dense",), dtype, device)
    with open_index(index, m, create=True, modes=chosen or m.available_modes(), **create) as idx:
        _ingest(idx, input, batch_size, text_field, id_field, title_field, True, log_commits, max_length, total)


def _colbert_storage(quantization: str | None, originals: str | None, rescore: bool | None,
                     oversampling: float | None, pool_factor: int | None):
    """The --colbert-* options over the default storage of new indexes; None when none is given."""
    from dataclasses import replace

    from m3embed.index.manifest import DEFAULT_COLBERT_STORAGE

    given = {k: v for k, v in {"quantization": quantization, "originals": originals, "rescore": rescore,
                               "oversampling": oversampling, "pool_factor": pool_factor}.items() if v is not None}
    return replace(DEFAULT_COLBERT_STORAGE, **given) if given else None


@index_app.command("add")
def index_add(
    index: str = IndexArg,
    input: Path | None = typer.Argument(None, help="documents: .jsonl, .txt or .parquet"),
    encoded: Path | None = EncodedOpt,
    ray: bool = typer.Option(False, "--ray", help="--encoded into a Qdrant server: one Ray task per shard"),
    ray_address: str | None = typer.Option(None, help="--ray: cluster to join (default: the running one, else "
                                           "a new local one)"),
    model: str | None = typer.Option(None, "--model", "-m", help="default: the model the index records"),
    replace: bool = typer.Option(False, help="re-encode and replace documents whose id is already stored"),
    batch_size: int = BatchSizeOpt,
    text_field: str = TextFieldOpt,
    id_field: str = IdFieldOpt,
    title_field: str = TitleFieldOpt,
    collection: str = CollectionOpt,
    log_commits: bool = LogCommitsOpt,
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Add documents, or encoded shards, to an existing index (upsert by id)."""
    from m3embed.index import open_index

    if (input is None) == (encoded is None):
        raise ValueError("give a documents file (INPUT) or --encoded shards, one of the two")
    if ray:
        if encoded is None:
            raise ValueError("--ray loads --encoded shards; encode documents on Ray with `m3embed encode --ray`")
        _load_encoded_on_ray(index, encoded, collection, batch_size, not replace, ray_address)
        return
    total = None if input is None else _check_input(input, text_field, id_field, title_field)  # before any write
    with open_index(index, collection=collection) as idx:
        if encoded is not None:
            _load_encoded(idx, encoded, batch_size, not replace, log_commits)
            return
        _index_model(idx, model, dtype, device)
        _ingest(idx, input, batch_size, text_field, id_field, title_field, not replace, log_commits, total=total)


@index_app.command("delete")
def index_delete(
    index: str = IndexArg,
    ids: list[str] = typer.Argument(None, help="document ids to delete"),
    ids_file: Path | None = typer.Option(None, help="file of ids: one per line, or jsonl with 'id'"),
    collection: str = CollectionOpt,
) -> None:
    """Delete documents by id."""
    from m3embed.index import open_index
    from m3embed.index.ingest import read_ids

    chosen = list(ids or []) + (read_ids(ids_file) if ids_file else [])
    if not chosen:
        raise ValueError("give ids to delete, or --ids-file")
    with open_index(index, collection=collection) as idx:
        present = len(chosen) - len(idx.missing(chosen))
        idx.delete(chosen)
        console.print(f"{escape(index)}: deleted {present} of {len(chosen)} ids; {idx.count()} documents left",
                      highlight=False)


@index_app.command("info")
def index_info(
    index: str = IndexArg,
    collection: str = CollectionOpt,
    measure_ram: bool = typer.Option(False, "--measure-ram", help="also measure the RAM that opening the index "
                                     "takes (a fresh process; an index directory)"),
) -> None:
    """Show what an index holds: engine, model, modes, colbert storage, document count, measured bytes."""
    from m3embed.index import open_index
    from m3embed.index.core import is_remote
    from m3embed.index.footprint import measure_ram as measure
    from m3embed.index.footprint import per_unit

    if measure_ram and is_remote(index):
        raise ValueError("--measure-ram measures an index directory; a Qdrant server reports its own memory")
    with open_index(index, collection=collection) as idx:
        info = idx.info()
    if measure_ram:  # after closing: the measuring process opens the index itself
        ram = measure(index, collection)
        info.update(ram, **per_unit(ram, info["count"], info.get("colbert_tokens")))
    table = Table(show_header=False, title=Text(f"m3embed index: {index}"))
    for k, v in info.items():
        if isinstance(v, list):
            v = ", ".join(v)
        elif isinstance(v, dict):
            v = ", ".join(f"{name}={value}" for name, value in v.items())
        table.add_row(k, Text(str(v)))
    out.print(table)


@app.command()
def search(
    index: str = IndexArg,
    query: list[str] = typer.Argument(..., help="query text(s)"),
    k: int = typer.Option(10, "-k", help="hits per query"),
    mode: str | None = typer.Option(None, help=f"{', '.join(SEARCH_MODES)} (default: the fullest the index "
                                                  "stores, all when it has the three)"),
    weights: str = SearchWeightsOpt,
    candidates: int | None = typer.Option(None, help="candidates per route (dense, sparse) rescored by hybrid "
                                                     "modes (default 100)"),
    colbert_top: int | None = typer.Option(None, help="colbert/all: score ColBERT for only this many of the best "
                                                      "dense+sparse candidates (faster, not exact M3)"),
    reranker: str | None = typer.Option(None, help="cross-encoder (dir, shipped name or hub id) that rescores the "
                                                   "best --rerank-top hits from their stored texts"),
    rerank_top: int | None = typer.Option(None, help="hits the --reranker rescores (default max(k, 100))"),
    rerank_max_length: int | None = RerankMaxLengthOpt,
    where: list[str] = typer.Option([], "--where", "-w", help="metadata filter: lang=en, year>=2000 (repeat)"),
    explain: bool = typer.Option(False, help="show each mode's score"),
    json_out: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
    model: str | None = typer.Option(None, "--model", "-m", help="default: the model the index records"),
    collection: str = CollectionOpt,
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Search an index with M3's modes (default: the dense+sparse+colbert hybrid)."""
    import json

    from m3embed.index import open_index
    from m3embed.index.store import parse_where
    from m3embed.modes import parse_weights

    with open_index(index, collection=collection) as idx:
        cross = _load_reranker(reranker, dtype, device, rerank_max_length) if reranker else None
        spec = idx.prepare(k=k, mode=mode, weights=parse_weights(weights), candidates=candidates,
                           colbert_top=colbert_top, filter=parse_where(where), explain=explain, reranker=cross,
                           rerank_top=rerank_top)
        _index_model(idx, model, dtype, device)
        results = idx.run(spec, idx.model.encode_queries(list(query), modes=spec.query_modes), list(query))
    for q, hits in zip(query, results):
        if json_out:
            for rank, h in enumerate(hits, 1):
                typer.echo(json.dumps({"query": q, "rank": rank, **h._asdict()}, ensure_ascii=False))
            continue
        table = Table(title=Text(f"{spec.mode}{' + rerank' if cross else ''}: {q}"))
        parts = (("dense", "sparse", "colbert") if explain else ()) + (("rerank",) if explain and cross else ())
        for col in ("rank", "id", "score", *parts, "text"):
            table.add_column(col)
        for rank, h in enumerate(hits, 1):
            per = [f"{h.scores.get(m, float('nan')):.4f}" for m in parts]
            text = (h.text or "").replace("\n", " ")
            table.add_row(str(rank), Text(h.id), f"{h.score:.4f}", *per,
                          Text(text[:80] + ("…" if len(text) > 80 else "")))
        out.print(table)
