"""The one progress bar: a rich bar on stderr (stdout may carry a command's results), or nothing when hidden.

    with Progress(show, "encoding tokens", total) as bar:   # or bar.start() ... bar.stop()
        bar.advance(n)                        # n more done
        bar.advance(1, status="loss 0.1234")  # a text after the counts (loss, documents/s)
        bar.advance(n, label="indexing (3 already stored)")

Encoding, reranking, indexing, evaluation, training and Ray jobs all show this one.
"""

from __future__ import annotations

from typing import Any, Self


class Progress:
    """label, bar, done/total, a status text, time left; every call is a no-op when `show` is False.

    Args:
        show: draw the bar.
        label: the text before the bar.
        total: the count at 100 % (None: unknown, the bar pulses).
        done: the count already done (a resumed run).
        status: the text after the counts.
    """

    def __init__(self, show: bool, label: str, total: int | None, *, done: int = 0, status: str = "") -> None:
        self._bar: Any = None
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                     console=Console(stderr=True))
            self._task = self._bar.add_task(label, total=total, completed=done, status=status)

    def start(self) -> None:
        if self._bar is not None:
            self._bar.start()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def advance(self, n: int = 1, *, label: str | None = None, status: str | None = None) -> None:
        """Count `n` more done; replace the label or the status text when given."""
        if self._bar is not None:
            fields = {k: v for k, v in (("description", label), ("status", status)) if v is not None}
            self._bar.update(self._task, advance=n, **fields)
