"""Where an index lives: create or open its engine at a directory or a Qdrant location.

An index directory holds the manifest (written last: a manifest means a complete index), the engine's files
and a lock file that one open Index holds at a time. A creation that fails removes what it made. A Qdrant
server, ":memory:" or a QdrantClient has no directory: the manifest is stored with the collection.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from m3embed._optional import require
from m3embed.diskspace import check_free
from m3embed.index.manifest import (
    LOCK_NAME,
    MANIFEST_NAME,
    DirectoryLock,
    Manifest,
    read_manifest,
    write_manifest,
)

if TYPE_CHECKING:
    from m3embed.index.store import Store

DEFAULT_COLLECTION = "m3embed"  # the Qdrant collection of an index, unless told otherwise


class Place(NamedTuple):
    """An opened engine: its store, the index's manifest, the location as text, and the directory lock (None
    for a server or ":memory:")."""

    store: Store
    manifest: Manifest
    location: str
    lock: DirectoryLock | None


def is_remote(location: Any) -> bool:
    """True for a Qdrant server URL, ":memory:" or a QdrantClient: places without an index directory."""
    if isinstance(location, (str, Path)):
        s = str(location)
        return s == ":memory:" or s.startswith(("http://", "https://"))
    return True


def create(location: str | Path | Any, manifest: Manifest, *, collection: str = DEFAULT_COLLECTION,
           client_options: Mapping[str, Any] | None = None,
           collection_options: Mapping[str, Any] | None = None) -> Place:
    """A new, empty engine for `manifest` at `location` (see `Index.create`); a failure leaves nothing behind."""
    if is_remote(location):
        if manifest.engine != "qdrant":
            raise ValueError(f"{location!r} is a Qdrant location; use engine='qdrant' (edge needs a directory)")
        from m3embed.index.qdrant import QdrantStore

        client = _client(location, client_options)
        try:
            store = QdrantStore.create(client, collection, manifest, collection_options,
                                       owns_client=client is not location)
        except BaseException:
            if client is not location:
                client.close()
            raise
        return Place(store, manifest, _describe(location), None)
    directory = Path(location)
    _check_new_directory(directory)
    check_free(directory, 0, "creating an index")
    before = set(directory.iterdir()) if directory.exists() else None
    created = _topmost_missing(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(directory)
    lock.acquire()
    try:
        store = _create_dir_store(directory, manifest, collection, collection_options)
        try:
            write_manifest(directory, manifest)  # last: a manifest means a complete index
        except BaseException:
            store.close()
            raise
    except BaseException:
        lock.release()
        _remove_created(directory, created, before)
        raise
    return Place(store, manifest, str(directory), lock)


def open(location: str | Path | Any, *, collection: str = DEFAULT_COLLECTION,
         client_options: Mapping[str, Any] | None = None) -> Place:
    """The engine of the existing index at `location`, with its manifest (a directory is locked)."""
    if is_remote(location):
        from m3embed.index.qdrant import QdrantStore

        client = _client(location, client_options)
        store = QdrantStore(client, collection, owns_client=client is not location)
        try:
            data = store.read_manifest()
        except BaseException:
            store.close()
            raise
        if data is None:
            store.close()
            raise FileNotFoundError(f"no m3embed index in collection {collection!r} at {_describe(location)}; "
                                    "create it with Index.create or `m3embed index build`")
        manifest = Manifest.from_json(data, f"{_describe(location)} collection {collection!r}")
        return Place(store, manifest, _describe(location), None)
    directory = Path(location)
    manifest = read_manifest(directory)
    lock = DirectoryLock(directory)
    lock.acquire()
    try:
        store = _load_dir_store(directory, manifest, collection)
    except BaseException:
        lock.release()
        raise
    return Place(store, manifest, str(directory), lock)


class FirstBuild:
    """Around a build that may create the index directory at `location`: if the build fails before its first
    commit, what it created is removed (a failed first build leaves no empty index behind). An index that
    existed, a Qdrant server, or a build that committed a batch is left as it is (a rerun resumes it).

        with FirstBuild(location) as first:
            ingest(..., on_commit=first.committed)
    """

    def __init__(self, location: Any) -> None:
        self.directory = None if is_remote(location) else Path(location)
        self.new = self.directory is not None and not (self.directory / MANIFEST_NAME).exists()
        self.created = _topmost_missing(self.directory) if self.new else None
        self.before = set(self.directory.iterdir()) if self.new and self.created is None else None
        self.any_commit = False

    def committed(self, *_: Any) -> None:
        self.any_commit = True

    def __enter__(self) -> FirstBuild:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None and self.new and not self.any_commit:
            _remove_created(self.directory, self.created, self.before)


def _topmost_missing(directory: Path) -> Path | None:
    """The outermost of `directory` and its ancestors that does not exist yet (None if it exists)."""
    top = None
    p = directory.absolute()
    while not p.exists():
        top, p = p, p.parent
    return top


def _remove_created(directory: Path, created: Path | None, before: set[Path] | None) -> None:
    """Undo a failed creation: remove the directories it made, or what it added to an existing empty one."""
    try:
        if created is not None:
            shutil.rmtree(created)
        elif before is not None:
            for p in set(directory.iterdir()) - before:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    except OSError:  # best effort: the creation error is the one to report
        pass


def _check_new_directory(directory: Path) -> None:
    if directory.exists():
        if not directory.is_dir():
            raise NotADirectoryError(f"{directory} is a file; give a directory for the new index")
        if (directory / MANIFEST_NAME).exists():
            raise ValueError(f"{directory} already holds an index; open it (Index.open / open_index) "
                             "or choose another directory")
        if any(p.name != LOCK_NAME for p in directory.iterdir()):
            raise ValueError(f"{directory} is not empty and holds no index; choose a new or empty directory")


def _create_dir_store(directory: Path, manifest: Manifest, collection: str,
                      collection_options: Mapping[str, Any] | None) -> Store:
    if manifest.engine == "edge":
        from m3embed.index.edge import EdgeStore

        return EdgeStore.create(directory, manifest)
    from m3embed.index.qdrant import QdrantStore

    client = _client(str(directory / "qdrant"), None, path=True)
    try:
        return QdrantStore.create(client, collection, manifest, collection_options)
    except BaseException:
        client.close()
        raise


def _load_dir_store(directory: Path, manifest: Manifest, collection: str) -> Store:
    if manifest.engine == "edge":
        from m3embed.index.edge import EdgeStore

        return EdgeStore.load(directory, manifest)
    from m3embed.index.qdrant import QdrantStore

    if not (directory / "qdrant").is_dir():
        raise ValueError(f"index {directory} is damaged: its qdrant folder is missing; rebuild the index")
    store = QdrantStore(_client(str(directory / "qdrant"), None, path=True), collection)
    if store.read_manifest() is None:
        store.close()
        raise ValueError(f"index {directory} is damaged: collection {collection!r} is missing; rebuild the index")
    return store


def _client(location: Any, options: Mapping[str, Any] | None, path: bool = False) -> Any:
    if not isinstance(location, (str, Path)):
        return location  # a QdrantClient the caller built
    qdrant_client = require("qdrant_client", "qdrant")
    if path:
        return qdrant_client.QdrantClient(path=str(location), **dict(options or {}))
    if str(location) == ":memory:":
        return qdrant_client.QdrantClient(location=":memory:", **dict(options or {}))
    return qdrant_client.QdrantClient(url=str(location), **dict(options or {}))


def _describe(location: Any) -> str:
    return str(location) if isinstance(location, (str, Path)) else type(location).__name__
