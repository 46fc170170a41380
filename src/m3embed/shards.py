"""Encoded shards: model outputs stored as Parquet, what an encode job writes and a bulk load reads.

One row per document (`output_schema`): `id`, `text`, `metadata` (JSON), `fingerprint` (the model's), `n_tokens`,
and per mode `dense` fixed_size_list<float32>[dim]; `sparse_indices` list<int32> with `sparse_values`
list<float32>; `colbert` list<fixed_size_list<float32>[dim]> (n_tokens − 1 rows, counted by the list).

A job directory holds `part-FFFFF-KKKKK.parquet` (input file F, part K, in input order), `_JOB.json` (the job's
settings, written first, so a re-run with other settings is refused) and, once every part is written,
`_SUCCESS.json` (model, modes, fingerprint, dim, counts). Each part is written to a temporary name and renamed,
so a part file is complete or absent, and writing it again (a retried task) replaces it whole.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import sparse as sp

from m3embed._optional import require
from m3embed.corpus import Record, iter_jsonl, make_record
from m3embed.modes import MODES, check_modes
from m3embed.types import M3Output

pa = require("pyarrow", "parquet")
pc = require("pyarrow.compute", "parquet")
pq = require("pyarrow.parquet", "parquet")

JOB_FILE = "_JOB.json"
SUCCESS_FILE = "_SUCCESS.json"
INPUT_SUFFIXES = (".jsonl", ".json", ".parquet")
FORMAT_VERSION = 1


# ---- the row format ----


def output_schema(modes: Sequence[str], dim: int) -> pa.Schema:
    """The Arrow schema of encoded rows holding `modes` of a model with `dim`-sized vectors."""
    modes = check_modes(modes)
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string()),
              pa.field("metadata", pa.string()), pa.field("fingerprint", pa.string(), nullable=False),
              pa.field("n_tokens", pa.int32(), nullable=False)]
    if "dense" in modes:
        fields.append(pa.field("dense", pa.list_(pa.float32(), dim)))
    if "sparse" in modes:
        fields += [pa.field("sparse_indices", pa.list_(pa.int32())), pa.field("sparse_values", pa.list_(pa.float32()))]
    if "colbert" in modes:
        fields.append(pa.field("colbert", pa.list_(pa.list_(pa.float32(), dim))))
    return pa.schema(fields)


def to_table(ids: Sequence[str], outputs: M3Output, fingerprint: str, dim: int,
             texts: Sequence[str] | None = None, metadata: Sequence[Mapping[str, Any]] | None = None) -> pa.Table:
    """Encoded rows of `ids` (one per text of `outputs`) as an Arrow table of `output_schema`."""
    n = len(ids)
    if len(outputs) != n:
        raise ValueError(f"{n} ids but {len(outputs)} outputs; give one id per output")
    modes = tuple(m for m in MODES if getattr(outputs, m) is not None)
    schema = output_schema(modes, dim)
    columns: dict[str, pa.Array] = {
        "id": pa.array([str(i) for i in ids], pa.string()),
        "text": pa.array(list(texts) if texts is not None else [None] * n, pa.string()),
        "metadata": pa.array([None if m is None else json.dumps(dict(m), ensure_ascii=False, default=str)
                              for m in (metadata if metadata is not None else [None] * n)], pa.string()),
        "fingerprint": pa.array([fingerprint] * n, pa.string()),
        "n_tokens": pa.array(np.asarray(outputs.n_tokens, dtype=np.int32)),
    }
    if outputs.dense is not None:
        flat = pa.array(np.ascontiguousarray(outputs.dense, dtype=np.float32).reshape(-1))
        columns["dense"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    if outputs.sparse is not None:
        csr = outputs.sparse
        offsets = pa.array(csr.indptr.astype(np.int32))
        columns["sparse_indices"] = pa.ListArray.from_arrays(offsets, pa.array(csr.indices.astype(np.int32)))
        columns["sparse_values"] = pa.ListArray.from_arrays(offsets, pa.array(csr.data.astype(np.float32)))
    if outputs.colbert is not None:
        flat, offsets = outputs.colbert_flat()
        rows = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(flat, np.float32).reshape(-1)), dim)
        columns["colbert"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), rows)
    return pa.table([columns[f.name] for f in schema], schema=schema)


class EncodedRows(NamedTuple):
    """Rows read back from a shard: ids, outputs, texts (None where absent) and metadata dicts."""

    ids: list[str]
    outputs: M3Output
    texts: list[str | None]
    metadata: list[dict]


def from_table(table: pa.Table | pa.RecordBatch, vocab_size: int | None = None) -> EncodedRows:
    """Read rows of `output_schema` back into an M3Output (the sparse matrix is `vocab_size` wide, default: the
    largest id + 1)."""
    n = table.num_rows
    names = set(table.schema.names)
    dense = sparse = colbert = None
    if "dense" in names:
        col = _column(table, "dense")
        dense = _numpy(col.flatten()).reshape(n, col.type.list_size)
    if "sparse_indices" in names:
        ind, val = _column(table, "sparse_indices"), _column(table, "sparse_values")
        ids = _numpy(ind.flatten()).astype(np.int32)
        width = vocab_size or (int(ids.max()) + 1 if len(ids) else 1)
        sparse = sp.csr_array((_numpy(val.flatten()).astype(np.float32), ids, _offsets(ind)), shape=(n, width))
    if "colbert" in names:
        col = _column(table, "colbert")
        rows = col.flatten()  # (N,) fixed-size lists of dim floats
        flat = _numpy(rows.flatten()).reshape(-1, rows.type.list_size)
        colbert = M3Output.colbert_from_flat(flat, _offsets(col))
    outputs = M3Output(dense=dense, sparse=sparse, colbert=colbert,
                       n_tokens=_numpy(_column(table, "n_tokens")).astype(np.int64))
    metadata = [json.loads(m) if m else {} for m in table.column("metadata").to_pylist()]
    return EncodedRows(table.column("id").to_pylist(), outputs, table.column("text").to_pylist(), metadata)


def _column(table: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _numpy(values: pa.Array) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False)


def _offsets(col: pa.ListArray) -> np.ndarray:
    """Row offsets into `col.flatten()` (a sliced array's offsets start above 0)."""
    offsets = col.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def modes_of(schema: pa.Schema) -> tuple[str, ...]:
    """The representations a shard of this schema holds."""
    columns = {"dense": "dense", "sparse": "sparse_indices", "colbert": "colbert"}
    return tuple(m for m in MODES if columns[m] in schema.names)


# ---- input parts: the resumable units of a job ----


@dataclass(frozen=True)
class Part:
    """A slice of one input file, encoded into one shard.

    Attributes:
        name: the shard's file name (`part-FFFFF-KKKKK.parquet`).
        path: the input file.
        first: number of its first line (jsonl) or row (parquet), 1-based: the default ids count from it.
        rows: lines (jsonl, blank ones included) or rows (parquet) it holds.
        offset: jsonl: byte offset of the first line.
        row_groups: parquet: the row groups read.
    """

    name: str
    path: str
    first: int = 1
    rows: int = 0
    offset: int = 0
    row_groups: tuple[int, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Part:
        d = json.loads(text)
        return cls(**{**d, "row_groups": tuple(d["row_groups"])})


def expand_inputs(spec: str | Path) -> list[Path]:
    """Input files of a job: a file, a directory (its *.jsonl, *.json, *.parquet, sorted) or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"directory {path} holds no {', '.join(INPUT_SUFFIXES)} files")
    else:
        files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"no input matches {str(spec)!r} (give a file, a directory or a glob)")
    for f in files:
        if f.suffix.lower() not in INPUT_SUFFIXES:
            raise ValueError(f"{f}: unsupported input format {f.suffix!r}; use one of {', '.join(INPUT_SUFFIXES)}")
    return [f.resolve() for f in files]


def plan_parts(files: Sequence[Path], rows_per_part: int) -> list[Part]:
    """Cut input files into parts of about `rows_per_part` documents; the same files give the same parts.

    jsonl files are cut every `rows_per_part` lines (one pass counting lines); parquet files at row-group
    boundaries, a part collecting row groups until it holds at least `rows_per_part` rows.
    """
    if rows_per_part < 1:
        raise ValueError(f"rows_per_part must be at least 1, got {rows_per_part}")
    parts: list[Part] = []
    for f_no, path in enumerate(files):
        if path.suffix.lower() == ".parquet":
            parts += _parquet_parts(f_no, path, rows_per_part)
        else:
            parts += _jsonl_parts(f_no, path, rows_per_part)
    return parts


def _name(f_no: int, k: int) -> str:
    return f"part-{f_no:05d}-{k:05d}.parquet"


def _jsonl_parts(f_no: int, path: Path, size: int) -> list[Part]:
    parts, offset, line, start, start_line = [], 0, 0, 0, 1
    with path.open("rb") as f:
        for raw in f:
            line += 1
            offset += len(raw)
            if line - start_line + 1 == size:
                parts.append(Part(_name(f_no, len(parts)), str(path), start_line, size, start))
                start, start_line = offset, line + 1
    if line >= start_line:
        parts.append(Part(_name(f_no, len(parts)), str(path), start_line, line - start_line + 1, start))
    return parts


def _parquet_parts(f_no: int, path: Path, size: int) -> list[Part]:
    meta = pq.ParquetFile(path).metadata
    parts: list[Part] = []
    groups: list[int] = []
    rows = first = 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        rows += meta.row_group(g).num_rows
        if rows >= size or g == meta.num_row_groups - 1:
            parts.append(Part(_name(f_no, len(parts)), str(path), first + 1, rows, row_groups=tuple(groups)))
            first += rows
            groups, rows = [], 0
    return parts


def read_part(part: Part, text_field: str = "text", id_field: str = "id",
              title_field: str | None = "title", generate_ids: bool = False) -> list[Record]:
    """The records of a part, with the fields and errors of `m3embed.corpus.read_records`."""
    path = Path(part.path)
    if path.suffix.lower() != ".parquet":
        return [make_record(row, f"{path}:{lineno}", text_field, id_field, title_field, generate_ids)
                for lineno, row in iter_jsonl(path, offset=part.offset, first_line=part.first, max_lines=part.rows)]
    reader = pq.ParquetFile(path)
    if text_field not in reader.schema_arrow.names:
        raise ValueError(f"{path}: missing column {text_field!r} (columns: {', '.join(reader.schema_arrow.names)})")
    rows = reader.read_row_groups(list(part.row_groups)).to_pylist()
    return [make_record(row, f"{path}: row {part.first + i}", text_field, id_field, title_field, generate_ids)
            for i, row in enumerate(rows)]


# ---- the job directory ----


@dataclass
class JobSpec:
    """What an encode job produces; a re-run must ask for the same, or be refused.

    Attributes:
        model: the model's name or (absolute) path, as the actors load it.
        modes: representations encoded.
        max_length: truncation in tokens (None: the model's passage_max_length).
        dtype: the model's dtype on the actors.
        inputs: the input files, in order; rows_per_part: documents per part.
        text_field, id_field, title_field, generate_ids: how input rows become records.
    """

    model: str
    modes: tuple[str, ...]
    max_length: int | None
    dtype: str
    inputs: list[str]
    rows_per_part: int
    text_field: str = "text"
    id_field: str = "id"
    title_field: str | None = "title"
    generate_ids: bool = False
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "modes": list(self.modes)}


def open_job(out: Path, spec: JobSpec) -> None:
    """Start or resume the job in `out`: write `_JOB.json`, or check that the one there asks for the same."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / JOB_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        old = {k: old.get(k, getattr(JobSpec, k, None)) for k in spec.to_json()}  # a later field: its default
        diff = {k: (old[k], v) for k, v in spec.to_json().items() if old[k] != v}
        if diff:
            what = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(f"{out} holds shards of another encode job ({what}); resume it with the same "
                             "settings or write to a new directory")
    elif any(out.glob("part-*.parquet")):
        raise ValueError(f"{out} holds part files but no {JOB_FILE}; write to a new directory")
    else:
        _write_json(path, spec.to_json())


def finished_parts(out: Path) -> set[str]:
    """Names of the part files already written (complete: they are renamed into place once written)."""
    return {p.name for p in out.glob("part-*.parquet")}


class ShardWriter:
    """Write one shard as row groups, under a temporary name renamed into place by `close`."""

    def __init__(self, out: Path, name: str) -> None:
        self.path = out / name
        self.tmp = out / f".{name}.{uuid.uuid4().hex}.tmp"
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self, empty_schema: pa.Schema) -> Path:
        """Finish the file (an empty part gets an empty file of `empty_schema`) and move it into place."""
        if self._writer is None:
            pq.write_table(empty_schema.empty_table(), self.tmp)
        else:
            self._writer.close()
        os.replace(self.tmp, self.path)
        return self.path


@dataclass
class Encoded:
    """A set of shards to load: the files, in order, and the job's summary when it finished."""

    files: list[Path]
    summary: dict[str, Any] | None = None


def finish_job(out: Path, spec: JobSpec) -> dict[str, Any]:
    """Check every part of the job is written, with one model, then write and return `_SUCCESS.json`."""
    files = sorted(out.glob("part-*.parquet"))
    fingerprints = {f.name: fp for f in files for fp in [shard_fingerprint(f)] if fp is not None}
    found = sorted(set(fingerprints.values()))
    if len(found) > 1:
        raise ValueError(f"{out} holds shards of {len(found)} models (fingerprints {', '.join(found)}); "
                         "encode into a new directory")
    counts = {f.name: shard_rows(f) for f in files}
    schema = shard_schema(files[0]) if files else None
    dim = None
    if schema is not None and "dense" in schema.names:
        dim = schema.field("dense").type.list_size
    elif schema is not None and "colbert" in schema.names:
        dim = schema.field("colbert").type.value_type.list_size
    summary = {**spec.to_json(), "fingerprint": found[0] if found else None, "dim": dim,
               "documents": sum(counts.values()), "shards": counts}
    _write_json(out / SUCCESS_FILE, summary)
    for stale in out.glob(".part-*.tmp"):  # left by tasks that died while writing (their part was redone)
        stale.unlink(missing_ok=True)
    return summary


def open_encoded(path: str | Path) -> Encoded:
    """The shards at `path`: one Parquet file, or a job directory that has finished (`_SUCCESS.json`)."""
    path = Path(path)
    if path.is_file():
        return Encoded([path])
    if not path.is_dir():
        raise FileNotFoundError(f"no encoded shards at {path}; run `m3embed encode INPUT -o {path} --ray` first")
    if not (path / SUCCESS_FILE).is_file():
        raise ValueError(f"{path} holds no finished encode job ({SUCCESS_FILE} is missing); run the same "
                         "`m3embed encode ... --ray` again to finish it")
    summary = json.loads((path / SUCCESS_FILE).read_text())
    files = [path / name for name in sorted(summary["shards"])]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{path}: {len(missing)} shard(s) listed in {SUCCESS_FILE} are missing, e.g. {missing[0]}; "
                         "run the same `m3embed encode ... --ray` again: the job encodes only the missing shards")
    return Encoded(files, summary)


REENCODE = ("delete it and run the same `m3embed encode ... --ray` again: the job resumes and encodes only the "
            "missing shards")


class DamagedShardError(ValueError):
    """A shard Parquet cannot read (truncated, overwritten, bit rot): names the file and the way out."""


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Arrow's errors for a damaged file ("Couldn't deserialize thrift ...", a missing footer) as one line naming
    the shard and `REENCODE`; an I/O error with an errno (permissions, a full disk) keeps its own message."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        reason = " ".join(str(e).replace(f"'{path}': ", "").split())[:200]
        raise DamagedShardError(f"shard {path} is damaged ({reason}); {REENCODE}") from None


def shard_rows(path: Path) -> int:
    """The documents a shard holds, from its footer (which is checked)."""
    with reading(path):
        return pq.ParquetFile(path).metadata.num_rows


def shard_schema(path: Path) -> pa.Schema:
    with reading(path):
        return pq.read_schema(path)


def shard_fingerprint(path: Path) -> str | None:
    """The model fingerprint a shard was encoded with (None for an empty shard); two in one shard is an error."""
    with reading(path):
        table = pq.read_table(path, columns=["fingerprint"])
    found = pc.unique(table.column("fingerprint")).to_pylist()
    if len(found) > 1:
        raise ValueError(f"shard {path} mixes outputs of {len(found)} models ({', '.join(map(str, found))})")
    return found[0] if found else None


def iter_shard(path: Path, batch_size: int, vocab_size: int | None = None) -> Iterator[EncodedRows]:
    """The rows of a shard, `batch_size` at a time; a damaged one raises `DamagedShardError` at its first bad page."""
    with reading(path):
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_size)
    while True:
        with reading(path):
            batch = next(batches, None)
        if batch is None:
            return
        yield from_table(batch, vocab_size)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
