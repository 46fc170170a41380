"""Reports of an `EvalResult`: `eval.json` (everything), `eval.md` (a table), `eval.png` (a chart), a terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from m3embed._optional import require
from m3embed.evaluate.bm25 import BM25_NAME
from m3embed.evaluate.metrics import METRICS
from m3embed.evaluate.runs import EvalResult

if TYPE_CHECKING:
    from rich.table import Table


def markdown_table(result: EvalResult) -> str:
    """The result as a Markdown table (best value per metric in bold) with a one-line header."""
    best = {m: max(s[m] for s in result.scores.values()) for m in METRICS} if result.scores else {}
    lines = [
        (f"**{result.dataset}** ({result.qrels_file}): {result.n_queries} queries, {result.n_docs} documents, "
         f"top {result.k} retrieved per query"),
        "",
        "| system | " + " | ".join(METRICS) + " | search s |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    for name, scores in result.scores.items():
        cells = [f"**{scores[m]:.4f}**" if scores[m] == best[m] else f"{scores[m]:.4f}" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result.seconds.get(name, 0.0):.2f} |")
    notes = [f"- {key}: {value}" for key, value in result.settings.items()]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def console_table(result: EvalResult) -> Table:
    """The scores as a rich Table for the terminal."""
    from rich.table import Table

    table = Table(title=f"{result.dataset} ({result.qrels_file}): {result.n_queries} queries, "
                        f"{result.n_docs} docs")
    for col in ("system", *METRICS):
        table.add_column(col, justify="left" if col == "system" else "right")
    for name, row in result.scores.items():
        table.add_row(name, *(f"{row[m]:.4f}" for m in METRICS))
    return table


def plot_bars(result: EvalResult, path: str | Path) -> Path:
    """Grouped bar chart: one group per metric, one bar per system, values written above the bars."""
    matplotlib = require("matplotlib", "eval")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(result.scores)
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(2.0 + 0.45 * len(systems) * len(METRICS), 4.6), dpi=150)
    palette = iter(plt.get_cmap("tab10").colors)
    colors = ["0.55" if name == BM25_NAME else next(palette) for name in systems]  # the baseline in grey
    for i, name in enumerate(systems):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(METRICS))]
        values = [result.scores[name][m] for m in METRICS]
        bars = ax.bar(xs, values, width * 0.92, label=name, color=colors[i])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1.5)
    ax.set_xticks(range(len(METRICS)), METRICS)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(f"{result.dataset} ({result.qrels_file}, {result.n_queries} queries, "
                 f"{result.n_docs} docs)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(ncols=min(len(systems), 6), loc="upper center", bbox_to_anchor=(0.5, -0.09), frameon=False,
              fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(result: EvalResult, out_dir: str | Path, stem: str = "eval") -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` into `out_dir`; return the three paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_table(result), encoding="utf-8")
    plot_bars(result, paths["png"])
    return paths
