"""Commands over indexes: index build / add / delete / info, and search."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from m3embed.cli._common import (
    CollectionOpt,
    DeviceOpt,
    DtypeOpt,
    GenerateIdsOpt,
    IndexArg,
    ModelOpt,
    PairMaxLengthOpt,
    SearchWeightsOpt,
    _commit_report,
    _index_model,
    _load,
    _load_reranker,
    app,
    console,
    out,
)
from m3embed.index.manifest import ColbertStorage
from m3embed.modes import SEARCH_MODES

index_app = typer.Typer(no_args_is_help=True, help="Build and manage M3 indexes (Qdrant Edge on disk, or Qdrant).")
app.add_typer(index_app, name="index")


BatchSizeOpt = typer.Option(64, help="documents encoded (or loaded) and committed together")
TextFieldOpt = typer.Option("text", help="field holding the text")
IdFieldOpt = typer.Option("id", help="field holding the document id")
TitleFieldOpt = typer.Option("title", help="field prepended to the text when present ('' for none)")
LogCommitsOpt = typer.Option(False, help="print a line per committed batch instead of a progress bar")
EncodedOpt = typer.Option(None, "--encoded", help="load shards of `m3embed encode --ray` (a job directory or a "
                          "shard) instead of encoding INPUT")
RayOpt = typer.Option(False, "--ray", help="--encoded into a Qdrant server: one Ray task per shard")
RayAddressOpt = typer.Option(None, help="--ray: cluster to join (default: the running one, else a new local one)")


def _source(input: Path | None, encoded: Path | None, text_field: str, id_field: str, title_field: str,
            generate_ids: bool = False):
    from m3embed.index.build import Source

    if (input is None) == (encoded is None):
        raise ValueError("give a documents file (INPUT) or --encoded shards, one of the two")
    return Source(encoded or input, encoded=encoded is not None, text_field=text_field, id_field=id_field,
                  title_field=title_field or None, generate_ids=generate_ids)


def _print_added(added, source) -> None:
    verb = "loaded" if source.encoded else "added"
    stats = added.stats
    dups = f"; {stats.duplicates} repeated ids (the last copy kept)" if stats.duplicates else ""
    count = "" if added.count is None else f"; {added.count} documents"
    console.print(f"{escape(added.location)}: {stats.added} {verb}, {stats.skipped} already stored{count}{dups}",
                  highlight=False)


@index_app.command("build")
def index_build(
    index: str = IndexArg,
    input: Path | None = typer.Argument(None, help="documents: .jsonl, .txt or .parquet"),
    encoded: Path | None = EncodedOpt,
    ray: bool = RayOpt,
    ray_address: str | None = RayAddressOpt,
    model: str = ModelOpt,
    engine: str | None = typer.Option(None, help="edge (embedded, on disk; the default for a directory) or qdrant "
                                      "(qdrant-client: a URL, or a local path)"),
    modes: str | None = typer.Option(None, help="representations to store (default: all the model has)"),
    colbert_dtype: str | None = typer.Option(None, help=f"colbert storage: float16 or float32 [default: "
                                             f"{ColbertStorage().dtype}]"),
    colbert_quantization: str | None = typer.Option(None, help="colbert vectors scored quantized: none, int8 "
                                                    "or binary [default: none once any colbert flag is given; "
                                                    "with none, binary codes only in an index directory]"),
    colbert_originals: str | None = typer.Option(None, help="where colbert's float vectors live: ram, disk "
                                                 "(memory-mapped) or none [default: ram]"),
    colbert_rescore: bool | None = typer.Option(None, "--colbert-rescore/--no-colbert-rescore",
                                                help="quantized colbert: rescore the best hits with the originals "
                                                     "[default: on]"),
    colbert_oversampling: float | None = typer.Option(None, help="quantized colbert: hits rescored = this x k "
                                                      "[default: 4]"),
    pool_factor: int | None = typer.Option(None, help="colbert token pooling at ingest: n tokens become "
                                           "ceil(n / pool_factor) [default: 1, off]"),
    store_text: bool | None = typer.Option(None, "--store-text/--no-store-text",
                                           help="keep texts in the index [default: on]"),
    batch_size: int = BatchSizeOpt,
    max_length: int | None = typer.Option(None, help="truncate documents to this many tokens"),
    text_field: str = TextFieldOpt,
    id_field: str = IdFieldOpt,
    generate_ids: bool = GenerateIdsOpt,
    title_field: str = TitleFieldOpt,
    collection: str = CollectionOpt,
    log_commits: bool = LogCommitsOpt,
    shard_number: int | None = typer.Option(None, "--shard-number", "--shards",
                                            help="Qdrant server: shards of the new collection"),
    replication_factor: int | None = typer.Option(None, "--replication-factor", "--replicas",
                                                  help="Qdrant server: copies of each shard (>= 2 on a cluster)"),
    write_consistency_factor: int | None = typer.Option(None, "--write-consistency-factor", "--write-consistency",
                                                        help="Qdrant server: replicas that must confirm a write"),
    on_disk: bool = typer.Option(False, help="Qdrant: keep vectors and payloads on disk (memory-mapped)"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Create an index (or resume one built with the same model) and add a file of documents or encoded shards."""
    from m3embed.index.build import build
    from m3embed.index.directory import is_remote
    from m3embed.modes import check_modes

    source = _source(input, encoded, text_field, id_field, title_field, generate_ids)
    # the create_collection arguments, under their Qdrant names
    options = {name: value for name, value in (("shard_number", shard_number),
                                               ("replication_factor", replication_factor),
                                               ("write_consistency_factor", write_consistency_factor),
                                               ("on_disk", on_disk or None)) if value is not None}
    if options and engine != "qdrant" and not is_remote(index):
        raise ValueError("--shard-number, --replication-factor, --write-consistency-factor and --on-disk apply to "
                         "the qdrant engine (a Qdrant URL, or --engine qdrant)")
    storage = {name: value for name, value in (("dtype", colbert_dtype), ("quantization", colbert_quantization),
                                               ("originals", colbert_originals), ("rescore", colbert_rescore),
                                               ("oversampling", colbert_oversampling),
                                               ("pool_factor", pool_factor)) if value is not None}
    if Path(model).exists():
        model = str(Path(model).resolve())  # the index records it: later searches reload it from anywhere
    added = build(index, source, load_model=lambda chosen: _load(model, chosen or ("dense",), dtype, device),
                  modes=check_modes(modes) if modes else None, engine=engine,
                  colbert_storage=ColbertStorage(**storage) if storage else None, store_text=store_text,
                  collection=collection, collection_options=options or None, batch_size=batch_size,
                  max_length=max_length, ray=ray, ray_address=ray_address, progress=not log_commits,
                  on_commit=_commit_report(log_commits))
    _print_added(added, source)


@index_app.command("add")
def index_add(
    index: str = IndexArg,
    input: Path | None = typer.Argument(None, help="documents: .jsonl, .txt or .parquet"),
    encoded: Path | None = EncodedOpt,
    ray: bool = RayOpt,
    ray_address: str | None = RayAddressOpt,
    model: str | None = typer.Option(None, "--model", "-m", help="default: the model the index records"),
    replace: bool = typer.Option(False, help="re-encode and replace documents whose id is already stored"),
    batch_size: int = BatchSizeOpt,
    text_field: str = TextFieldOpt,
    id_field: str = IdFieldOpt,
    generate_ids: bool = GenerateIdsOpt,
    title_field: str = TitleFieldOpt,
    collection: str = CollectionOpt,
    log_commits: bool = LogCommitsOpt,
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Add documents, or encoded shards, to an existing index (upsert by id)."""
    from m3embed.index.build import add

    source = _source(input, encoded, text_field, id_field, title_field, generate_ids)
    added = add(index, source, load_model=lambda idx: _index_model(idx, model, dtype, device), collection=collection,
                replace=replace, batch_size=batch_size, ray=ray, ray_address=ray_address,
                progress=not log_commits, on_commit=_commit_report(log_commits))
    _print_added(added, source)


@index_app.command("delete")
def index_delete(
    index: str = IndexArg,
    ids: list[str] = typer.Argument(None, help="document ids to delete"),
    ids_file: Path | None = typer.Option(None, help="file of ids: one per line, or jsonl with 'id'"),
    collection: str = CollectionOpt,
) -> None:
    """Delete documents by id."""
    from m3embed.corpus import read_ids
    from m3embed.index import open_index

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
    from m3embed.index.directory import is_remote
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
            v = ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
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
    weights: str | None = SearchWeightsOpt,
    candidates: int | None = typer.Option(None, help="candidates per route (dense, sparse) rescored by hybrid "
                                                     "modes (default 100)"),
    colbert_top: int | None = typer.Option(None, help="colbert/all: score ColBERT for only this many of the best "
                                                      "dense+sparse candidates (faster, not exact M3)"),
    exhaustive: bool = typer.Option(False, help="colbert mode: score every document, not the dense and sparse "
                                                "candidates (slower, linear in the corpus)"),
    reranker: str | None = typer.Option(None, help="cross-encoder (dir, shipped name or hub id) that rescores the "
                                                   "best --rerank-top hits from their stored texts"),
    rerank_top: int | None = typer.Option(None, help="hits the --reranker rescores (default max(k, 100))"),
    pair_max_length: int | None = PairMaxLengthOpt,
    where: list[str] = typer.Option([], "--where", "-w", help="metadata filter: lang=en, year>=2000 (repeat)"),
    explain: bool = typer.Option(False, help="show each mode's score"),
    json_out: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
    model: str | None = typer.Option(None, "--model", "-m", help="default: the model the index records"),
    collection: str = CollectionOpt,
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Search an index with M3's modes (default: the dense+sparse+colbert hybrid)."""
    from m3embed.index import open_index
    from m3embed.modes import parse_weights

    with open_index(index, collection=collection) as idx:
        cross = _load_reranker(reranker, dtype, device, pair_max_length) if reranker else None
        # checked before the model loads: a bad option costs no loading time
        spec = idx.prepare(k=k, mode=mode, weights=None if weights is None else parse_weights(weights),
                           candidates=candidates, colbert_top=colbert_top, exhaustive=exhaustive,
                           filter=parse_where(where), explain=explain, reranker=cross, rerank_top=rerank_top)
        _index_model(idx, model, dtype, device, queries_only=True)
        results = idx.run(spec, idx.encode_queries(spec, query), query)
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


_WHERE = re.compile(r"\s*([^=<>\s]+)\s*(>=|<=|>|<|=)\s*(.*?)\s*")
_WHERE_OPS = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}


def parse_where(exprs: Sequence[str]) -> dict[str, Any]:
    """`lang=en`, `tag=["a","b"]` (any of), `year>=2000`, `n<5` into a filter dict for `parse_filter`.

    The value of `=` is read as JSON when it parses (numbers, lists, true), else as a bare string.
    """
    spec: dict[str, Any] = {}
    for expr in exprs:
        m = _WHERE.fullmatch(expr)
        if not m or not m.group(3):
            raise ValueError(f"--where {expr!r}: use field=value, field=[v1,v2], field>=number (or >, <, <=)")
        key, op, raw = m.groups()
        if op == "=":
            try:
                spec[key] = json.loads(raw)
            except json.JSONDecodeError:
                spec[key] = raw  # a bare word is a string
            continue
        try:
            spec.setdefault(key, {})[_WHERE_OPS[op]] = float(raw)
        except (ValueError, TypeError):
            raise ValueError(f"--where {expr!r}: {op} needs a number") from None
    return spec
