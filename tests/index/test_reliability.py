"""Foreign, damaged and busy index directories give clear errors; concurrent readers and a writer are safe."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from m3embed.index import Index, IndexBusyError, open_index
from m3embed.index.manifest import MANIFEST_NAME


@pytest.fixture
def small_index(tmp_path: Path, corpus) -> Path:
    path = tmp_path / "idx"
    with Index.create(path, fingerprint="synthetic-test", dim=32) as index:
        index.add_outputs(corpus.ids[:50], corpus.docs.select(range(50)))
    return path


def test_missing_and_foreign_directories(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no index at"):
        Index.open(tmp_path / "nowhere")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not an m3embed index"):
        Index.open(foreign)
    with pytest.raises(ValueError, match="not empty and holds no index"):
        Index.create(foreign, fingerprint="x", dim=8)
    with pytest.raises(ValueError, match="not an m3embed index"):
        open_index(foreign)


def _garble_segments(p: Path) -> None:
    for f in (p / "shard" / "segments").glob("*/segment.json"):
        f.write_bytes(b"{{")


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / MANIFEST_NAME).write_text("{not json"), "damaged"),
    (lambda p: (p / MANIFEST_NAME).write_text(json.dumps({"format_version": 99})), "format version 99"),
    (lambda p: (p / MANIFEST_NAME).write_text(json.dumps({"format_version": 1, "engine": "edge"})), "damaged"),
    (lambda p: (p / "shard" / "edge_config.json").write_bytes(b"\x00garbage"), "could not be opened"),
    (_garble_segments, "could not be opened"),
    (lambda p: shutil.rmtree(p / "shard"), "shard .* is missing"),
])
def test_damaged_index_gives_clear_error(small_index: Path, damage, message: str) -> None:
    damage(small_index)
    with pytest.raises(ValueError, match=message):
        Index.open(small_index)
    if message != "format version 99":  # the lock is released after a failed open: a retry fails the same way
        with pytest.raises(ValueError, match=message):
            Index.open(small_index)


def test_second_open_is_refused_until_closed(small_index: Path) -> None:
    first = Index.open(small_index)
    with pytest.raises(IndexBusyError, match="open elsewhere"):
        Index.open(small_index)
    probe = ("import sys\nfrom m3embed.index import Index\ntry:\n    Index.open(sys.argv[1])\n"
             "except PermissionError as e:\n    print('refused:', e)\n")
    run = subprocess.run([sys.executable, "-c", probe, str(small_index)], check=False, capture_output=True,
                         text=True, timeout=120)
    assert "refused: index" in run.stdout and "open elsewhere" in run.stdout, run.stderr
    first.close()
    with Index.open(small_index) as again:
        assert again.count() == 50


@pytest.mark.parametrize("engine", ["edge", "qdrant-memory"])
def test_searches_while_a_writer_adds(make_index, corpus, engine: str) -> None:
    index = make_index(engine)
    index.add_outputs(corpus.ids[:100], corpus.docs.select(range(100)))
    errors: list[BaseException] = []
    seen: list[list[int]] = [[], []]  # per reader: two readers' counts may interleave in any order
    done = threading.Event()

    def reader(counts: list[int]) -> None:
        try:
            while not done.is_set():
                hits = index.search(corpus.queries, k=5, mode="all", candidates=20)
                assert all(len(h) == 5 for h in hits)
                counts.append(index.count())
        except BaseException as e:  # noqa: BLE001 (reported to the main thread)
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(counts,)) for counts in seen]
    for t in threads:
        t.start()
    for start in range(100, 400, 25):
        index.add_outputs(corpus.ids[start : start + 25], corpus.docs.select(range(start, start + 25)))
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors
    for counts in seen:  # each reader only ever saw whole batches appear, never disappear
        assert counts and counts == sorted(counts)
        assert all(c % 25 == 0 for c in counts)
    assert index.count() == 400


def test_closed_index_refuses_work(small_index: Path, corpus) -> None:
    index = Index.open(small_index)
    index.close()
    index.close()  # idempotent
    with pytest.raises(ValueError, match="is closed"):
        index.search(corpus.queries, mode="dense")
