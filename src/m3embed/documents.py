"""The one validation of document ids and metadata, shared by the index, ingestion and the HTTP service.

An id is a non-empty str or an int (not a bool); it is stored as its string form, so 7 and "7" name the same
document. Metadata is a dict of JSON values: str (valid Unicode), int within signed 64 bits (what the
engines store and filter exactly), finite float, bool, None, and lists / dicts of those. Anything else is
refused with a ValueError naming the document id and the field, before an engine sees the batch.

This module imports nothing from the package: every other module may use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # Qdrant's integer payload type (i64); larger ints would become floats
MAX_DEPTH = 32  # nesting of metadata lists / dicts


def check_id(value: Any, where: str = "") -> str:
    """The document id as the index stores it (str); a ValueError for bool, empty, or other types."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{prefix}document id must be a non-empty string or an integer, got "
                         f"{type(value).__name__} {value!r}")
    text = str(value)
    if not text:
        raise ValueError(f"{prefix}document id must be a non-empty string or an integer, got ''")
    if not text.isascii():
        _check_unicode(text, f"{prefix}document id {text!r}")
    return text


def check_metadata(meta: Any, doc_id: Any = None, where: str = "") -> dict[str, Any]:
    """A JSON-representable copy of `meta` (None → {}): tuples become lists, NumPy scalars Python numbers.

    Raises ValueError naming `where` (e.g. "docs.jsonl:7"), the document id and the field path for a
    non-dict, a non-str key, NaN / inf, an int outside signed 64 bits, or a value JSON cannot hold.
    """
    if meta is None:
        return {}
    who = f"{where}: " if where else ""
    who += f"document {doc_id!r}: " if doc_id is not None else ""
    if not isinstance(meta, Mapping):
        raise ValueError(f"{who}metadata must be a JSON object (dict), got {type(meta).__name__}")
    return _value(meta, "", who, 0)


def _value(v: Any, path: str, who: str, depth: int) -> Any:
    field = f"metadata field {path!r}" if path else "metadata"
    if depth > MAX_DEPTH:
        raise ValueError(f"{who}{field} is nested deeper than {MAX_DEPTH} levels")
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str):
        if not v.isascii():
            _check_unicode(v, f"{who}{field}")
        return v
    if isinstance(v, int):
        if not INT_MIN <= v <= INT_MAX:
            raise ValueError(f"{who}{field} is the integer {v}, outside the signed 64-bit range the index stores "
                             "exactly; store it as a string")
        return int(v)  # an int subclass (IntEnum) as a plain int
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{who}{field} is {v}; metadata numbers must be finite (JSON has no NaN or "
                             "Infinity)")
        return float(v)
    if isinstance(v, Mapping):
        out = {}
        for key, item in v.items():
            if not isinstance(key, str):
                raise ValueError(f"{who}{field} has the key {key!r} ({type(key).__name__}); metadata keys "
                                 "must be strings")
            out[key] = _value(item, f"{path}.{key}" if path else key, who, depth + 1)
        return out
    if isinstance(v, (list, tuple)):
        return [_value(item, f"{path}[{i}]", who, depth + 1) for i, item in enumerate(v)]
    item = getattr(v, "item", None)  # a NumPy scalar: check its Python value
    if callable(item) and type(v).__module__ == "numpy":
        return _value(item(), path, who, depth)
    raise ValueError(f"{who}{field} is a {type(v).__name__}; metadata values must be JSON: str, int, float, "
                     "bool, null, lists and objects (convert dates and other types to strings)")


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800") parses from JSON but is no text
        raise ValueError(f"{what} is not valid Unicode ({e.reason} at character {e.start})") from None
