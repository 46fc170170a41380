"""Bulk load: stream encoded shards (`m3embed.shards`) into an index, without encoding again.

It runs ingestion's commit loop (`ingest.commit_batches`): each batch skips the ids the index already holds
and is committed before the next, so a killed load run again adds only what is missing; a repeated id keeps
its last row. A shard encoded by another model than the index's is refused before anything of it is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from m3embed import shards
from m3embed._progress import Progress
from m3embed.index import open_index
from m3embed.index.core import Index
from m3embed.index.directory import DEFAULT_COLLECTION, is_remote
from m3embed.index.ingest import Batch, IngestStats, commit_batches, report_to
from m3embed.index.manifest import MANIFEST_NAME, ColbertStorage


def load_encoded(index: Index, path: str | Path, *, batch_size: int = 256, skip_existing: bool = True,
                 flush_every: float = 10.0, on_commit: Callable[[IngestStats], None] | None = None,
                 progress: bool = False) -> IngestStats:
    """Upsert the documents of encoded shards into `index`, batch by batch (`ingest.commit_batches`).

    Args:
        index: an open Index (no model needed).
        path: a finished encode job's directory (`m3embed encode ... --ray`) or one shard file.
        batch_size: documents read and committed together.
        skip_existing: skip ids the index already holds (resume); False replaces them.
        flush_every: seconds between segment flushes (batches are durable through the WAL before that).
        on_commit: called with the running stats after each batch is committed.
        progress: show a progress bar on stderr (documents, from the shards' footers).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    encoded = shards.open_encoded(path)
    for file in encoded.files:  # every shard is checked before the first is loaded
        check_shard(index, file)
    total = sum(shards.shard_rows(f) for f in encoded.files) if progress else None

    def batches() -> Iterator[Batch]:
        for file in encoded.files:
            for rows in shards.iter_shard(file, batch_size):
                def write(idx: list[int], rows: shards.EncodedRows = rows) -> None:
                    index.add_outputs([rows.ids[i] for i in idx], rows.outputs.select(idx), texts=_texts(rows, idx),
                                      metadata=[rows.metadata[i] for i in idx])

                yield rows.ids, write

    with Progress(progress, "loading", total) as bar:
        return commit_batches(index, batches(), skip_existing=skip_existing, flush_every=flush_every,
                              on_commit=report_to(bar, "loading", on_commit))


def check_shard(index: Index, path: Path) -> None:
    """Refuse a shard made by another model than the index's, or lacking a representation the index stores, or
    one whose footer or fingerprint column cannot be read (`shards.DamagedShardError`)."""
    fingerprint = shards.shard_fingerprint(path)
    m = index.manifest
    if fingerprint is not None and fingerprint != m.fingerprint:
        raise ValueError(f"shard {path} was encoded by a model with fingerprint {fingerprint}, but index "
                         f"{index.location} holds model {m.model_name!r} with fingerprint {m.fingerprint}; encode "
                         "with the index's model, or load into an index built from these shards")
    have = shards.modes_of(shards.shard_schema(path))
    missing = [mode for mode in m.modes if mode not in have]
    if missing:
        raise ValueError(f"shard {path} holds {', '.join(have)} but index {index.location} also stores "
                         f"{', '.join(missing)}; encode with --modes {','.join(m.modes)}")


def open_for_encoded(location: str | Path | Any, path: str | Path, *, modes: Sequence[str] | None = None,
                     engine: str | None = None, colbert_storage: ColbertStorage | None = None,
                     store_text: bool | None = None, collection: str = DEFAULT_COLLECTION,
                     client_options: Mapping[str, Any] | None = None,
                     collection_options: Mapping[str, Any] | None = None) -> Index:
    """Open the index at `location`, or create it for the shards of a finished encode job: their model (name
    and fingerprint), modes (default: every representation the shards hold) and vector size.

    The other arguments are those of `open_index` (None: `Index.create`'s default).
    """
    summary = shards.open_encoded(path).summary
    if summary is None or summary.get("fingerprint") is None:
        raise ValueError(f"{path} is not a finished encode job with documents; an index is created from a job "
                         "directory (its _SUCCESS.json names the model)")
    if not modes and (is_remote(location) or (Path(location) / MANIFEST_NAME).exists()):
        try:  # an existing index keeps what it stores; a new one gets what the shards hold
            index = Index.open(location, collection=collection, client_options=client_options)
        except FileNotFoundError:
            pass
        else:
            try:
                index.manifest.check_options(index.location, {k: v for k, v in (
                    ("engine", engine), ("colbert_storage", colbert_storage), ("store_text", store_text))
                    if v is not None})
            except ValueError:
                index.close()
                raise
            return index
    return open_index(location, create=True, fingerprint=summary["fingerprint"], model_name=summary["model"],
                      dim=summary["dim"], modes=tuple(modes or summary["modes"]), engine=engine,
                      colbert_storage=colbert_storage, store_text=store_text, collection=collection,
                      client_options=client_options, collection_options=collection_options)


def load_encoded_ray(location: str, path: str | Path, *, collection: str = DEFAULT_COLLECTION,
                     client_options: Mapping[str, Any] | None = None, batch_size: int = 256,
                     skip_existing: bool = True, address: str | None = None) -> IngestStats:
    """`load_encoded` on a Ray cluster: one task per shard, each upserting into a Qdrant server or cluster.

    Every shard is checked against the index first (in this process); the tasks are retried if a node dies,
    and a retried task skips what its first try stored.
    """
    from m3embed._optional import require

    ray = require("ray", "ray")
    if not is_remote(location) or str(location) == ":memory:":
        raise ValueError(f"loading on Ray needs a Qdrant server URL (http://host:6333), got {location!r}: an index "
                         "directory or a local collection is opened by one process at a time; use load_encoded")
    files = shards.open_encoded(path).files
    with Index.open(location, collection=collection, client_options=client_options) as index:
        for file in files:
            check_shard(index, file)
    from m3embed.ray_data import connect

    connect(address)
    task = ray.remote(max_retries=3)(_load_one)
    results = ray.get([task.remote(location, str(f), collection, dict(client_options or {}), batch_size,
                                   skip_existing) for f in files])
    total = IngestStats()
    for r in results:
        for f in dataclasses.fields(IngestStats):
            setattr(total, f.name, getattr(total, f.name) + r[f.name])
    return total


def _load_one(location: str, file: str, collection: str, client_options: dict[str, Any], batch_size: int,
              skip_existing: bool) -> dict[str, int]:
    with Index.open(location, collection=collection, client_options=client_options) as index:
        return dataclasses.asdict(load_encoded(index, file, batch_size=batch_size, skip_existing=skip_existing))


def _texts(rows: shards.EncodedRows, idx: list[int]) -> list[str] | None:
    texts = [rows.texts[i] for i in idx]
    return None if any(t is None for t in texts) else texts
