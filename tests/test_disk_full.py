"""A full disk gives one line naming the path and the bytes needed, never SIGBUS, a traceback or a partial file
(issue 9 item 2). Each test mounts a small file system of its own: ext4 on a loop device (what a real disk
does) or tmpfs; without root or loop devices they are skipped."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from m3embed.cli import _os_message, main
from m3embed.diskspace import RESERVE, DiskFullError, allocated_bytes, free_bytes
from m3embed.index import Index
from m3embed.types import M3Output
from m3testkit import synthetic
from m3testkit.checkpoints import sample_texts

MB = 2**20
CLI = [sys.executable, "-c", "from m3embed.cli import main; main()"]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """`small_fs(size_mb, kind="ext4" | "tmpfs")`: a fresh file system of that size, mounted for this test."""
    mounted: list[Path] = []

    def make(size_mb: int, kind: str = "ext4") -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a size-limited file system needs root")
        point = tmp_path / f"{kind}{len(mounted)}"
        point.mkdir()
        if kind == "ext4":
            if shutil.which("mkfs.ext4") is None:
                pytest.skip("mkfs.ext4 is not installed")
            image = tmp_path / f"{point.name}.img"
            with image.open("wb") as f:
                f.truncate(size_mb * MB)
            made = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True)
            if made.returncode != 0:
                pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
            cmd = ["mount", "-o", "loop", str(image), str(point)]
        else:
            cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(point)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a {kind} file system here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield make
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture(scope="module")
def corpus() -> SimpleNamespace:
    """400 synthetic documents with the three representations (32-d)."""
    docs = synthetic.corpus(400, dim=32, vocab=3000, n_ids=20, tokens=(3, 10), topics=8, seed=0)
    return SimpleNamespace(docs=docs, ids=[f"doc-{i}" for i in range(len(docs))])


def fill(fs: Path, leave: int) -> None:
    """Take the free space of `fs` but `leave` bytes (about: the file system's own metadata takes some)."""
    with (fs / f"filler{len(list(fs.glob('filler*')))}").open("wb", buffering=0) as f:
        size = free_bytes(fs) - leave
        while size > 0:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
                break
            except OSError as e:  # ext4 needs a few blocks for the file's extents
                if e.errno != errno.ENOSPC:
                    raise
                size -= 64 * 2**10
        if leave == 0:  # the last blocks, page by page
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise


def run_cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: object) -> tuple[int, str]:
    """`m3embed ARGS` in this process through main(): (exit code, stderr)."""
    monkeypatch.setattr("sys.argv", ["m3embed", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


def cli(*args: object) -> subprocess.CompletedProcess:
    """`m3embed ARGS` in a new process: a SIGBUS there fails the test instead of killing pytest."""
    return subprocess.run([*CLI, *map(str, args)], check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"})


def _outputs(n: int, dim: int) -> M3Output:
    rng = np.random.default_rng(0)
    return M3Output(dense=rng.standard_normal((n, dim), dtype=np.float32), n_tokens=np.full(n, 5))


def test_save_checks_space_first_and_writes_no_partial_file(small_fs) -> None:
    fs = small_fs(16)
    out = fs / "out"
    _outputs(4, 8).save(out, ids=list("abcd"))  # an earlier, complete save
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill(fs, 1 * MB)
    big = _outputs(1000, 512)  # 2 MB of dense vectors
    with pytest.raises(DiskFullError, match=rf"saving 1000 outputs in {out}: needs about 2\.[0-9] MB"):
        big.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp file, the old save intact
    with pytest.raises(DiskFullError):
        big.save(fs / "new" / "dir")
    assert not (fs / "new").exists()


def test_encode_to_a_full_disk_is_one_line(small_fs, xlmr_ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    fs = small_fs(16)
    src = tmp_path / "d.jsonl"
    src.write_text('{"id":"a","text":"the quick brown fox"}\n')
    fill(fs, 0)
    code, err = run_cli(capsys, monkeypatch, "encode", src, "-o", fs / "out", "-m", xlmr_ckpt)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{fs / 'out'}" in err and "needs about" in err and "Traceback" not in err
    assert not (fs / "out").exists()


def test_build_on_a_small_disk_stops_with_one_line_and_the_index_still_opens(small_fs, xlmr_ckpt: Path,
                                                                          tmp_path: Path) -> None:
    fs = small_fs(24)
    src = tmp_path / "d.jsonl"
    with src.open("w") as f:
        for i, text in enumerate(sample_texts(400, seed=1)):
            f.write(json.dumps({"id": f"d{i}", "text": text * 3}) + "\n")
    fill(fs, RESERVE + 2 * MB)  # room for a few batches, not for all
    run = cli("index", "build", fs / "idx", src, "-m", xlmr_ckpt, "--batch-size", "32", "--log-commits")
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])  # -7 would be SIGBUS
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"not enough free space for writing 32 documents in {fs / 'idx'}: needs about" in err[0]
    committed = [int(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("committed")]
    assert committed and committed[-1] < 400  # some batches went in before the disk filled up
    fill(fs, 0)  # now the disk is full: the index still opens, counts and searches (ext4 allocates nothing)
    probe = ("import sys\nfrom m3embed.index import Index\nwith Index.open(sys.argv[1]) as i:\n"
             "    print(i.count())\n")
    run = subprocess.run([sys.executable, "-c", probe, str(fs / "idx")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == committed[-1]


def test_optimize_checks_for_a_second_copy(small_fs, corpus) -> None:
    fs = small_fs(32)
    with Index.create(fs / "idx", fingerprint="synthetic-test", dim=32) as index:
        index.add_outputs(corpus.ids[:200], corpus.docs.select(range(200)))
        index.flush()
        size = allocated_bytes(fs / "idx")
        fill(fs, RESERVE + size // 2)
        with pytest.raises(DiskFullError, match=rf"optimizing the index .* in {fs / 'idx'}: needs about .*; the "
                                                 "documents are stored and searchable"):
            index.optimize()
        assert index.count() == 200
        fill(fs, RESERVE // 2)
        with pytest.raises(DiskFullError, match="writing 10 documents"):
            index.add_outputs(corpus.ids[200:210], corpus.docs.select(range(200, 210)))
        for filler in fs.glob("filler*"):
            filler.unlink()
        index.optimize()
        index.add_outputs(corpus.ids[200:210], corpus.docs.select(range(200, 210)))
        assert index.count() == 210
    assert not list(fs.glob("idx/**/*.tmp*"))


def test_creation_on_a_full_disk_leaves_nothing(small_fs) -> None:
    fs = small_fs(16)
    fill(fs, 0)
    with pytest.raises(DiskFullError, match=rf"creating an index in {fs / 'a' / 'idx'}"):
        Index.create(fs / "a" / "idx", fingerprint="x", dim=8)
    assert sorted(p.name for p in fs.iterdir()) == ["filler0", "lost+found"]


def test_tmpfs_index_needs_room_to_open(small_fs, corpus) -> None:
    fs = small_fs(160, kind="tmpfs")
    with Index.create(fs / "idx", fingerprint="synthetic-test", dim=32) as index:
        index.add_outputs(corpus.ids[:50], corpus.docs.select(range(50)))
    fill(fs, 4 * MB)  # on tmpfs, Qdrant Edge's open fills its 32 MB vector chunks: SIGBUS without the check
    run = cli("index", "info", fs / "idx")
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert run.stderr.count("\n") == 1 and "opening the index on tmpfs" in run.stderr, run.stderr
    assert "preallocated 32 MB chunks" in run.stderr and "move the index to a disk file system" in run.stderr


def test_cli_names_the_path_of_any_full_disk_error() -> None:
    raw = OSError(errno.ENOSPC, "No space left on device", "/data/out/dense.npy")
    assert _os_message(raw) == ("no space left on the device: /data/out/dense.npy; free some space or choose "
                                "another location")
    assert _os_message(DiskFullError("not enough free space for x in /p", "/p")) == "not enough free space for x in /p"
