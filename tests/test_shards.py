"""Encoded shards: Arrow rows round-trip to M3Output, input parts cover their files, a job refuses other settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m3embed import shards
from m3embed.corpus import read_records
from m3testkit import synthetic


def test_rows_round_trip_whole_and_sliced() -> None:
    docs = synthetic.corpus(30, dim=8, vocab=300, n_ids=5, tokens=(3, 6), topics=2, seed=0)
    ids = [f"d{i}" for i in range(30)]
    table = shards.to_table(ids, docs, "fp", 8, texts=[f"t{i}" for i in range(30)],
                            metadata=[{"n": i, "tags": ["a"]} for i in range(30)])
    assert table.schema == shards.output_schema(("dense", "sparse", "colbert"), 8)
    assert shards.modes_of(table.schema) == ("dense", "sparse", "colbert")
    for start, part in ((0, table), (5, table.slice(5, 7)), (12, table.to_batches(max_chunksize=12)[1])):
        rows = shards.from_table(part, vocab_size=300)
        ref = docs.select(range(start, start + part.num_rows))
        assert rows.ids == ids[start : start + part.num_rows]
        assert rows.metadata[0] == {"n": start, "tags": ["a"]} and rows.texts[0] == f"t{start}"
        assert np.array_equal(rows.outputs.dense, ref.dense)
        assert (rows.outputs.sparse != ref.sparse).nnz == 0
        assert all(np.array_equal(a, b) for a, b in zip(rows.outputs.colbert, ref.colbert))
        assert np.array_equal(rows.outputs.n_tokens, ref.n_tokens)


def test_parts_cover_the_input_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    lines = [json.dumps({"id": f"a{i}", "text": f"text {i}", "title": "T" if i % 3 else "", "k": i}) for i in range(23)]
    lines.insert(10, "")  # a blank line: counted in the part, yields no record
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    parquet = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(25)]}), parquet, row_group_size=4)
    files = shards.expand_inputs(tmp_path)
    assert files == [jsonl.resolve(), parquet.resolve()] and shards.expand_inputs(tmp_path / "*.parquet") == [parquet]
    parts = shards.plan_parts(files, 10)
    assert [p.name for p in parts] == ["part-00000-00000.parquet", "part-00000-00001.parquet",
                                       "part-00000-00002.parquet", "part-00001-00000.parquet",
                                       "part-00001-00001.parquet", "part-00001-00002.parquet"]
    assert [p.rows for p in parts] == [10, 10, 4, 12, 12, 1]  # parquet parts end at row-group boundaries
    for f in files:
        read = [r for p in parts if p.path == str(f)
                for r in shards.read_part(shards.Part.from_json(p.to_json()), generate_ids=True)]
        assert read == list(read_records(f, generate_ids=True))  # same ids (the parquet's generated), texts, metadata
    with pytest.raises(FileNotFoundError, match="no input matches"):
        shards.expand_inputs(tmp_path / "*.csv")


def test_a_job_directory_refuses_other_settings(tmp_path: Path) -> None:
    spec = shards.JobSpec(model="m", modes=("dense",), max_length=None, dtype="float32", inputs=["x"],
                          rows_per_part=10)
    shards.open_job(tmp_path, spec)
    shards.open_job(tmp_path, spec)  # the same job resumes
    other = shards.JobSpec(**{**spec.__dict__, "modes": ("dense", "sparse")})
    with pytest.raises(ValueError, match=r"another encode job \(modes: \['dense'\] there"):
        shards.open_job(tmp_path, other)
    with pytest.raises(ValueError, match="no finished encode job"):
        shards.open_encoded(tmp_path)
