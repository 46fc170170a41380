"""Commands over texts and models: encode, score, rerank, demo, info."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from m3embed.cli._common import (
    DeviceOpt,
    DtypeOpt,
    GenerateIdsOpt,
    ModelOpt,
    _load,
    _load_reranker,
    app,
    console,
    out,
)
from m3embed.modes import DEFAULT_ROLE, SCORE_WEIGHTS
from m3embed.sources import DEFAULT_RERANKER


@app.command()
def encode(
    input: Path = typer.Argument(..., help="texts: .jsonl (field --text-field), .txt (one per line) or .parquet"),
    output: Path = typer.Option(..., "--out", "-o", help="directory to write dense.npy, sparse.npz, colbert.npy..."),
    model: str = ModelOpt,
    modes: str = typer.Option("dense", help="comma-separated: dense,sparse,colbert"),
    text_field: str = typer.Option("text", help="jsonl/parquet field holding the text"),
    id_field: str = typer.Option("id", help="jsonl/parquet field holding the id"),
    generate_ids: bool = GenerateIdsOpt,
    max_length: int | None = typer.Option(None, help="truncate to this many tokens (default: model limit)"),
    batch_tokens: int | None = typer.Option(None, help="padded tokens per forward pass"),
    mcls: bool = typer.Option(False, help="multiple-CLS dense pooling for long texts"),
    role: str = typer.Option(DEFAULT_ROLE or "none", "--input-type",
                             help="passage or query: prepend the model's prompt for that role (e5: 'passage: ' / "
                             "'query: '; nothing for models without prompts); none: the text as given"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
    ray: bool = typer.Option(False, "--ray", help="encode on Ray into Parquet shards; INPUT: jsonl/parquet file, "
                             "directory or glob; a re-run skips finished shards (needs m3embed\\[ray])"),
    ray_address: str | None = typer.Option(None, help="--ray: cluster to join (auto, ray://head:10001); default: "
                                           "the running one, else a new local one"),
    actors: int = typer.Option(1, help="--ray: encoding actors (e.g. one per GPU)"),
    cpus_per_actor: float = typer.Option(1.0, help="--ray: CPUs each actor reserves"),
    gpus_per_actor: float = typer.Option(0.0, help="--ray: GPUs each actor reserves"),
    rows_per_part: int = typer.Option(10_000, "--rows-per-part", "--rows-per-shard",
                                      help="--ray: documents per part (one Parquet shard each)"),
) -> None:
    """Encode a file of texts into dense / sparse / colbert arrays (or, with --ray, into Parquet shards)."""
    from m3embed.corpus import read_records
    from m3embed.diskspace import FILE_RESERVE, check_free
    from m3embed.modes import check_modes

    chosen = check_modes(modes)
    if ray:
        _encode_on_ray(input, output, model, chosen, text_field, id_field, generate_ids, max_length, batch_tokens,
                       mcls, dtype, device, ray_address, actors, cpus_per_actor, gpus_per_actor, rows_per_part)
        return
    if output.exists() and not output.is_dir():  # checked now, not after the encoding
        raise NotADirectoryError(f"--out {output} is a file; give a directory for the outputs")
    records = list(read_records(input, text_field=text_field, id_field=id_field, generate_ids=generate_ids))
    m = _load(model, chosen, dtype, device)
    encoders = {"passage": m.encode_corpus, "query": m.encode_queries, "none": m.encode}
    if role not in encoders:
        raise ValueError(f"--input-type must be one of {', '.join(encoders)}, got {role!r}")
    if "dense" in chosen:  # the part known before encoding; M3Output.save checks the whole size
        check_free(output, len(records) * m.hidden_size * 4, f"the dense outputs of {len(records)} texts",
                   reserve=FILE_RESERVE)
    # a bar on stderr for any size (it was shown from 1,000 records: 240 paragraphs ran 20 s silent)
    result = encoders[role]([r.text for r in records], modes=chosen, max_length=max_length,
                            batch_tokens=batch_tokens, mcls=mcls, progress=True)
    result.save(output, ids=[r.id for r in records], meta={"model": model, "fingerprint": m.fingerprint,
                "modes": list(chosen), "max_length": max_length or m.max_length, "dtype": dtype,
                "input_type": role})
    console.print(f"encoded {len(records)} texts ({', '.join(chosen)}) into {escape(str(output))}")


def _encode_on_ray(input: Path, output: Path, model: str, modes: tuple[str, ...], text_field: str, id_field: str,
                   generate_ids: bool, max_length: int | None, batch_tokens: int | None, mcls: bool, dtype: str,
                   device: str | None,
                   address: str | None, actors: int, cpus_per_actor: float, gpus_per_actor: float,
                   rows_per_part: int) -> None:
    from m3embed.ray_data import encode_job

    if mcls:
        raise ValueError("--mcls is not available with --ray")
    result = encode_job(input, output, model, modes, address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                        gpus_per_actor=gpus_per_actor, rows_per_part=rows_per_part, dtype=dtype,
                        max_length=max_length, device=device, batch_tokens=batch_tokens, text_field=text_field,
                        id_field=id_field, generate_ids=generate_ids, progress=True)
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
    model: str = typer.Option(DEFAULT_RERANKER, "--model", "-m",
                              help="cross-encoder: dir, shipped name or hub id (the default comes from the Hugging "
                                   "Face hub; the shipped minilm-reranker is a recipe demonstration that lowers "
                                   "quality)"),
    normalize: bool = typer.Option(False, help="sigmoid of the logits, scores in (0, 1)"),
    pair_max_length: int | None = typer.Option(None, "--pair-max-length", "--max-length",
                                               help="pair tokens (default 512, capped at the model's limit)"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Score (query, passage) pairs with a cross-encoder, as JSON lines (FlagReranker's compute_score numbers)."""
    import json

    from m3embed.corpus import read_pairs

    if (pairs is None) == (query is None) or (query is not None and not passage):
        raise ValueError("give a pairs file, or --query with one or more --passage")
    cross = _load_reranker(model, dtype, device, pair_max_length)
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
