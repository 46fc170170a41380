"""What every command shares: the app, the consoles, common options, model loading."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from m3embed.index.directory import DEFAULT_COLLECTION
from m3embed.sources import default_model

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="BGE-M3 end to end: encode, score, index, search, evaluate, train, serve.")
console = Console(stderr=True)
out = Console()

DEFAULT_MODEL = default_model()  # offline: e5-m3-small, else minilm-m3, else the dense-only MiniLM backbone
ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m", help="checkpoint dir, shipped name or hub id")
DtypeOpt = typer.Option("float32", help="float32 (exact), bfloat16 (CPU AVX512-BF16 / GPU), float16 (GPU), int8 (CPU)")
DeviceOpt = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
SearchWeightsOpt = typer.Option(None, help="dense,sparse,colbert weights of the hybrid modes (plain weighted "
                                "sums; default the index's: its model's search_weights, else 0.4,0.2,0.4)")


def _load(model: str, modes, dtype: str = "float32", device: str | None = None):
    from m3embed.model import M3Model

    return M3Model.from_pretrained(model, modes=modes, dtype=dtype, device=device)


def _load_reranker(name: str, dtype: str = "float32", device: str | None = None,
                   pair_max_length: int | None = None):
    """A cross-encoder whose pairs are cut at `pair_max_length` tokens by default (None: its own default)."""
    from m3embed.rerank import Reranker
    from m3embed.tokenize import resolve_max_length

    cross = Reranker.from_pretrained(name, dtype=dtype, device=device)
    cross.pair_max_length = resolve_max_length(pair_max_length, cross.max_length, cross.pair_max_length,
                                               "--pair-max-length")
    return cross


GenerateIdsOpt = typer.Option(False, "--generate-ids", help="give records without an id one made from their content "
                              "(24 hex digits of sha256 over text and fields): a record in two files keeps one id, "
                              "two different records never share one")
PairMaxLengthOpt = typer.Option(None, "--pair-max-length", "--rerank-max-length",
                                help="pair tokens the reranker reads (default 512, capped at its limit)")


IndexArg = typer.Argument(..., help="index directory, Qdrant URL (http://host:6333)")
CollectionOpt = typer.Option(DEFAULT_COLLECTION, help="collection name (qdrant engine)")


def _commit_report(log_commits: bool):
    """With --log-commits, a line on stdout per durable batch (for scripts that watch progress); else None."""
    if not log_commits:
        return None

    def report(stats) -> None:
        typer.echo(f"committed {stats.seen} records ({stats.added} added, {stats.skipped} already stored)")
        sys.stdout.flush()

    return report


def _index_model(index, model: str | None, dtype: str, device: str | None, *, queries_only: bool = False):
    """Load `model` (default: the one the index records) and attach it; a different model is refused.

    `queries_only` (a command that encodes a few queries and exits): in float32 on CPU, the index's own model
    runs in NumPy (`m3embed.numpy_encoder`, no torch to import) when it covers the checkpoint.
    """
    name = model or index.manifest.model_name
    if not name:
        raise ValueError(f"index {index.location} records no model path; pass --model")
    if queries_only and dtype == "float32" and device in (None, "cpu"):
        from m3embed.numpy_encoder import NumpyEncoder

        manifest = index.manifest  # an index of fingerprint scheme 1 never matches: M3Model checks it
        fast = NumpyEncoder.load(name, manifest.fingerprint) if manifest.fingerprint_version == 2 else None
        if fast is not None and set(manifest.modes) <= set(fast.available_modes()):
            index.attach(fast)
            return fast
    index.attach(_load(name, index.manifest.modes, dtype, device))
    return index.model
