"""The `m3embed` command line: parse arguments, call the library, print with rich.

User mistakes (bad paths, bad input, wrong model) and environment failures (a full disk, an unreachable
server) print one red line and exit 2, without a traceback. Text that comes from the user or the data (paths,
ids, queries, document texts) is escaped before rich prints it, so "[red]" or "[/]" in it is shown as is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from m3embed._optional import MissingExtra
from m3embed.checkpoint import default_model, default_reranker
from m3embed.index.store import DEFAULT_RERANK_TOP
from m3embed.modes import SCORE_WEIGHTS, SEARCH_MODES, SEARCH_WEIGHTS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="BGE-M3 end to end: encode, score, index, search, evaluate, train, serve.")
console = Console(stderr=True)
out = Console()

DEFAULT_MODEL = default_model()  # offline: minilm-m3 (trained here) or the dense-only MiniLM backbone
ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m", help="checkpoint dir, shipped name or hub id")
DtypeOpt = typer.Option("float32", help="float32 (exact), bfloat16 (CPU AVX512-BF16 / GPU), float16 (GPU), int8 (CPU)")
DeviceOpt = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
SEARCH_WEIGHTS_TEXT = ",".join(f"{w:g}" for w in SEARCH_WEIGHTS)
SearchWeightsOpt = typer.Option(SEARCH_WEIGHTS_TEXT, help="dense,sparse,colbert weights of the hybrid modes "
                                "(plain weighted sums)")


def _load(model: str, modes, dtype: str = "float32", device: str | None = None):
    from m3embed.model import M3Model

    return M3Model.from_pretrained(model, modes=modes, dtype=dtype, device=device)


def _load_reranker(name: str, dtype: str = "float32", device: str | None = None, max_length: int | None = None):
    """A cross-encoder whose pairs are cut at `max_length` tokens by default (None: 512 capped at its limit)."""
    from m3embed.rerank import Reranker
    from m3embed.tokenize import resolve_max_length

    cross = Reranker.from_pretrained(name, dtype=dtype, device=device)
    cross.pair_max_length = resolve_max_length(max_length, cross.max_length, cross.pair_max_length,
                                               "--rerank-max-length")
    return cross


RerankMaxLengthOpt = typer.Option(None, help="pair tokens the reranker reads (default 512, capped at its limit)")

# ---- encode / score / info (foundation) ----


@app.command()
def encode(
    input: Path = typer.Argument(..., help="texts: .jsonl (field --text-field), .txt (one per line) or .parquet"),
    output: Path = typer.Option(..., "--out", "-o", help="directory to write dense.npy, sparse.npz, colbert.npy..."),
    model: str = ModelOpt,
    modes: str = typer.Option("dense", help="comma-separated: dense,sparse,colbert"),
    text_field: str = typer.Option("text", help="jsonl/parquet field holding the text"),
    id_field: str = typer.Option("id", help="jsonl/parquet field holding the id"),
    max_length: int | None = typer.Option(None, help="truncate to this many tokens (default: model limit)"),
    batch_tokens: int | None = typer.Option(None, help="padded tokens per forward pass"),
    mcls: bool = typer.Option(False, help="multiple-CLS dense pooling for long texts"),
    input_type: str = typer.Option("passage", help="passage or query: prepend the model's prompt for that role "
                                   "(e5: 'passage: ' / 'query: '; none for models without prompts); none: as is"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
    ray: bool = typer.Option(False, "--ray", help="encode on Ray into Parquet shards; INPUT: jsonl/parquet file, "
                             "directory or glob; a re-run skips finished shards (needs m3embed[ray])"),
    ray_address: str | None = typer.Option(None, help="--ray: cluster to join (auto, ray://head:10001); default: "
                                           "the running one, else a new local one"),
    actors: int = typer.Option(1, help="--ray: encoding actors (e.g. one per GPU)"),
    cpus_per_actor: float = typer.Option(1.0, help="--ray: CPUs each actor reserves"),
    gpus_per_actor: float = typer.Option(0.0, help="--ray: GPUs each actor reserves"),
    rows_per_shard: int = typer.Option(10_000, help="--ray: documents per Parquet shard"),
) -> None:
    """Encode a file of texts into dense / sparse / colbert arrays (or, with --ray, into Parquet shards)."""
    from m3embed.corpus import read_records
    from m3embed.diskspace import FILE_RESERVE, check_free
    from m3embed.modes import check_modes

    chosen = check_modes(modes)
    if ray:
        _encode_on_ray(input, output, model, chosen, text_field, id_field, max_length, batch_tokens, mcls, dtype,
                       device, ray_address, actors, cpus_per_actor, gpus_per_actor, rows_per_shard)
        return
    if output.exists() and not output.is_dir():  # checked now, not after the encoding
        raise NotADirectoryError(f"--out {output} is a file; give a directory for the outputs")
    records = list(read_records(input, text_field=text_field, id_field=id_field))
    m = _load(model, chosen, dtype, device)
    encoders = {"passage": m.encode_corpus, "query": m.encode_queries, "none": m.encode}
    if input_type not in encoders:
        raise ValueError(f"--input-type must be one of {', '.join(encoders)}, got {input_type!r}")
    if "dense" in chosen:  # the part known before encoding; M3Output.save checks the whole size
        check_free(output, len(records) * m.hidden_size * 4, f"the dense outputs of {len(records)} texts",
                   reserve=FILE_RESERVE)
    result = encoders[input_type]([r.text for r in records], modes=chosen, max_length=max_length,
                                  batch_tokens=batch_tokens, mcls=mcls, progress=None if len(records) < 1000 else True)
    result.save(output, ids=[r.id for r in records], meta={"model": model, "fingerprint": m.fingerprint,
                "modes": list(chosen), "max_length": max_length or m.max_length, "dtype": dtype,
                "input_type": input_type})
    console.print(f"encoded {len(records)} texts ({', '.join(chosen)}) into {escape(str(output))}")


def _encode_on_ray(input: Path, output: Path, model: str, modes: tuple[str, ...], text_field: str, id_field: str,
                   max_length: int | None, batch_tokens: int | None, mcls: bool, dtype: str, device: str | None,
                   address: str | None, actors: int, cpus_per_actor: float, gpus_per_actor: float,
                   rows_per_shard: int) -> None:
    from m3embed.ray_data import encode_job

    if mcls:
        raise ValueError("--mcls is not available with --ray")
    result = encode_job(input, output, model, modes, address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                        gpus_per_actor=gpus_per_actor, rows_per_part=rows_per_shard, dtype=dtype,
                        max_length=max_length, device=device, batch_tokens=batch_tokens, text_field=text_field,
                        id_field=id_field, progress=True)
    console.print(f"{escape(str(output))}: {result.written} shards written ({result.documents} documents, "
                  f"{result.docs_per_second:.1f} docs/s), {result.skipped} already there; "
                  f"{result.summary['documents']} documents in all", highlight=False)


@app.command()
def score(
    pairs: Path | None = typer.Argument(None, help="jsonl of {\"query\": ..., \"passage\": ...} lines"),
    query: str | None = typer.Option(None, "--query", "-q", help="one query (with --passage)"),
    passage: list[str] = typer.Option([], "--passage", "-p", help="passage(s) to score against --query"),
    model: str = ModelOpt,
    weights: str = typer.Option(",".join(f"{w:g}" for w in SCORE_WEIGHTS),
                                help="dense,sparse,colbert weights; hybrids are divided by their weight sum, as "
                                "FlagEmbedding's compute_score"),
    max_length: int | None = typer.Option(None, help="truncation for queries and passages"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Score (query, passage) pairs in every mode the model has, as JSON lines (compute_score's keys)."""
    import json

    from m3embed.corpus import read_pairs
    from m3embed.modes import parse_weights

    w = parse_weights(weights)
    items = read_pairs(pairs) if pairs else [(query, p) for p in passage]
    if (pairs is None) == (query is None) or not items:
        raise ValueError("give a pairs file, or --query with one or more --passage")
    rows = _load(model, ("dense",), dtype, device).compute_score(
        items, w, query_max_length=max_length, passage_max_length=max_length)
    for i, (a, b) in enumerate(items):
        typer.echo(json.dumps({"query": a, "passage": b, **{k: v[i] for k, v in rows.items()}}, ensure_ascii=False))


@app.command()
def rerank(
    pairs: Path | None = typer.Argument(None, help="jsonl of {\"query\": ..., \"passage\": ...} lines, scored in "
                                                   "file order"),
    query: str | None = typer.Option(None, "--query", "-q", help="one query whose --passage texts are ranked"),
    passage: list[str] = typer.Option([], "--passage", "-p", help="passage(s) to rank for --query, best first"),
    model: str = typer.Option(default_reranker() or ..., "--model", "-m",
                              help="cross-encoder: dir, shipped name or hub id (e.g. BAAI/bge-reranker-v2-m3)"),
    normalize: bool = typer.Option(False, help="sigmoid of the logits, scores in (0, 1)"),
    max_length: int | None = typer.Option(None, help="pair tokens (default 512, capped at the model's limit)"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Score (query, passage) pairs with a cross-encoder, as JSON lines (FlagReranker's compute_score numbers)."""
    import json

    from m3embed.corpus import read_pairs

    if (pairs is None) == (query is None) or (query is not None and not passage):
        raise ValueError("give a pairs file, or --query with one or more --passage")
    cross = _load_reranker(model, dtype, device, max_length)
    if pairs is not None:
        items = read_pairs(pairs)
        scores = cross.compute_score(items, normalize=normalize)
        rows = [{"query": q, "passage": p, "score": s} for (q, p), s in zip(items, scores)]
    else:
        ranked = cross.rank([query], [passage], normalize=normalize)[0]
        rows = [{"query": query, "index": i, "passage": passage[i], "score": s} for i, s in ranked]
    for row in rows:
        typer.echo(json.dumps(row, ensure_ascii=False))


@app.command()
def demo(
    model: str | None = typer.Option(None, "--model", "-m", help="default: the shipped offline M3 model"),
    index: Path | None = typer.Option(None, help="index directory, reopened and completed (default: "
                                      "m3embed-demo-index/<model>)"),
    k: int = typer.Option(3, help="hits per mode"),
) -> None:
    """Index the bundled sample corpus offline and show each search mode's results side by side."""
    from m3embed.demo import run

    run(model, index, k=k, console=out)


@app.command()
def info(model: str = ModelOpt) -> None:
    """Show what a checkpoint is: backbone, sizes, limits, pooling, heads, fingerprint."""
    m = _load(model, ("dense",))
    cfg = m.backbone.config
    table = Table(show_header=False, title=Text(f"m3embed model: {model}"))
    rows = {
        "backbone": f"{cfg.model_type} ({type(m.backbone).__name__})",
        "layers / hidden / heads": f"{cfg.num_hidden_layers} / {cfg.hidden_size} / {cfg.num_attention_heads}",
        "vocab size": str(m.vocab_size),
        "max length (tokens)": str(m.max_length),
        "dense pooling": m.pooling,
        "query / passage prefix": f"{m.query_prefix!r} / {m.passage_prefix!r}",
        "modes": ", ".join(m.available_modes()),
        "parameters": f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f} M",
        "fingerprint": m.fingerprint,
    }
    for k, v in rows.items():
        table.add_row(k, Text(v))
    out.print(table)

# ---- index / search (index) ----

index_app = typer.Typer(no_args_is_help=True, help="Build and manage M3 indexes (Qdrant Edge on disk, or Qdrant).")
app.add_typer(index_app, name="index")
IndexArg = typer.Argument(..., help="index directory, Qdrant URL (http://host:6333)")
CollectionOpt = typer.Option("m3embed", help="collection name (qdrant engine)")


def _index_model(index, model: str | None, dtype: str, device: str | None):
    """Load `model` (default: the one the index records) and attach it; a different model is refused."""
    name = model or index.manifest.model_name
    if not name:
        raise ValueError(f"index {index.location} records no model path; pass --model")
    index.attach(_load(name, index.manifest.modes, dtype, device))
    return index.model


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
    create = {"engine": engine, "colbert_dtype": colbert_dtype, "store_text": store_text, "collection": collection,
              "collection_options": options or None}
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
def index_info(index: str = IndexArg, collection: str = CollectionOpt) -> None:
    """Show what an index holds: engine, model, modes, sizes, document count."""
    from m3embed.index import open_index

    with open_index(index, collection=collection) as idx:
        table = Table(show_header=False, title=Text(f"m3embed index: {index}"))
        for k, v in idx.info().items():
            table.add_row(k, Text(", ".join(v) if isinstance(v, list) else str(v)))
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


# ---- eval (evaluation) ----


@app.command("eval")
def eval_command(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="BEIR dir: corpus.jsonl, queries.jsonl, qrels*.tsv"),
    qrels: str = typer.Option("qrels.tsv", help="qrels file in the dataset dir, e.g. qrels.dev.tsv"),
    model: str | None = typer.Option(None, "--model", "-m", help="checkpoint dir, shipped name or hub id; "
                                        "omit to run only the BM25 baseline"),
    modes: str | None = typer.Option(None, help=f"comma-separated among {','.join(SEARCH_MODES)} "
                                        "(default: every mode the model's heads allow)"),
    index: Path | None = typer.Option(None, help="index dir to use or create (default: a temporary Qdrant "
                                         "Edge index, deleted afterwards)"),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="where eval.json/.md/.png go "
                                           "(default: eval-<dataset>)"),
    k: int = typer.Option(100, "-k", help="documents retrieved per query (>= 100 for Recall@100)"),
    weights: str = SearchWeightsOpt,
    candidates: int | None = typer.Option(None, help="dense and sparse candidates rescored by hybrid modes "
                                             "(default: max(k, 100))"),
    query_max_length: int | None = typer.Option(None, help="query truncation in tokens (default 512 capped at "
                                                  "the model's limit; a larger value than the limit is an error)"),
    passage_max_length: int | None = typer.Option(None, help="passage truncation in tokens (default 512 capped at "
                                                    "the model's limit)"),
    bm25: bool = typer.Option(True, "--bm25/--no-bm25", help="include the BM25 baseline"),
    k1: float = typer.Option(0.9, help="BM25 k1"),
    b: float = typer.Option(0.4, help="BM25 b"),
    stopwords: str = typer.Option("en", help="BM25 stopwords: en or none"),
    max_queries: int | None = typer.Option(None, help="evaluate only the first N judged queries"),
    batch_size: int = typer.Option(256, help="texts encoded per call"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
    progress: bool = typer.Option(True, help="progress bars on stderr (indexing, queries, BM25)"),
    reranker: str | None = typer.Option(None, help="cross-encoder (dir, shipped name or hub id): adds a "
                                                   "<mode>+rerank row per mode"),
    rerank_top: int = typer.Option(DEFAULT_RERANK_TOP, help="documents of each mode's run the --reranker rescores"),
    rerank_max_length: int | None = RerankMaxLengthOpt,
) -> None:
    """Evaluate M3 modes and BM25 on a dataset: nDCG@10, Recall@100, MRR@10 as JSON, Markdown and a PNG chart."""
    from m3embed import evaluate as ev
    from m3embed.modes import check_search_modes, index_representations, parse_weights, servable

    ev.require_extras()  # a missing [eval] extra fails here, before any loading or encoding
    w = parse_weights(weights)
    chosen = check_search_modes(modes) if modes else None
    if model is None and (chosen or index is not None):
        raise ValueError("--modes and --index need a --model")
    data = ev.load_dataset(dataset, qrels=qrels)
    data = data.head(max_queries) if max_queries is not None else data
    m = None if model is None else _load(model, index_representations(chosen or ("dense",)), dtype, device)
    settings = ev.M3Settings(modes=chosen or (() if m is None else servable(m.available_modes())), weights=w,
                             candidates=candidates, query_max_length=query_max_length,
                             passage_max_length=passage_max_length, index_dir=index, rerank_top=rerank_top)
    cross = _load_reranker(reranker, dtype, device, rerank_max_length) if reranker else None
    result = ev.evaluate_dataset(data, m, k=k, m3=settings, bm25=ev.BM25Config(k1, b, stopwords) if bm25 else None,
                                 batch_size=batch_size, progress=progress, reranker=cross)
    paths = ev.write_report(result, out_dir or Path(f"eval-{data.name.replace('/', '_')}"))
    out.print(ev.console_table(result))
    console.print(f"wrote {escape(', '.join(str(p) for p in paths.values()))}", highlight=False)

# ---- train / mine (training) ----


def _train_option(field: str, *flags: str, help: str, config: str = "TrainConfig") -> typer.models.OptionInfo:
    """A training option setting `config`.`field` (a class of m3embed.train.config), with its default (one place
    for defaults)."""
    from m3embed.train import config as configs  # torch-free

    default = getattr(configs, config).__dataclass_fields__[field].default
    return typer.Option(",".join(default) if isinstance(default, tuple) else default, *flags, help=help)


def _reranker_option(field: str, *flags: str, help: str) -> typer.models.OptionInfo:
    return _train_option(field, *flags, help=help, config="RerankerTrainConfig")


@app.command("train")
def train_command(  # every parameter is named as the TrainConfig field it sets
    train_data: list[Path] = typer.Argument(..., metavar="DATA",
                                            help="jsonl files or directories of *.jsonl: {query, pos, neg}"),
    model: str = typer.Option(..., "--model", "-m", help="M3 checkpoint or plain encoder (dir or hub id)"),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="final model, checkpoint-N/, train_log.jsonl"),
    modes: str = _train_option("modes", help="losses to train: 'dense' = dense only, all three = unified M3 "
                               "(ensemble + self-distillation), or any subset"),
    freeze: str = _train_option("freeze", help="parts kept fixed, comma-separated: encoder, sparse, colbert "
                                "('encoder' trains the heads only)"),
    pooling: str | None = _train_option("pooling", help="override dense pooling: cls or mean"),
    train_group_size: int = _train_option("train_group_size", help="passages per query: 1 positive + N-1 negatives"),
    query_max_length: int | None = _train_option(
        "query_max_length", help="query truncation in tokens (default: 64, capped at the model's positions)"),
    passage_max_length: int | None = _train_option(
        "passage_max_length", help="passage truncation in tokens (default: 256, capped at the model's positions)"),
    per_device_batch_size: int = _train_option("per_device_batch_size", "--per-device-batch-size", "--batch-size",
                                               help="queries per process per step"),
    group_by_length: bool = _train_option("group_by_length", help="batches of similar length"),
    teacher_scores: str = _train_option("teacher_scores", help="use pos_scores/neg_scores: auto, on, off"),
    temperature: float = _train_option("temperature", help="softmax temperature of every score"),
    self_distill: bool = _train_option("self_distill", help="self-knowledge distillation (unified training)"),
    self_distill_start_step: int = _train_option("self_distill_start_step",
                                                 help="distil once the step exceeds this (-1: from the start)"),
    kd_loss: str = _train_option("kd_loss", help="loss on teacher scores: m3_kd_loss or kl_div"),
    negatives_cross_device: bool = _train_option(
        "negatives_cross_device", "--negatives-cross-device/--no-negatives-cross-device",
        "--cross-device-negatives/--no-cross-device-negatives", help="dense negatives from every process"),
    learning_rate: float = _train_option("learning_rate", "--learning-rate", "--lr", help="peak learning rate"),
    weight_decay: float = _train_option("weight_decay", help="AdamW weight decay (not on biases and norms)"),
    lr_scheduler: str = _train_option("lr_scheduler", help="linear, cosine, constant_with_warmup, constant"),
    warmup_ratio: float = _train_option("warmup_ratio", help="share of the steps spent warming up"),
    warmup_steps: int = _train_option("warmup_steps", help="warm-up steps; overrides --warmup-ratio when > 0"),
    epochs: float = _train_option("epochs", help="passes over the data (fractions allowed)"),
    max_steps: int = _train_option("max_steps", help="> 0 overrides --epochs"),
    max_grad_norm: float = _train_option("max_grad_norm", help="gradient clipping norm (0: no clipping)"),
    bf16: bool = _train_option("bf16", help="bf16 autocast for the encoder"),
    gradient_checkpointing: bool = _train_option("gradient_checkpointing",
                                                 help="recompute encoder layers in the backward pass"),
    sub_batch_size: int | None = _train_option("sub_batch_size",
                                               help="texts per checkpointed encoder chunk (saves memory)"),
    cache_encoder_states: bool | None = _train_option(
        "cache_encoder_states", "--cache-encoder-states/--no-cache-encoder-states",
        help="frozen encoder: encode each text once and train the heads on cached states "
        "(default: on when --freeze has encoder)"),
    seed: int = _train_option("seed", help="seed of the data order, group sampling and new heads"),
    device: str | None = _train_option("device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if "
                                       "available)"),
    save_steps: int = _train_option("save_steps", help="checkpoint every N steps (0: final model only)"),
    save_total_limit: int = _train_option("save_total_limit", help="checkpoints kept (0: all)"),
    resume_from: str | None = _train_option("resume_from", "--resume-from", "--resume",
                                            help="checkpoint-N dir, or 'auto' for the newest in --output-dir"),
    logging_steps: int = _train_option("logging_steps", help="a train_log.jsonl line every N steps"),
    progress: bool = _train_option("progress", help="progress bar"),
) -> None:
    """Fine-tune an M3 model (run under `torchrun --no-python --nproc_per_node N m3embed train ...` for DDP)."""
    options = dict(locals())  # the parameters above, before any other local name exists
    import json

    from m3embed.train.config import TrainConfig
    from m3embed.train.trainer import LOG_FILE, train

    config = TrainConfig(**options)
    result = train(config)
    from m3embed.train import distributed

    if distributed.is_main_process():
        lines = (result / LOG_FILE).read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        parts = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "dense", "sparse", "colbert", "inter") if k in last)
        console.print(f"trained {last.get('step', 0)} steps ({parts}); model saved to {result}", highlight=False)


@app.command("train-reranker")
def train_reranker_command(  # every parameter is named as the RerankerTrainConfig field it sets
    train_data: list[Path] = typer.Argument(..., metavar="DATA",
                                            help="jsonl files or directories of *.jsonl: {query, pos, neg}"),
    model: str = typer.Option(..., "--model", "-m", help="reranker checkpoint, or a plain encoder that gets a new "
                              "classification head (dir, shipped name or hub id)"),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="final model, checkpoint-N/, train_log.jsonl"),
    train_layers: int | None = _reranker_option("train_layers", help="train only this many top encoder layers "
                                                "(and the head); default: the whole model"),
    train_group_size: int = _reranker_option("train_group_size", help="pairs per query: 1 positive + N-1 negatives"),
    query_max_length: int | None = _reranker_option(
        "query_max_length", help="query share of a pair in tokens (default 32; a pair holds query + passage)"),
    passage_max_length: int | None = _reranker_option(
        "passage_max_length", help="passage share of a pair in tokens (default 128)"),
    per_device_batch_size: int = _reranker_option("per_device_batch_size", "--per-device-batch-size",
                                                  "--batch-size", help="queries per process per step"),
    group_by_length: bool = _reranker_option("group_by_length", help="batches of similar length"),
    teacher_scores: str = _reranker_option("teacher_scores", help="distil from pos_scores/neg_scores: auto, on, off"),
    learning_rate: float = _reranker_option("learning_rate", "--learning-rate", "--lr", help="peak learning rate"),
    weight_decay: float = _reranker_option("weight_decay", help="AdamW weight decay (not on biases and norms)"),
    lr_scheduler: str = _reranker_option("lr_scheduler", help="linear, cosine, constant_with_warmup, constant"),
    warmup_ratio: float = _reranker_option("warmup_ratio", help="share of the steps spent warming up"),
    warmup_steps: int = _reranker_option("warmup_steps", help="warm-up steps; overrides --warmup-ratio when > 0"),
    epochs: float = _reranker_option("epochs", help="passes over the data (fractions allowed)"),
    max_steps: int = _reranker_option("max_steps", help="> 0 overrides --epochs"),
    max_grad_norm: float = _reranker_option("max_grad_norm", help="gradient clipping norm (0: no clipping)"),
    bf16: bool = _reranker_option("bf16", help="bf16 autocast"),
    gradient_checkpointing: bool = _reranker_option("gradient_checkpointing",
                                                    help="recompute encoder layers in the backward pass"),
    sub_batch_size: int | None = _reranker_option("sub_batch_size", help="pairs per checkpointed chunk"),
    seed: int = _reranker_option("seed", help="seed of the data order, group sampling and a new head"),
    device: str | None = _reranker_option("device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if "
                                          "available)"),
    save_steps: int = _reranker_option("save_steps", help="checkpoint every N steps (0: final model only)"),
    save_total_limit: int = _reranker_option("save_total_limit", help="checkpoints kept (0: all)"),
    resume_from: str | None = _reranker_option("resume_from", "--resume-from", "--resume",
                                               help="checkpoint-N dir, or 'auto' for the newest in --output-dir"),
    logging_steps: int = _reranker_option("logging_steps", help="a train_log.jsonl line every N steps"),
    progress: bool = _reranker_option("progress", help="progress bar"),
) -> None:
    """Fine-tune a cross-encoder reranker (FlagEmbedding's recipe: cross-entropy over 1 positive + N-1 negatives)."""
    options = dict(locals())  # the parameters above, before any other local name exists
    import json

    from m3embed.train import distributed
    from m3embed.train.config import RerankerTrainConfig
    from m3embed.train.reranker import train_reranker
    from m3embed.train.trainer import LOG_FILE

    result = train_reranker(RerankerTrainConfig(**options))
    if distributed.is_main_process():
        lines = (result / LOG_FILE).read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        parts = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "ce", "distill") if k in last)
        console.print(f"trained {last.get('step', 0)} steps ({parts}); reranker saved to {result}", highlight=False)


@app.command()
def mine(
    input: Path = typer.Argument(..., help="jsonl training lines {query, pos[, neg]}"),
    output: Path = typer.Option(..., "--out", "-o", help="jsonl to write, with mined 'neg' lists"),
    model: str = ModelOpt,
    range_: str = typer.Option("2-200", "--range", help="rank range START-END to sample from (0-based, END "
                               "excluded, as FlagEmbedding's range_for_sampling)"),
    negatives: int = typer.Option(15, help="negatives per line"),
    modes: str = typer.Option("dense", help="dense, sparse, or dense,sparse (hybrid)"),
    weights: str = typer.Option("1,0.3", help="hybrid weights: dense,sparse"),
    pool: Path | None = typer.Option(None, help="candidate pool jsonl ('text' field); default: all pos+neg"),
    query_max_length: int | None = typer.Option(None, help="query truncation in tokens (default: the model's limit)"),
    passage_max_length: int | None = typer.Option(None, help="passage truncation in tokens (default: the model's "
                                                  "limit)"),
    seed: int = typer.Option(42, help="seed of the negative sampling"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Mine hard negatives: retrieve with the model, sample from a rank range, never a positive."""
    from m3embed.train.mine import mine_hard_negatives

    try:
        w = tuple(float(x) for x in weights.split(","))
    except ValueError:
        raise ValueError(f"--weights {weights!r} must be numbers like 1,0.3") from None
    m = _load(model, modes, dtype, device)
    stats = mine_hard_negatives(m, input, output, candidate_pool=pool, sample_range=range_,
                                negative_number=negatives, modes=modes, weights=w, query_max_length=query_max_length,
                                passage_max_length=passage_max_length, seed=seed)
    console.print(f"{stats.lines} lines, {stats.candidates} candidates, {stats.mean_negatives:.1f} negatives per "
                  f"line ({stats.topped_up} topped up at random) -> {output}", highlight=False)
    if stats.dropped_teacher_scores:
        console.print(f"[yellow]note:[/yellow] dropped pos/neg_scores on {stats.dropped_teacher_scores} lines "
                      "(the new negatives have no teacher scores)", highlight=False)

# ---- serve (service) ----


@app.command()
def serve(
    model: str | None = typer.Option(None, "--model", "-m", help="checkpoint dir, shipped name or hub id (default: "
                                     f"the model --index records, else {DEFAULT_MODEL})"),
    index: Path | None = typer.Option(None, help="index directory to serve /v1/search and /v1/documents"),
    reranker: str | None = typer.Option(None, help="cross-encoder (dir, shipped name or hub id) to serve /v1/rerank "
                                                   "and /v1/search's rerank; clients name it by this value"),
    rerank_max_length: int | None = RerankMaxLengthOpt,
    host: str = typer.Option("127.0.0.1", help="interface to listen on (loopback by default)"),
    port: int = typer.Option(8000, help="TCP port"),
    api_key: str | None = typer.Option(None, envvar="M3EMBED_API_KEY",
                                          help="require 'Authorization: Bearer KEY' on /v1/* and /metrics"),
    served_model_name: str | None = typer.Option(None, help="name clients pass as `model` (default: --model)"),
    max_length: int | None = typer.Option(None, help="tokens per text, longer ones truncated (default: model limit)"),
    max_items: int = typer.Option(2048, help="texts, pairs or documents per request"),
    max_chars: int = typer.Option(100_000, help="characters per text"),
    max_body_mb: float = typer.Option(32.0, help="request body limit in MiB"),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="merge concurrent requests"),
    max_batch_tokens: int | None = typer.Option(
        None, help="padded tokens (texts x longest) per model call; larger requests are split into chunks of this "
        "size that take turns with other requests, smaller ones merged (default: 1024 on CPU, 16384 on GPU)"),
    max_wait_ms: float = typer.Option(0.0, help="extra wait to fill a batch (0: merge what queued meanwhile)"),
    batch_tokens: int | None = typer.Option(None, help="padded tokens per forward pass inside a model call"),
    max_queue: int = typer.Option(4096, help="queued requests beyond which the server answers 503"),
    graceful_timeout: float = typer.Option(30.0, help="seconds queued and in-flight requests get on shutdown "
                                                      "(SIGTERM); what is left then gets a 503"),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Serve the model (and an index) over HTTP: OpenAI-compatible /v1/embeddings plus all of M3."""
    import os
    import signal

    from m3embed.server import Server, ServerSettings, create_app

    # tokenizers' own thread pool takes every core while it tokenizes: counting a 2,048-text request's tokens held
    # up the event loop and the model worker for over a second on 2 cores (every other client waited); tokenize on
    # the calling thread instead (TOKENIZERS_PARALLELISM=true overrides)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    _check_port_free(host, port)
    idx = None
    if index is not None:
        from m3embed.index import open_index

        idx = open_index(index)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:  # the model the index records unless --model says otherwise (another model is refused)
        m = _index_model(idx, model, dtype, device) if idx else _load(model or DEFAULT_MODEL, ("dense",), dtype, device)
        cross = _load_reranker(reranker, dtype, device, rerank_max_length) if reranker else None
    except BaseException:
        if idx is not None:
            idx.close()
        raise
    settings = ServerSettings(
        model_name=served_model_name or m.name, api_key=api_key or None, max_items=max_items, max_chars=max_chars,
        max_body_bytes=int(max_body_mb * 2**20), max_length=max_length, batching=batching,
        max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_queue=max_queue, batch_tokens=batch_tokens,
        graceful_timeout=graceful_timeout)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the previous handler: make
    # that handler end `run` with an exception, so the index is closed below and the exit status is 0
    previous = signal.signal(signal.SIGTERM, _stop_serving)
    try:
        web = create_app(m, idx, settings, cross)
        console.print(f"serving {settings.model_name} ({', '.join(m.available_modes())}"
                      f"{'; index ' + str(index) if idx is not None else ''}"
                      f"{'; reranker ' + reranker if cross is not None else ''}) on http://{host}:{port}"
                      f"{' with an API key' if settings.api_key else ''}", markup=False)
        server = Server(web, host=host, port=port, log_level=log_level)
        server.run()
        if not server.started:  # as uvicorn.run: the socket or the app's startup failed (uvicorn logged why)
            sys.exit(3)
    except (_StopServing, KeyboardInterrupt):
        console.print("server stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if idx is not None:
            idx.close()


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading anything when the address is taken (uvicorn would exit after start-up)."""
    import socket

    try:
        socket.create_server((host, port)).close()
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or stop the "
                         "process using it") from None


class _StopServing(Exception):
    """Raised by the SIGTERM handler once uvicorn has finished its graceful shutdown."""


def _stop_serving(signum: int, frame: object) -> None:
    raise _StopServing


USER_ERRORS = (ValueError, TypeError, KeyError, MissingExtra,  # MissingExtra: the message names the extra
               OSError)  # missing files, permissions, a full disk, an unreachable server: the message names them


def main() -> None:
    """Entry point: run the app; user mistakes become one clear line and exit code 2."""
    import warnings

    # qdrant-client checks a server's version on a thread of its own and warns when it gets no answer; an
    # unreachable server is reported by the first request instead, as one line naming the URL
    warnings.filterwarnings("ignore", message="Failed to obtain server version")
    try:
        app()
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else _os_message(e) if isinstance(e, OSError) else e
        # one line, never wrapped; escaped, so "[serve]" in a message is printed, not read as markup
        console.print(f"[red]error:[/red] {escape(' '.join(str(msg).split()))}", highlight=False, soft_wrap=True)
        sys.exit(2)


def _os_message(e: OSError) -> str:
    """An OSError as one line naming its path: ours carry a full message; the system's get the path added."""
    from m3embed.diskspace import DiskFullError, is_disk_full

    if isinstance(e, DiskFullError) or not e.strerror:
        return str(e)
    where = f": {e.filename}" if e.filename else ""
    if is_disk_full(e):
        return f"no space left on the device{where}; free some space or choose another location"
    return f"{e.strerror}{where}" + (f" -> {e.filename2}" if getattr(e, "filename2", None) else "")
