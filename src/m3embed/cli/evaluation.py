"""`m3embed eval`: M3 modes (and rerankers) against BM25 on a dataset."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from m3embed.cli._common import (
    DeviceOpt,
    DtypeOpt,
    PairMaxLengthOpt,
    SearchWeightsOpt,
    _load,
    _load_reranker,
    app,
    console,
    out,
)
from m3embed.modes import DEFAULT_RERANK_TOP, SEARCH_MODES


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
    weights: str | None = SearchWeightsOpt,
    candidates: int | None = typer.Option(None, help="dense and sparse candidates rescored by hybrid modes "
                                             "(default: max(k, 100))"),
    query_max_length: int | None = typer.Option(None, help="query truncation in tokens (default: the model's "
                                                  "query_max_length; a value above its limit is an error)"),
    passage_max_length: int | None = typer.Option(None, help="passage truncation in tokens (default: the model's "
                                                    "passage_max_length)"),
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
    pair_max_length: int | None = PairMaxLengthOpt,
) -> None:
    """Evaluate M3 modes and BM25 on a dataset: nDCG@10, Recall@100, MRR@10 as JSON, Markdown and a PNG chart."""
    from m3embed import evaluate as ev
    from m3embed.modes import check_search_modes, index_representations, parse_weights, servable

    ev.require_extras()  # a missing [eval] extra fails here, before any loading or encoding
    w = None if weights is None else parse_weights(weights)
    chosen = check_search_modes(modes) if modes else None
    if model is None and (chosen or index is not None):
        raise ValueError("--modes and --index need a --model")
    data = ev.load_dataset(dataset, qrels=qrels)
    data = data.head(max_queries) if max_queries is not None else data
    m = None if model is None else _load(model, index_representations(chosen or ("dense",)), dtype, device)
    settings = ev.M3Settings(modes=chosen or (() if m is None else servable(m.available_modes())), weights=w,
                             candidates=candidates, query_max_length=query_max_length,
                             passage_max_length=passage_max_length, index_dir=index, rerank_top=rerank_top)
    cross = _load_reranker(reranker, dtype, device, pair_max_length) if reranker else None
    result = ev.evaluate_dataset(data, m, k=k, m3=settings, bm25=ev.BM25Config(k1, b, stopwords) if bm25 else None,
                                 batch_size=batch_size, progress=progress, reranker=cross)
    paths = ev.write_report(result, out_dir or Path(f"eval-{data.name.replace('/', '_')}"))
    out.print(ev.console_table(result))
    console.print(f"wrote {escape(', '.join(str(p) for p in paths.values()))}", highlight=False)
