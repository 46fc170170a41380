"""Reading documents from jsonl, txt or parquet files, streamed, with errors that name file and line.

A record is checked as it is read (`m3embed.documents`: its id and metadata), so a bad one is named by file
and line before anything encodes or stores it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from m3embed._optional import require
from m3embed.documents import check_id, check_metadata

FORMATS = (".jsonl", ".json", ".txt", ".parquet")


@dataclass
class Record:
    """One input document: its id, its text, any other fields as metadata, and where it was read.

    `where` ("docs.jsonl:7", "docs.parquet: row 7") names the document in error messages; "" when unknown.
    """

    id: str
    text: str
    metadata: dict = field(default_factory=dict)
    where: str = ""


def read_records(path: str | Path, text_field: str = "text", id_field: str = "id",
                 title_field: str | None = "title", generate_ids: bool = False) -> Iterator[Record]:
    """Stream records from a file.

    jsonl: one object per line; `text_field` and `id_field` are required, a `title_field` value is prepended
    to the text ("title text", the BEIR convention). txt: one text per line. parquet: the same fields as
    columns, read in row groups. A record without an id (every line of a txt file) is refused unless
    `generate_ids`, which gives it `content_id` of its text and fields: the same record in two files gets the
    same id, two different records never do (a line number would: "2" of one file replaced "2" of another).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from _jsonl(path, text_field, id_field, title_field, generate_ids)
    elif suffix == ".txt":
        if not generate_ids:
            raise ValueError(f"{path}: a .txt file has no document ids; {_ID_FIX}")
        for lineno, line in iter_lines(path):
            text = line.rstrip("\r\n")
            yield Record(content_id(text, {}), text, where=f"{path}:{lineno}")
    elif suffix == ".parquet":
        yield from _parquet(path, text_field, id_field, title_field, generate_ids)
    else:
        raise ValueError(f"{path}: unsupported input format {suffix!r}; use one of {', '.join(FORMATS)}")


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(query, passage) pairs from jsonl lines `{"query": ..., "passage": ...}`; a bad line is named file:line."""
    pairs = []
    for lineno, row in iter_jsonl(path):
        for key in ("query", "passage"):
            if key not in row:  # was reported as "must be a string"
                raise ValueError(f"{path}:{lineno}: missing field {key!r} (fields: {', '.join(row) or 'none'}); "
                                 'each line is {"query": ..., "passage": ...}')
            if not isinstance(row[key], str):
                raise ValueError(f"{path}:{lineno}: field {key!r} must be a string, got {type(row[key]).__name__}")
        pairs.append((row["query"], row["passage"]))
    return pairs


def count_records(path: str | Path) -> int | None:
    """Records in a jsonl / txt / parquet file without parsing them (None for unknown formats)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pq = require("pyarrow.parquet", "parquet")
        return pq.ParquetFile(path).metadata.num_rows
    if suffix in (".jsonl", ".json", ".txt"):
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    return None


def read_ids(path: str | Path) -> list[str]:
    """Ids from a file: one per line, or jsonl objects with an "id" field."""
    ids = []
    for lineno, line in iter_lines(path):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError(f"{path}:{lineno}: a JSON line needs an 'id' field")
            line = check_id(row["id"], f"{path}:{lineno}")
        ids.append(line)
    return ids


def iter_lines(path: str | Path, *, offset: int = 0, first_line: int = 1,
               max_lines: int | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 file (a BOM at the start is dropped); a byte sequence that
    is not UTF-8 raises a ValueError naming file:line and column.

    `offset`, `first_line`, `max_lines` read a part of the file: `max_lines` lines from byte `offset`, which
    starts line `first_line` (the parts `m3embed.shards.plan_parts` cuts).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open("rb") as f:
        f.seek(offset)
        for lineno, raw in enumerate(itertools.islice(f, max_lines), first_line):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 and offset == 0 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1}); convert the file to UTF-8") from None


def iter_jsonl(path: str | Path, *, offset: int = 0, first_line: int = 1,
               max_lines: int | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a missing file or a bad line raises naming file:line.

    `offset`, `first_line`, `max_lines`: a part of the file, as `iter_lines`.
    """
    for lineno, line in iter_lines(path, offset=offset, first_line=first_line, max_lines=max_lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


_ID_FIX = ("give every record an id (jsonl: an 'id' field, or name the field with --id-field), or generate ids "
           "from each record's content (--generate-ids; generate_ids=True in Python)")


def content_id(text: str, metadata: dict) -> str:
    """The id `generate_ids` gives a record: 24 hex digits (96 bits) of sha256 over its text and fields."""
    blob = json.dumps([text, metadata], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def make_record(row: dict, where: str, text_field: str, id_field: str, title_field: str | None,
                generate_ids: bool = False) -> Record:
    """One row of a jsonl or parquet input as a checked Record; `where` (file:line) names it in errors.

    A row without `id_field` is refused unless `generate_ids` (`content_id`)."""
    if text_field not in row:
        raise ValueError(f"{where}: missing field {text_field!r} (fields: {', '.join(map(str, row)) or 'none'})")
    text = row[text_field]
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} must be a string, got {type(text).__name__}")
    title = row.get(title_field) if title_field else None
    if isinstance(title, str) and title.strip():
        text = f"{title} {text}" if text else title
    doc_id = None
    if id_field in row:
        try:
            doc_id = check_id(row[id_field])
        except ValueError as e:
            raise ValueError(f"{where}: field {id_field!r}: {e}") from None
    elif not generate_ids:
        raise ValueError(f"{where}: no {id_field!r} field (fields: {', '.join(map(str, row))}); {_ID_FIX}")
    meta = check_metadata({k: v for k, v in row.items() if k not in (text_field, id_field)}, doc_id, where)
    return Record(content_id(text, meta) if doc_id is None else doc_id, text, meta, where)


def _jsonl(path: Path, text_field: str, id_field: str, title_field: str | None,
           generate_ids: bool) -> Iterator[Record]:
    for lineno, row in iter_jsonl(path):
        yield make_record(row, f"{path}:{lineno}", text_field, id_field, title_field, generate_ids)


def _parquet(path: Path, text_field: str, id_field: str, title_field: str | None,
             generate_ids: bool) -> Iterator[Record]:
    pq = require("pyarrow.parquet", "parquet")
    reader = pq.ParquetFile(path)
    if text_field not in reader.schema_arrow.names:
        raise ValueError(f"{path}: missing column {text_field!r} (columns: {', '.join(reader.schema_arrow.names)})")
    row_no = 0
    for batch in reader.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            row_no += 1
            yield make_record(row, f"{path}: row {row_no}", text_field, id_field, title_field, generate_ids)
