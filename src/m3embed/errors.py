"""Errors that name the parameter at fault, so each shell can point at its own field for it.

This module imports nothing from the package: every other module may use it.
"""

from __future__ import annotations


class ParamError(ValueError):
    """A bad value of one parameter; `param` is its library name ("weights", "mode", "rerank_top", ...).

    The HTTP service answers it as a 422 whose `param` is the request field of that name.
    """

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param
