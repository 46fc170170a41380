from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from m3embed.model import M3Model
from m3embed.types import M3Output


def m3embed(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m3embed", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_encode_writes_documented_files_equal_to_library(xlmr_ckpt, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": "d1", "text": "hello world"}, {"id": "d2", "text": "Привет мир", "title": "T"}]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    r = m3embed("encode", str(src), "-o", str(tmp_path / "out"), "-m", str(xlmr_ckpt),
                "--modes", "dense,sparse,colbert")
    assert r.returncode == 0, r.stderr
    got, ids = M3Output.load(tmp_path / "out")
    assert ids == ["d1", "d2"]
    ref = M3Model.from_pretrained(xlmr_ckpt, device="cpu").encode(["hello world", "T Привет мир"],
                                                                   modes="dense,sparse,colbert")
    np.testing.assert_allclose(got.dense, ref.dense, atol=1e-6)
    assert got.lexical_weights == ref.lexical_weights
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["count"] == 2 and meta["modes"] == ["dense", "sparse", "colbert"]


def test_score_prints_compute_score_keys(xlmr_ckpt):
    r = m3embed("score", "-m", str(xlmr_ckpt), "-q", "a query", "-p", "a passage", "-p", "another one")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 2
    ref = M3Model.from_pretrained(xlmr_ckpt, device="cpu").compute_score(
        [("a query", "a passage"), ("a query", "another one")])  # the same default weights as the CLI
    for i, line in enumerate(lines):
        for key, values in ref.items():
            assert line[key] == pytest.approx(values[i], abs=1e-6)


def test_rerank_ranks_passages_and_scores_pair_files(xlmr_reranker, tmp_path):
    from m3embed.rerank import Reranker

    passages = ["a passage", "another one", "Кошка читает"]
    r = m3embed("rerank", "-m", str(xlmr_reranker), "-q", "a query", *[x for p in passages for x in ("-p", p)])
    assert r.returncode == 0, r.stderr
    ranked = [json.loads(x) for x in r.stdout.splitlines()]
    ref = Reranker.from_pretrained(xlmr_reranker, device="cpu").compute_score([("a query", p) for p in passages])
    assert [row["index"] for row in ranked] == sorted(range(3), key=lambda i: -ref[i])
    assert [row["score"] for row in ranked] == pytest.approx(sorted(ref, reverse=True), abs=1e-6)
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps({"query": "a query", "passage": p}) + "\n" for p in passages))
    r = m3embed("rerank", str(src), "-m", str(xlmr_reranker), "--normalize")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [row["passage"] for row in rows] == passages
    assert [row["score"] for row in rows] == pytest.approx([1 / (1 + np.exp(-s)) for s in ref], abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["info", "-m", "/no/such/dir"], "does not exist"),
    (["encode", "/no/such/file.jsonl", "-o", "x"], "does not exist"),
    (["score", "-q", "x"], "give a pairs file"),
    (["rerank", "-m", "/no/such/dir", "-q", "x"], "give a pairs file"),
])
def test_user_errors_are_one_line_without_traceback(args, message, tmp_path):
    r = m3embed(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_rerank_defaults_to_bge_reranker_not_the_demonstration(tmp_path):
    """issue 21: the shipped minilm-reranker lowers nDCG@10, so `rerank` without --model names the hub model."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3EMBED_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "m3embed", "rerank", "-q", "x", "-p", "y"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300, env=env)
    assert r.returncode == 2 and "BAAI/bge-reranker-v2-m3" in r.stderr and "Traceback" not in r.stderr


def test_bad_jsonl_line_is_named(xlmr_ckpt, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "body": "no text"}\n')
    r = m3embed("encode", str(src), "-o", str(tmp_path / "o"), "-m", str(xlmr_ckpt))
    assert r.returncode == 2 and f"{src}:2: missing field 'text'" in r.stderr.replace("\n", "")
