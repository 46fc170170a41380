"""Filling an index from a file: a documents file encoded here, or the shards of an encode job.

`build` creates the index (or resumes one built with the same model) and `add` adds to an existing one; the
CLI's `index build` and `index add` are these two over the command line. A documents file is read and checked
whole before the model is loaded or anything is written, so a bad record stops the command with its
file:line and leaves no index behind; a first build that fails before its first commit (a damaged shard, a
model error) removes the index it created (`directory.FirstBuild`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3embed.corpus import Record, read_records
from m3embed.diskspace import DiskFullError
from m3embed.index import open_index
from m3embed.index.directory import DEFAULT_COLLECTION, FirstBuild
from m3embed.index.ingest import IngestStats, ingest
from m3embed.index.manifest import ColbertStorage


@dataclass(frozen=True)
class Source:
    """What to add: a documents file (`read_records` with these fields) or, with `encoded`, encoded shards (a
    job directory or one shard file, `m3embed.index.bulk`)."""

    path: Path
    encoded: bool = False
    text_field: str = "text"
    id_field: str = "id"
    title_field: str | None = "title"
    generate_ids: bool = False

    def records(self) -> Iterator[Record]:
        return read_records(self.path, text_field=self.text_field, id_field=self.id_field,
                            title_field=self.title_field or None, generate_ids=self.generate_ids)

    def check(self) -> int | None:
        """Read (and so check) every record of a documents file before anything is written; their number."""
        return None if self.encoded else sum(1 for _ in self.records())


@dataclass(frozen=True)
class Added:
    """What `build` or `add` did: the index location, the run's stats and the documents held afterwards (None
    after a load on Ray, which does not count them)."""

    location: str
    stats: IngestStats
    count: int | None


def build(location: str | Path | Any, source: Source, *, load_model: Callable[[tuple[str, ...] | None], Any],
          modes: Sequence[str] | None = None, engine: str | None = None,
          colbert_storage: ColbertStorage | None = None, store_text: bool | None = None,
          collection: str = DEFAULT_COLLECTION, collection_options: Mapping[str, Any] | None = None,
          batch_size: int = 64, max_length: int | None = None, ray: bool = False, ray_address: str | None = None,
          progress: bool = False, on_commit: Callable[[IngestStats], None] | None = None) -> Added:
    """Create the index at `location` (or resume one built with the same model) and add `source` to it.

    Args:
        load_model: the model for a documents file, loaded once the file is checked: called with `modes`.
        modes: representations to store (default: all the model has, or all the shards hold; an existing index:
            what it stores). Options other than an existing index's own are refused (`open_index`).
        engine, colbert_storage, store_text, collection, collection_options: see `Index.create`.
        batch_size, max_length, progress, on_commit: see `ingest`.
        ray, ray_address: load encoded shards into a Qdrant server with one Ray task per shard.
    """
    first = FirstBuild(location)
    if source.encoded:
        from m3embed import shards
        from m3embed.index.bulk import load_encoded, load_encoded_ray, open_for_encoded

        for file in shards.open_encoded(source.path).files:  # a damaged footer is named before anything is made
            shards.shard_fingerprint(file)
        with first, open_for_encoded(location, source.path, modes=modes, engine=engine,
                                     colbert_storage=colbert_storage, store_text=store_text, collection=collection,
                                     collection_options=collection_options) as index:
            if not ray:
                return _done(index, load_encoded(index, source.path, batch_size=batch_size, progress=progress,
                                                 on_commit=_both(first.committed, on_commit)))
        stats = load_encoded_ray(location, source.path, collection=collection, batch_size=batch_size,
                                 address=ray_address)
        return Added(str(location), stats, None)
    if ray:
        raise ValueError("Ray loads encoded shards; encode documents on Ray with `m3embed encode --ray`")
    total = source.check()
    model = load_model(tuple(modes) if modes else None)
    with first, open_index(location, model, create=True, modes=modes, engine=engine,
                           colbert_storage=colbert_storage, store_text=store_text, collection=collection,
                           collection_options=collection_options) as index:
        return _done(index, ingest(index, source.records(), batch_size=batch_size, total=total, progress=progress,
                                   on_commit=_both(first.committed, on_commit), max_length=max_length))


def add(location: str | Path | Any, source: Source, *, load_model: Callable[[Any], Any],
        collection: str = DEFAULT_COLLECTION, replace: bool = False, batch_size: int = 64, ray: bool = False,
        ray_address: str | None = None, progress: bool = False,
        on_commit: Callable[[IngestStats], None] | None = None) -> Added:
    """Add `source` to the existing index at `location` (upsert by id; `replace` re-encodes stored ids).

    `load_model(index)` attaches the model a documents file is encoded with; the other arguments are `build`'s.
    """
    if ray:
        if not source.encoded:
            raise ValueError("Ray loads encoded shards; encode documents on Ray with `m3embed encode --ray`")
        from m3embed.index.bulk import load_encoded_ray

        stats = load_encoded_ray(location, source.path, collection=collection, batch_size=batch_size,
                                 skip_existing=not replace, address=ray_address)
        return Added(str(location), stats, None)
    total = source.check()
    with open_index(location, collection=collection) as index:
        if source.encoded:
            from m3embed.index.bulk import load_encoded

            return _done(index, load_encoded(index, source.path, batch_size=batch_size, skip_existing=not replace,
                                             progress=progress, on_commit=on_commit))
        load_model(index)
        return _done(index, ingest(index, source.records(), batch_size=batch_size, skip_existing=not replace,
                                   total=total, progress=progress, on_commit=on_commit))


def _both(*calls: Callable[[IngestStats], None] | None) -> Callable[[IngestStats], None]:
    def call(stats: IngestStats) -> None:
        for c in calls:
            if c is not None:
                c(stats)

    return call


def _done(index: Any, stats: IngestStats) -> Added:
    """Build the search structures, then report; a full disk names what was stored before it."""
    try:
        index.optimize()
    except DiskFullError as e:
        raise DiskFullError(f"{index.location}: {stats.added} documents added ({index.count()} stored), but {e}",
                            e.filename) from None
    return Added(index.location, stats, index.count())
