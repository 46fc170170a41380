"""The main job of `make demo`: index the bundled sample corpus offline and compare the search modes.

It builds (or reopens and completes) an index of 240 English Wikipedia paragraphs on the embedded engine
(Qdrant Edge, on disk), then runs a few questions, in English and in other languages (cross-lingual search of
the English corpus), and prints, per question, the top hits of every mode the model has side by side.
"""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from m3embed.corpus import read_records
from m3embed.index import open_index
from m3embed.index.ingest import ingest
from m3embed.model import M3Model
from m3embed.modes import servable
from m3embed.sources import default_model

SAMPLE = Path(__file__).parent / "data" / "xquad_en_paragraphs.jsonl"
ENGLISH_QUERIES = (
    "Who discovered oxygen, and when?",
    "How did the Amazon rainforest form?",
    "Which river flows through the Rhine Gorge between Bingen and Bonn?",
    "What does computational complexity theory study?",
)
# the English corpus searched in other languages (a multilingual model is needed for these)
CROSS_LINGUAL_QUERIES = (
    "Wer hat den Sauerstoff entdeckt?",  # de: who discovered oxygen? (xq-12)
    "亚马逊雨林是如何形成的？",  # zh: how did the Amazon rainforest form? (xq-16)
)
QUERIES = ENGLISH_QUERIES + CROSS_LINGUAL_QUERIES


def run(model_name: str | None = None, index_dir: str | Path | None = None, k: int = 3,
        queries: tuple[str, ...] = QUERIES, console: Console | None = None, corpus: Path = SAMPLE,
        ) -> dict[str, dict[str, list[str]]]:
    """Index the sample corpus and print each mode's top-k for each query; returns {query: {mode: ids}}.

    The index lives in `index_dir`, by default m3embed-demo-index/<model name> (one per model: an index refuses
    another model).
    """
    console = console or Console()
    model_name = model_name or default_model()
    index_dir = index_dir or Path("m3embed-demo-index") / re.sub(r"[^\w.-]+", "_", model_name)
    model = M3Model.from_pretrained(model_name, modes=("dense",))
    modes = model.available_modes()
    console.print(f"[bold]model[/bold] {escape(model_name)} ({', '.join(modes)}); "
                  f"[bold]index[/bold] {escape(str(index_dir))}")
    if modes == ("dense",):
        console.print("[yellow]this model has no trained sparse/colbert heads: dense mode only[/yellow]")
    results: dict[str, dict[str, list[str]]] = {}
    with open_index(index_dir, model, create=True, modes=modes) as index:
        stats = ingest(index, read_records(corpus), batch_size=32, progress=True)
        console.print(f"{index.count()} documents indexed ({stats.added} added now)")
        search_modes = servable(modes)
        for query in queries:
            table = Table(title=escape(f"“{query}”"), show_lines=True, expand=True)
            table.add_column("#", width=2)
            ranked = {m: index.search(query, k=k, mode=m) for m in search_modes}
            results[query] = {m: [h.id for h in hits] for m, hits in ranked.items()}
            for m in search_modes:
                table.add_column(m, ratio=1)
            for rank in range(k):
                cells = []
                for m in search_modes:
                    hit = ranked[m][rank] if rank < len(ranked[m]) else None
                    cells.append("" if hit is None else
                                 f"[bold]{hit.score:.3f}[/bold] {escape(hit.id)}\n{escape(_snippet(hit.text))}")
                table.add_row(str(rank + 1), *cells)
            console.print(table)
    return results


def _snippet(text: str | None, width: int = 60) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
