"""Streaming ingestion: read documents, skip those already stored, encode the rest in batches, commit each.

A batch is reported committed once the engine has accepted it: Qdrant Edge has written it to its
write-ahead log (replayed on the next open), qdrant-client local mode to its database, a server to its own
WAL. So a killed run loses nothing it reported, and running again encodes only what is missing. Segments
are also flushed every `flush_every` seconds and at the end, which keeps reopening fast.

`commit_batches` is that loop, shared by `ingest` (texts, encoded here) and `m3embed.index.bulk` (encoded
shards). A repeated id keeps its last copy, within a batch and across batches alike: the one duplicate policy
of m3embed (`Index.add_outputs` and `POST /v1/documents` keep the last copy too).

Records are checked where they are made (`m3embed.corpus.read_records` names file:line) and documents where
they enter the index (`Index.add`, naming the position): an invalid one stops the run before its batch
reaches the engine; the batches before it stay committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from m3embed._progress import Progress
from m3embed.corpus import Record
from m3embed.index.core import Index
from m3embed.tokenize import one_truncation_warning


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


Batch = tuple[Sequence[str], Callable[[list[int]], None]]  # the ids of a batch; write(rows) upserts those rows


def commit_batches(index: Index, batches: Iterable[Batch], *, skip_existing: bool = True, flush_every: float = 10.0,
                   on_commit: Callable[[IngestStats], None] | None = None) -> IngestStats:
    """The resumable commit loop: per batch, keep each id's last row, drop the ids stored before this run
    (with `skip_existing`), write the rest, then report the running stats to `on_commit`.

    One set of the ids seen is kept in memory (about 100 bytes per id), so that a later copy of an id replaces
    an earlier one of this run instead of being skipped as stored.
    """
    stats = IngestStats()
    flushed = time.monotonic()
    seen_ids: set[str] = set()
    for ids, write in batches:
        latest = {doc_id: i for i, doc_id in enumerate(ids)}  # a repeated id keeps its last row
        stats.duplicates += len(ids) - len(latest) + sum(1 for i in latest if i in seen_ids)
        keep = list(latest)
        if skip_existing:
            fresh = [i for i in keep if i not in seen_ids]
            stored = set(fresh) - set(index.missing(fresh))
            keep = [i for i in keep if i not in stored]
        seen_ids.update(latest)
        if keep:
            write([latest[i] for i in keep])
        if time.monotonic() - flushed > flush_every:
            index.flush()
            flushed = time.monotonic()
        stats.seen += len(ids)
        stats.added += len(keep)
        stats.skipped += len(latest) - len(keep)
        stats.batches += 1
        if on_commit:
            on_commit(stats)
    index.flush()
    return stats


def ingest(index: Index, records: Iterable[Record], *, batch_size: int = 64, skip_existing: bool = True,
           progress: bool = False, total: int | None = None, flush_every: float = 10.0,
           on_commit: Callable[[IngestStats], None] | None = None, max_length: int | None = None) -> IngestStats:
    """Add a stream of records to an index, batch by batch (`commit_batches`).

    Args:
        index: an Index opened with its model.
        records: documents (id, text, metadata); a repeated id keeps its last record.
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

    def batches() -> Iterator[Batch]:
        for chunk in _chunks(records, batch_size):
            def write(rows: list[int], chunk: list[Record] = chunk) -> None:
                todo = [chunk[i] for i in rows]
                index.add([r.id for r in todo], [r.text for r in todo], [r.metadata for r in todo],
                          batch_size=len(todo), max_length=max_length)

            yield [r.id for r in chunk], write

    with one_truncation_warning(), Progress(progress, "indexing", total) as bar:  # one warning for the run
        return commit_batches(index, batches(), skip_existing=skip_existing, flush_every=flush_every,
                              on_commit=report_to(bar, "indexing", on_commit))


def report_to(bar: Progress, label: str, on_commit: Callable[[IngestStats], None] | None = None
              ) -> Callable[[IngestStats], None]:
    """An `on_commit` that advances `bar` to the records seen, counting those already stored, then calls
    `on_commit`."""
    done = 0

    def committed(stats: IngestStats) -> None:
        nonlocal done
        bar.advance(stats.seen - done, label=f"{label} ({stats.skipped} already stored)")
        done = stats.seen
        if on_commit:
            on_commit(stats)

    return committed


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for r in records:
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
