"""The index manifest (format version, engine, model identity, stored modes) and the directory lock."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import portalocker

from m3embed.identity import FINGERPRINT_VERSION  # an index is checked with the scheme it was built with
from m3embed.modes import SEARCH_WEIGHTS, check_modes, check_weights

FORMAT_VERSION = 5  # 2: adds fingerprint_version; 3: adds colbert_storage; 4: adds colbert_store; 5: colbert_dtype
# moves into colbert_storage
READABLE_VERSIONS = (1, 2, 3, 4, 5)
MANIFEST_NAME = "m3embed-index.json"
LOCK_NAME = ".m3embed.lock"
ENGINES = ("edge", "qdrant")
COLBERT_DTYPES = ("float32", "float16")
COLBERT_QUANTIZATIONS = ("none", "int8", "binary")
COLBERT_ORIGINALS = ("ram", "disk", "none")
# where the ColBERT rows live: "tokens", m3embed's token store in the index directory (`m3embed.index.tokens`,
# every Qdrant Edge index of format 4); "engine", the engine's multivector field (Qdrant servers and clusters,
# qdrant-client local mode, and indexes of formats 1-3)
COLBERT_STORES = ("tokens", "engine")


@dataclass(frozen=True)
class ColbertStorage:
    """How the ColBERT multivector field is stored and scored, chosen at index creation.

    `ColbertStorage()` (float16 vectors in RAM, no pooling) is what new indexes on an engine's multivector field
    get unless told otherwise (`default_colbert_storage`), and the storage of indexes built before these options
    existed; their manifests open with it.

    Attributes:
        quantization: "none" (the vectors in `dtype`), "int8" (Qdrant scalar quantization:
            one byte a dimension, min/max of the segment) or "binary" (Qdrant binary quantization: one bit a
            dimension, the sign); quantized vectors are held in RAM.
        originals: where the float vectors live: "ram", "disk" (memory-mapped, read when needed) or "none"
            (not kept; no engine supports it yet, both refuse it).
        rescore: with quantization, score the union with the quantized vectors, then rescore the best
            `ceil(oversampling * k)` with the original vectors; False ranks by the quantized scores alone.
        oversampling: how many times k hits rescoring reads the originals for (>= 1).
        pool_factor: document-side token pooling at ingest (1 = off): each document's n token vectors become
            ceil(n / pool_factor) normalised cluster means (Ward clustering, `m3embed.index.pooling`).
        dtype: precision of the float vectors: "float16" (half the size) or "float32".
    """

    quantization: str = "none"
    originals: str = "ram"
    rescore: bool = True
    oversampling: float = 4.0
    pool_factor: int = 1
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.dtype not in COLBERT_DTYPES:
            raise ValueError(f"colbert dtype must be one of {', '.join(COLBERT_DTYPES)}, got {self.dtype!r}")
        if self.quantization not in COLBERT_QUANTIZATIONS:
            raise ValueError(f"colbert quantization must be one of {', '.join(COLBERT_QUANTIZATIONS)}, "
                             f"got {self.quantization!r}")
        if self.originals not in COLBERT_ORIGINALS:
            raise ValueError(f"colbert originals must be one of {', '.join(COLBERT_ORIGINALS)}, got {self.originals!r}")
        if not isinstance(self.rescore, bool):
            raise ValueError(f"colbert rescore must be true or false, got {self.rescore!r}")
        if isinstance(self.pool_factor, bool) or not isinstance(self.pool_factor, int) or self.pool_factor < 1:
            raise ValueError(f"colbert pool_factor must be an integer >= 1 (1 = no pooling), got {self.pool_factor!r}")
        if (isinstance(self.oversampling, bool) or not isinstance(self.oversampling, (int, float))
                or not math.isfinite(self.oversampling) or self.oversampling < 1):
            raise ValueError(f"colbert oversampling must be a number >= 1, got {self.oversampling!r}")
        if self.quantization == "none" and self.originals == "none":
            raise ValueError("colbert originals='none' needs quantization int8 or binary (--colbert-quantization): "
                             "without it the originals are the only copy")
        if self.quantization == "none" and not self.rescore:
            raise ValueError("colbert rescore=False (--no-colbert-rescore) applies to quantized storage; set "
                             "quantization int8 or binary (--colbert-quantization)")
        if self.originals == "none" and self.rescore:
            raise ValueError("colbert rescore needs the original vectors; keep them (originals 'ram' or 'disk', "
                             "--colbert-originals) or set rescore=False (--no-colbert-rescore)")

    @property
    def quantized(self) -> bool:
        """Whether search scores the ColBERT field with quantized vectors first."""
        return self.quantization != "none"

    @property
    def numpy_dtype(self) -> type[np.floating]:
        """The NumPy type of the stored float vectors."""
        return np.float16 if self.dtype == "float16" else np.float32

    def rescore_top(self, k: int) -> int:
        """Hits whose quantized ColBERT score is replaced by the exact one, for k results."""
        return max(k, math.ceil(self.oversampling * k))

    @classmethod
    def from_json(cls, d: Any) -> ColbertStorage:
        if not isinstance(d, dict):
            raise ValueError(f"colbert_storage must be an object, got {d!r}")  # noqa: TRY004 (a damaged file)
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"colbert_storage has unknown keys {unknown}")
        return cls(**d)


# The storage a new index gets unless told otherwise: binary codes in the token store (132 B a 1024-d token, one
# bit a dimension plus a scale; nDCG@10 of `all` within 0.005 on average of exact float32 scoring on both shipped
# models, 0.014 at worst: docs/results.md), float16 vectors in an engine's multivector field (Qdrant servers).
TOKEN_STORE_DEFAULT = ColbertStorage("binary", originals="none", rescore=False)


def default_colbert_storage(colbert_store: str) -> ColbertStorage:
    """What `Index.create` uses when no colbert storage is given, for rows in `colbert_store`."""
    return TOKEN_STORE_DEFAULT if colbert_store == "tokens" else ColbertStorage()


@dataclass
class Manifest:
    """What an index is: written once at creation, checked at every open.

    Attributes:
        engine: "edge" (Qdrant Edge, embedded) or "qdrant" (qdrant-client: local path, memory or server).
        model_name: the model's name or path when the index was created (informative).
        fingerprint: the model's fingerprint; adding or searching with another model is refused.
        modes: the representations stored, in canonical order.
        dim: dense vector size; colbert_dim: colbert vector size.
        store_text: whether document texts are kept in the payload.
        fingerprint_version: the fingerprint scheme (FINGERPRINT_VERSION; 1 for indexes of format 1).
        colbert_storage: precision, quantization, originals, rescoring and pooling of the colbert field
            (`ColbertStorage()` for indexes of formats 1 and 2; their `colbert_dtype` is its dtype up to format 4).
        colbert_store: where the colbert rows live, one of `COLBERT_STORES` ("engine" for formats 1-3).
        search_weights: the hybrid weights (dense, sparse, colbert) a search takes when given none: the model's
            at creation (`M3Model.search_weights`); BGE-M3's (`SEARCH_WEIGHTS`) for indexes made before.
    """

    engine: str
    model_name: str
    fingerprint: str
    modes: tuple[str, ...]
    dim: int
    colbert_dim: int
    store_text: bool = True
    fingerprint_version: int = FINGERPRINT_VERSION
    colbert_storage: ColbertStorage = field(default_factory=ColbertStorage)
    colbert_store: str = "engine"
    search_weights: tuple[float, float, float] = SEARCH_WEIGHTS
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        self.modes = check_modes(self.modes)
        self.search_weights = check_weights(self.search_weights, name="search_weights")
        if self.dim < 1 or self.colbert_dim < 1:
            raise ValueError(f"vector sizes must be positive, got dim={self.dim}, colbert_dim={self.colbert_dim}")
        if not isinstance(self.colbert_storage, ColbertStorage):
            raise TypeError(f"colbert_storage must be a ColbertStorage, got {type(self.colbert_storage).__name__}")
        if self.colbert_store not in COLBERT_STORES:
            raise ValueError(f"colbert_store must be one of {', '.join(COLBERT_STORES)}, got {self.colbert_store!r}")
        if self.colbert_store == "tokens" and (self.engine != "edge" or not set(self.modes) & {"dense", "sparse"}):
            raise ValueError("the ColBERT token store needs engine 'edge' and dense or sparse vectors beside "
                             "colbert; use colbert_store='engine'")
        if not self.fingerprint:
            raise ValueError("an index needs a model identity: pass model=... or fingerprint='some-label'")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["modes"] = list(self.modes)
        d["search_weights"] = list(self.search_weights)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str) -> Manifest:
        """Validate a manifest read from `source`; a newer format or missing keys give a clear error."""
        version = d.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{source}: index format version {version!r} is not supported by this m3embed "
                             f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))}); rebuild the index "
                             "or upgrade m3embed")
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if version == 1:  # written before fingerprints covered the encoder weights
            fields["fingerprint_version"] = 1
        try:
            storage = fields.get("colbert_storage", {})
            if version < 5 and "colbert_dtype" in d and isinstance(storage, dict):  # beside the storage until 4
                storage = {**storage, "dtype": d["colbert_dtype"]}
            fields["colbert_storage"] = ColbertStorage.from_json(storage)
            return cls(**fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: damaged index manifest ({e}); rebuild the index") from e

    @property
    def colbert_encoding(self) -> str:
        """The token store's code for the colbert rows (`m3embed.index.maxsim.ENCODINGS`)."""
        q = self.colbert_storage.quantization
        return self.colbert_storage.dtype if q == "none" else q

    def check_options(self, location: str, options: dict[str, Any]) -> None:
        """Refuse creation `options` (engine, modes, colbert_storage, colbert_store, store_text) that differ from
        what the existing index at `location` was built with: they would be ignored, and documents added now
        stored the old way without a word."""
        diff = []
        for name in ("engine", "colbert_store", "store_text"):
            if name in options and options[name] != getattr(self, name):
                diff.append(f"{name.replace('_', ' ')} {getattr(self, name)!r} (asked: {options[name]!r})")
        if "modes" in options and set(check_modes(options["modes"])) != set(self.modes):
            diff.append(f"modes {','.join(self.modes)} (asked: {','.join(check_modes(options['modes']))})")
        storage = options.get("colbert_storage")
        if storage is not None and storage != self.colbert_storage:
            diff += [f"colbert {name.replace('_', ' ')} {getattr(self.colbert_storage, name)!r} (asked: "
                     f"{getattr(storage, name)!r})" for name in ColbertStorage.__dataclass_fields__
                     if getattr(storage, name) != getattr(self.colbert_storage, name)]
        if diff:
            raise ValueError(f"index {location} already exists with {'; '.join(diff)}; its documents keep the "
                             "storage it was built with, so build into a new directory (or delete this one), or "
                             "leave these options out to add to it")

    def check_model(self, model: Any, location: str) -> None:
        """Refuse a model whose fingerprint differs from the one the index was built with (computed with the
        index's fingerprint scheme, so indexes built by older m3embed versions still open with their model)."""
        fp = model_fingerprint(model, self.fingerprint_version)
        if fp != self.fingerprint:
            name = getattr(model, "name", None) or type(model).__name__
            scheme = " (version 1: config and heads only)" if self.fingerprint_version == 1 else ""
            raise ValueError(f"index {location} was built with model {self.model_name!r} (fingerprint "
                             f"{self.fingerprint}{scheme}), but the given model {name!r} has fingerprint {fp}; "
                             "use the index's model or build a new index")
        missing = [m for m in self.modes if m not in model.available_modes()]
        if missing:
            raise ValueError(f"index {location} stores {', '.join(missing)} but the model has no such head")


def model_fingerprint(model: Any, version: int = FINGERPRINT_VERSION) -> str | None:
    """A model's fingerprint in scheme `version` (`M3Model.fingerprint`, or `legacy_fingerprint` for 1)."""
    if version == 1:
        return getattr(model, "legacy_fingerprint", None)
    return getattr(model, "fingerprint", None)


def read_manifest(directory: Path) -> Manifest:
    """The manifest of an index directory, with clear errors for missing, foreign or damaged ones."""
    path = directory / MANIFEST_NAME
    if not directory.exists():
        raise FileNotFoundError(f"no index at {directory}; create one with `m3embed index build` "
                                "or open_index(path, model, create=True)")
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file, not an index directory")
    if not path.is_file():
        raise ValueError(f"{directory} is not an m3embed index (no {MANIFEST_NAME}); point to an index "
                         "directory, or create a new index in an empty one")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); rebuild the index") from e
    if not isinstance(data, dict):  # a damaged file, not a caller's type mistake
        raise ValueError(f"{path} is damaged (not a JSON object); rebuild the index")  # noqa: TRY004
    return Manifest.from_json(data, str(path))


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write the manifest atomically (temp file + rename)."""
    tmp = directory / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    os.replace(tmp, directory / MANIFEST_NAME)


class IndexBusyError(PermissionError):
    """The index directory is held by another open Index (this or another process)."""


class DirectoryLock:
    """An exclusive lock on an index directory: one open Index per directory at a time, across processes.

    Threads of one process share one Index instead. The OS drops the lock when the process dies.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self._lock = portalocker.Lock(str(self.path), mode="a", timeout=0,
                                      flags=portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except portalocker.LockException as e:
            raise IndexBusyError(f"index {self.path.parent} is open elsewhere (another process or another Index "
                               "object holds it); close that first. One process opens an index at a time; "
                               "its threads can share the Index for concurrent searches and adds") from e

    def release(self) -> None:
        self._lock.release()
