"""Bulk load of encoded shards: the same index as one built from texts, foreign shards refused, a load killed with
SIGKILL resumes without losing or duplicating a document."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from m3embed import shards
from m3embed.corpus import read_records
from m3embed.index import Index
from m3embed.index.bulk import load_encoded, open_for_encoded
from m3embed.index.ingest import ingest
from m3embed.model import M3Model
from m3embed.ray_data import M3Encoder, PartEncoder
from m3testkit.checkpoints import sample_texts
from tests.index.test_cli_index import CLI, m3embed

MODES = ("dense", "sparse", "colbert")
QUERIES = ["the river near the harbour", "eine alte Karte", "trois pommes rouges", "Our team builds"]


def encode_without_ray(input: Path, out: Path, model: str, rows_per_part: int) -> None:
    """What `encode_job` does, with the job's actor class run in this process (no cluster needed)."""
    files = shards.expand_inputs(input)
    spec = shards.JobSpec(model=model, modes=MODES, max_length=None, dtype="float32", inputs=[str(f) for f in files],
                          rows_per_part=rows_per_part)
    shards.open_job(out, spec)
    PartEncoder(str(out), json.dumps(spec.to_json()), batch_size=16)(
        {"part": [p.to_json() for p in shards.plan_parts(files, rows_per_part)]})
    shards.finish_job(out, spec)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, xlmr_ckpt: Path) -> tuple[Path, Path]:
    """(documents file, finished job directory): 120 documents with metadata, 4 shards."""
    root = tmp_path_factory.mktemp("bulk")
    docs = root / "docs.jsonl"
    with docs.open("w", encoding="utf-8") as f:
        for i, text in enumerate(sample_texts(120, seed=4)):
            f.write(json.dumps({"id": f"d{i}", "text": text, "lang": ("en", "de", "fr")[i % 3], "n": i},
                               ensure_ascii=False) + "\n")
    encode_without_ray(docs, root / "encoded", str(xlmr_ckpt), rows_per_part=32)
    return docs, root / "encoded"


@pytest.fixture(scope="module")
def model(xlmr_ckpt: Path) -> M3Model:
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu")


def same_results(a: Index, b: Index, model: M3Model) -> None:
    for mode in ("dense", "sparse", "all"):
        for q in QUERIES:
            ha, hb = a.search(q, k=10, mode=mode, candidates=50), b.search(q, k=10, mode=mode, candidates=50)
            assert [(h.id, h.text, h.metadata) for h in ha] == [(h.id, h.text, h.metadata) for h in hb]
            assert [h.score for h in ha] == pytest.approx([h.score for h in hb], abs=1e-5)


@pytest.mark.parametrize("engine", ["edge", "qdrant"])  # qdrant: qdrant-client local mode, in memory
def test_load_equals_an_index_built_from_texts(tmp_path: Path, job, model: M3Model, engine: str) -> None:
    docs, encoded = job
    where = {"edge": (tmp_path / "texts", tmp_path / "loaded"), "qdrant": (":memory:", ":memory:")}[engine]
    with Index.create(where[0], model, engine=engine) as built:
        ingest(built, read_records(docs), batch_size=50)
        with open_for_encoded(where[1], encoded, engine=engine) as loaded:
            stats = load_encoded(loaded, encoded, batch_size=25)
            assert (stats.seen, stats.added, stats.skipped) == (120, 120, 0)
            assert loaded.count() == built.count() == 120
            assert loaded.manifest.fingerprint == model.fingerprint and loaded.manifest.modes == MODES
            loaded.attach(model)  # the index records the shards' model: searching with texts works
            same_results(built, loaded, model)
            again = load_encoded(loaded, encoded)
            assert (again.added, again.skipped) == (0, 120)


def test_a_repeated_id_keeps_its_last_row_across_batches(tmp_path: Path, xlmr_ckpt: Path, model: M3Model) -> None:
    """The commit loop is ingest's (it used to be a copy that let the first copy win across batches)."""
    docs = tmp_path / "docs.jsonl"
    rows = [("a", "the first copy"), ("b", "a bee"), ("c", "the sea"), ("a", "the last copy")]
    docs.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))
    encode_without_ray(docs, tmp_path / "encoded", str(xlmr_ckpt), rows_per_part=32)
    with open_for_encoded(tmp_path / "idx", tmp_path / "encoded") as index:
        stats = load_encoded(index, tmp_path / "encoded", batch_size=2)  # the copies of "a" in two batches
        assert (stats.added, stats.duplicates, index.count()) == (4, 1, 3)
        index.attach(model)
        assert index.search("the last copy", k=1, mode="dense")[0].text == "the last copy"


def test_a_shard_from_another_model_is_refused(tmp_path: Path, job, model: M3Model, bert_ckpt: Path) -> None:
    _, encoded = job
    other = M3Encoder(str(bert_ckpt), MODES)
    shard = tmp_path / "other.parquet"
    writer = shards.ShardWriter(tmp_path, shard.name)
    writer.write(other.encode(["x1", "x2"], ["one text", "another text"]))
    writer.close(shards.output_schema(MODES, 384))
    with open_for_encoded(tmp_path / "idx", encoded) as index:
        with pytest.raises(ValueError) as info:
            load_encoded(index, shard)
        message = str(info.value)
        assert other.fingerprint in message and model.fingerprint in message and str(shard) in message
        assert index.count() == 0


def test_sigkill_during_load_then_resume_loses_and_duplicates_nothing(tmp_path: Path, job, model: M3Model) -> None:
    docs, encoded = job
    idx = tmp_path / "idx"
    proc = subprocess.Popen([*CLI, "index", "build", str(idx), "--encoded", str(encoded), "--batch-size", "2",
                             "--log-commits"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reported = 0
    for line in proc.stdout:
        found = re.match(r"committed (\d+) records", line)
        reported = int(found.group(1)) if found else reported
        if reported >= 10:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the load finished before it could be killed"
    ids = [r.id for r in read_records(docs)]
    with Index.open(idx) as index:
        assert index.missing(ids[:reported]) == []
        stored = index.count()
    assert reported <= stored < len(ids)
    run = m3embed("index", "add", idx, "--encoded", encoded, "--batch-size", "50")
    assert run.returncode == 0, run.stderr
    assert re.search(rf"{len(ids) - stored} loaded, {stored} already stored; {len(ids)} documents", run.stderr)
    with Index.create(tmp_path / "texts", model) as built, Index.open(idx, model) as loaded:
        ingest(built, read_records(docs))
        assert loaded.count() == len(ids) and loaded.missing(ids) == []
        same_results(built, loaded, model)


def test_collection_options_reach_qdrant(tmp_path: Path, job) -> None:
    _, encoded = job
    run = m3embed("index", "build", tmp_path / "idx", "--encoded", encoded, "--engine", "qdrant", "--shards", "2",
                  "--replicas", "1", "--write-consistency", "1", "--on-disk")
    assert run.returncode == 0 and "120 loaded" in run.stderr, run.stderr
    run = m3embed("index", "build", tmp_path / "edge", "--encoded", encoded, "--shards", "2")
    assert run.returncode == 2 and "apply to the qdrant engine" in run.stderr


def test_loading_on_ray_needs_a_server(tmp_path: Path, job) -> None:
    from m3embed.index.bulk import load_encoded_ray

    for location in (str(tmp_path / "idx"), ":memory:"):
        with pytest.raises(ValueError, match="loading on Ray needs a Qdrant server URL"):
            load_encoded_ray(location, job[1])


def test_an_existing_index_refuses_other_storage_options(tmp_path: Path, job, model: M3Model) -> None:
    """`index build` on an existing index used to exit 0 with other --pool-factor / --colbert-quantization /
    --engine and store the new documents the old way; the options are now compared with the index's own."""
    from m3embed.index import ColbertStorage, open_index
    from m3embed.index.build import Source, build
    from m3embed.index.manifest import TOKEN_STORE_DEFAULT

    docs, encoded = job
    idx = tmp_path / "idx"
    with open_for_encoded(idx, encoded, modes=("dense", "colbert")) as index:
        assert index.manifest.modes == ("dense", "colbert")
    with open_for_encoded(idx, encoded) as index:  # no options: the index keeps what it stores
        assert index.manifest.modes == ("dense", "colbert")
    assert index.manifest.colbert_storage == TOKEN_STORE_DEFAULT  # binary codes only
    asked = ColbertStorage(quantization="int8", pool_factor=2)
    with pytest.raises(ValueError, match=rf"index {idx} already exists with colbert quantization 'binary' \(asked: "
                       r"'int8'\); colbert originals 'none' \(asked: 'ram'\); colbert rescore False \(asked: "
                       r"True\); colbert pool factor 1 \(asked: 2\); .* build into a new directory"):
        open_for_encoded(idx, encoded, colbert_storage=asked)
    with pytest.raises(ValueError, match=r"engine 'edge' \(asked: 'qdrant'\)"):
        open_index(idx, model, create=True, engine="qdrant")
    with pytest.raises(ValueError, match=r"modes dense,colbert \(asked: dense,sparse,colbert\)"):
        build(idx, Source(docs), load_model=lambda _: model, modes=MODES)
    with open_index(idx, model, create=True, colbert_storage=TOKEN_STORE_DEFAULT, store_text=True) as index:
        assert index.count() == 0  # the same options: opened as it is, to resume


@pytest.mark.parametrize("damage", ["footer", "truncated", "pages"])
def test_a_damaged_shard_is_named_with_the_way_out_and_leaves_no_index(tmp_path: Path, job, damage: str) -> None:
    """A damaged shard used to give Arrow's "Couldn't deserialize thrift: ..." with no file and no fix, and a
    failed first build left an empty index behind."""
    import shutil

    from m3embed.index.build import Source, build

    encoded = Path(shutil.copytree(job[1], tmp_path / "encoded"))
    shard = sorted(encoded.glob("part-*.parquet"))[1]
    data = bytearray(shard.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # bytes flipped in the footer's thrift, or in the first column's pages
        span = range(len(data) - 400, len(data) - 40) if damage == "footer" else range(200, 4000)
        for i in span:
            data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    idx = tmp_path / "idx"
    with pytest.raises(shards.DamagedShardError, match=rf"shard {re.escape(str(shard))} is damaged \(.+\); delete it "
                       r"and run the same `m3embed encode \.\.\. --ray` again: the job resumes"):
        build(idx, Source(encoded, encoded=True), load_model=lambda _: None, batch_size=512)
    assert not idx.exists()


def test_a_bulk_load_shows_its_progress_on_stderr(tmp_path: Path, job, capfd) -> None:
    _, encoded = job
    with open_for_encoded(tmp_path / "idx", encoded) as index:
        capfd.readouterr()
        load_encoded(index, encoded, batch_size=50, progress=True)
        out, err = capfd.readouterr()
    assert out == "" and "loading (0 already stored)" in err and "120/120" in err
