"""Streaming ingestion: read documents, skip those already stored, encode the rest in batches, commit each.

A batch is reported committed once the engine has accepted it: Qdrant Edge has written it to its
write-ahead log (replayed on the next open), qdrant-client local mode to its database, a server to its own
WAL. So a killed run loses nothing it reported, and running again encodes only what is missing. Segments
are also flushed every `flush_every` seconds and at the end, which keeps reopening fast.

Every record is validated (`m3embed.documents`: id, metadata) before its batch reaches the engine; an invalid
one stops the run with a ValueError naming its file:line, the batches before it stay committed. The CLI
checks the whole file first (`check_records`), so there a bad record stops the build before anything is
written. A repeated id keeps its last record, within a batch and across batches alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from m3embed._progress import Progress
from m3embed.corpus import Record, iter_lines
from m3embed.documents import check_id, check_metadata
from m3embed.index.core import Index


@dataclass
class IngestStats:
    """Progress of one ingestion run.

    Attributes:
        seen: records read so far (all of them are stored once their batch is committed).
        added: records encoded and upserted by this run.
        skipped: records whose id was already stored before this run (not encoded again).
        batches: batches committed.
        duplicates: records whose id repeats an earlier record of this run (the last one is kept).
    """

    seen: int = 0
    added: int = 0
    skipped: int = 0
    batches: int = 0
    duplicates: int = 0


def ingest(index: Index, records: Iterable[Record], *, batch_size: int = 64, skip_existing: bool = True,
           progress: bool = False, total: int | None = None, flush_every: float = 10.0,
           on_commit: Callable[[IngestStats], None] | None = None, max_length: int | None = None) -> IngestStats:
    """Add a stream of records to an index, batch by batch.

    Args:
        index: an Index opened with its model.
        records: documents (id, text, metadata); a repeated id keeps its last record (one set of the ids
            seen is kept in memory for that).
        batch_size: records encoded and committed together.
        skip_existing: skip ids the index held before this run (resume); False re-encodes and replaces them.
        progress: show a progress bar on stderr (`total` records when known).
        flush_every: seconds between segment flushes (batches are durable through the WAL before that).
        on_commit: called with the running stats after each batch is committed.
        max_length: passage truncation in tokens (default: the model's passage_max_length).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    index.require_model("add texts")
    stats = IngestStats()
    bar = Progress(progress, "indexing", total)
    bar.start()
    flushed = time.monotonic()
    seen_ids: set[str] = set()  # ids of this run: a later copy replaces an earlier one, never skipped
    try:
        for chunk in _chunks(map(check_record, records), batch_size):
            latest = {r.id: r for r in chunk}  # a repeated id keeps its last record
            stats.duplicates += len(chunk) - len(latest) + sum(1 for i in latest if i in seen_ids)
            todo = list(latest.values())
            if skip_existing:
                fresh = [i for i in latest if i not in seen_ids]
                stored = set(fresh) - set(index.missing(fresh))
                todo = [r for r in todo if r.id not in stored]
            seen_ids.update(latest)
            if todo:
                index.add([r.id for r in todo], [r.text for r in todo], [r.metadata for r in todo],
                           batch_size=len(todo), max_length=max_length)
            if time.monotonic() - flushed > flush_every:
                index.flush()
                flushed = time.monotonic()
            stats.seen += len(chunk)
            stats.added += len(todo)
            stats.skipped += len(latest) - len(todo)
            stats.batches += 1
            bar.advance(len(chunk), label=f"indexing ({stats.skipped} already stored)")
            if on_commit:
                on_commit(stats)
        index.flush()
    finally:
        bar.stop()
    return stats


def check_record(record: Record) -> Record:
    """The record with its id and metadata checked (`m3embed.documents`); a ValueError naming record.where."""
    where = record.where or None
    doc_id = check_id(record.id, where or "")
    if not isinstance(record.text, str):
        raise ValueError(f"{where + ': ' if where else ''}document {doc_id!r}: text must be a string, got "
                         f"{type(record.text).__name__}")
    return Record(doc_id, record.text, check_metadata(record.metadata, doc_id, where or ""), record.where)


def check_records(records: Iterable[Record]) -> int:
    """Validate every record (as `ingest` does) without encoding anything; returns how many there are.

    The CLI runs this over an input file before it creates or changes an index, so a bad record (named by
    file:line) stops the command before anything is written.
    """
    n = 0
    for record in records:
        check_record(record)
        n += 1
    return n


def count_records(path: str | Path) -> int | None:
    """Records in a jsonl / txt / parquet file without parsing them (None for unknown formats)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

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


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for r in records:
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
