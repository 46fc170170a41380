"""The `m3embed` command line: parse arguments, call the library, print with rich.

User mistakes (bad paths, bad input, wrong model) print one red line and exit 2, without a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="BGE-M3 end to end: encode, score, index, search, evaluate, train, serve.")
console = Console(stderr=True)

# ---- encode / score / info (foundation) ----

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
