"""The `m3embed` command line: parse arguments, call the library, print with rich.

User mistakes (bad paths, bad input, wrong model) and environment failures (a full disk, an unreachable
server) print one red line and exit 2, without a traceback. Text that comes from the user or the data (paths,
ids, queries, document texts) is escaped before rich prints it, so "[red]" or "[/]" in it is shown as is.

Each module is a thin shell over library functions: `encoding` (encode, score, rerank, demo, info), `indexing`
(index build / add / delete / info, search), `evaluation` (eval), `training` (train, train-reranker, mine),
`serving` (serve); `_common` holds the app, the consoles, shared options and model loading. Modules import
only typer and rich at the top, so `m3embed --help` loads no torch.
"""


from __future__ import annotations

import sys

from rich.markup import escape

from m3embed._optional import MissingExtra
from m3embed.cli import encoding, evaluation, indexing, serving, training  # noqa: F401  (they register the commands)
from m3embed.cli._common import app, console

__all__ = ["app", "main"]

USER_ERRORS = (ValueError, TypeError, KeyError, MissingExtra,  # MissingExtra: the message names the extra
               OSError)  # missing files, permissions, a full disk, an unreachable server: the message names them


def main() -> None:
    """Entry point: run the app; user mistakes become one clear line and exit code 2."""
    import warnings

    # qdrant-client checks a server's version on a thread of its own and warns when it gets no answer; an
    # unreachable server is reported by the first request instead, as one line naming the URL
    warnings.filterwarnings("ignore", message="Failed to obtain server version")
    warnings.showwarning = _show_warning
    try:
        app()
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else _os_message(e) if isinstance(e, OSError) else e
        # one line, never wrapped; escaped, so "[serve]" in a message is printed, not read as markup
        console.print(f"[red]error:[/red] {escape(' '.join(str(msg).split()))}", highlight=False, soft_wrap=True)
        sys.exit(2)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None,
                  line=None) -> None:
    """A warning as one line on stderr (`warning: ...`), without Python's file:line and source line."""
    console.print(f"[yellow]warning:[/yellow] {escape(' '.join(str(message).split()))}", highlight=False,
                  soft_wrap=True)


def _os_message(e: OSError) -> str:
    """An OSError as one line naming its path: ours carry a full message; the system's get the path added."""
    from m3embed.diskspace import DiskFullError, is_disk_full

    if isinstance(e, DiskFullError) or not e.strerror:
        return str(e)
    where = f": {e.filename}" if e.filename else ""
    if is_disk_full(e):
        return f"no space left on the device{where}; free some space or choose another location"
    return f"{e.strerror}{where}" + (f" -> {e.filename2}" if getattr(e, "filename2", None) else "")
