"""`m3embed index build|add|delete|info` and `m3embed search`, including a build killed with SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from m3embed.index import Index
from m3testkit.checkpoints import sample_texts

CLI = [sys.executable, "-c", "from m3embed.cli import main; main()"]


def m3embed(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})


def write_docs(path: Path, n: int, seed: int = 0) -> list[str]:
    ids = []
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(sample_texts(n, seed=seed)):
            ids.append(f"doc{i}")
            f.write(json.dumps({"id": ids[-1], "text": text, "lang": ("en", "de")[i % 2]}, ensure_ascii=False) + "\n")
    return ids


def test_build_search_info_delete(tmp_path: Path, xlmr_ckpt: Path, xlmr_reranker: Path) -> None:
    docs, idx = tmp_path / "docs.jsonl", tmp_path / "idx"
    ids = write_docs(docs, 60)
    run = m3embed("index", "build", idx, docs, "--model", xlmr_ckpt, "--batch-size", "25", "--log-commits")
    assert run.returncode == 0, run.stderr
    assert re.findall(r"committed (\d+) records", run.stdout) == ["25", "50", "60"]
    run = m3embed("search", idx, sample_texts(60)[7], "-k", "3", "--json", "--where", "lang=de", "--explain",
                  "--colbert-top", "20")
    assert run.returncode == 0, run.stderr
    hits = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(hits) == 3 and all(h["metadata"]["lang"] == "de" for h in hits)
    assert set(hits[0]["scores"]) == {"dense", "sparse", "colbert"}
    run = m3embed("search", idx, sample_texts(60)[7], "-k", "3", "--json", "--reranker", xlmr_reranker,
                  "--rerank-top", "12")
    assert run.returncode == 0, run.stderr
    reranked = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(reranked) == 3 and all(set(h["scores"]) == {"all", "rerank"} for h in reranked)
    assert [h["score"] for h in reranked] == sorted((h["score"] for h in reranked), reverse=True)
    run = m3embed("index", "delete", idx, "doc0", "doc1", "missing")
    assert run.returncode == 0 and "deleted 2 of 3" in run.stderr
    run = m3embed("index", "info", idx)
    assert run.returncode == 0 and re.search(r"count\s+.*\b58\b", run.stdout), run.stdout
    with Index.open(idx) as index:
        assert index.missing(ids) == ["doc0", "doc1"]


def test_user_errors_are_one_line(tmp_path: Path, xlmr_ckpt: Path, bert_ckpt: Path) -> None:
    run = m3embed("search", tmp_path / "none", "query")
    assert run.returncode == 2 and "no index at" in run.stderr and "Traceback" not in run.stderr
    docs, idx = tmp_path / "docs.jsonl", tmp_path / "idx"
    write_docs(docs, 5)
    assert m3embed("index", "build", idx, docs, "--model", xlmr_ckpt).returncode == 0
    run = m3embed("search", idx, "query", "--model", bert_ckpt)
    assert run.returncode == 2 and "was built with model" in run.stderr
    run = m3embed("search", idx, "query", "--where", "year>>3")
    assert run.returncode == 2 and "--where" in run.stderr


def test_sigkill_during_build_loses_no_committed_batch(tmp_path: Path, xlmr_ckpt: Path) -> None:
    docs, idx = tmp_path / "docs.jsonl", tmp_path / "idx"
    ids = write_docs(docs, 1500, seed=1)
    proc = subprocess.Popen([*CLI, "index", "build", str(idx), str(docs), "--model", str(xlmr_ckpt),
                             "--batch-size", "8", "--log-commits"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    reported = 0
    for line in proc.stdout:
        m = re.match(r"committed (\d+) records", line)
        if m:
            reported = int(m.group(1))
        if reported >= 24:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    with Index.open(idx) as index:  # reopens after the kill
        assert index.missing(ids[:reported]) == []
        stored = index.count()
    assert reported <= stored < len(ids)
    run = m3embed("index", "build", idx, docs, "--model", xlmr_ckpt, "--batch-size", "200", timeout=300)
    assert run.returncode == 0, run.stderr
    added, skipped = map(int, re.search(r"(\d+) added, (\d+) already stored", run.stderr).groups())
    assert (skipped, added) == (stored, len(ids) - stored)  # resumed: nothing stored was encoded again
    with Index.open(idx) as index:
        assert index.count() == len(ids)
