"""NumpyEncoder (issue 22 item 12): M3Model's float32 query outputs without torch, known only by the fingerprint
M3Model computed for the same files, and what `m3embed search` runs when it covers the index's model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m3embed.index import open_index
from m3embed.model import M3Model
from m3embed.numpy_encoder import NumpyEncoder

MODES = ("dense", "sparse", "colbert")
QUERIES = ["what is the weather like", "a", "the capital of France, and the river that runs through it " * 20]


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("M3EMBED_CACHE", str(cache))
    return cache


def _assert_same(a, b) -> None:
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-5)
    np.testing.assert_array_equal(a.n_tokens, b.n_tokens)
    assert a.sparse.nnz == b.sparse.nnz and a.sparse.nnz > 0
    np.testing.assert_array_equal(a.sparse.indices, b.sparse.indices)
    np.testing.assert_allclose(a.sparse.data, b.sparse.data, atol=1e-5)
    for x, y in zip(a.colbert, b.colbert, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "xlmr"])
def test_equals_m3model_in_float32(arch: str, copy_ckpt, bert_ckpt: Path, xlmr_ckpt: Path) -> None:
    ckpt = copy_ckpt(bert_ckpt if arch == "bert" else xlmr_ckpt)
    config = json.loads((ckpt / "m3embed.json").read_text()) if (ckpt / "m3embed.json").is_file() else {}
    (ckpt / "m3embed.json").write_text(json.dumps({**config, "query_prefix": "query: ", "query_max_length": 40}))
    assert NumpyEncoder.load(str(ckpt)) is None  # no M3Model has vouched for these files yet
    model = M3Model.from_pretrained(ckpt, device="cpu")
    assert NumpyEncoder.load(str(ckpt)) is None  # loaded, but its fingerprint not yet asked for
    fingerprint = model.fingerprint  # as building an index does
    fast = NumpyEncoder.load(str(ckpt))
    assert fast is not None and fast.fingerprint == fingerprint
    assert fast.special_ids == model.special_ids and fast.available_modes() == model.available_modes()
    with pytest.warns(UserWarning, match="1 of 3 texts were longer than max_length=40"):
        expected = model.encode_queries(QUERIES, modes=MODES)
    with pytest.warns(UserWarning, match="1 of 3 texts were longer than max_length=40"):
        got = fast.encode_queries(QUERIES, modes=MODES)
    _assert_same(got, expected)
    assert got.n_tokens[2] == 40


def test_a_changed_head_is_not_vouched_for(copy_ckpt, xlmr_ckpt: Path) -> None:
    ckpt = copy_ckpt(xlmr_ckpt)
    model = M3Model.from_pretrained(ckpt, device="cpu")
    as_loaded = model.fingerprint
    with torch.no_grad():
        model.sparse_linear.weight.add_(1.0)  # trained in memory: its fingerprint is no longer the files'
    assert model.fingerprint != as_loaded
    assert NumpyEncoder.load(str(ckpt)).fingerprint == as_loaded
    model.save_pretrained(ckpt)  # the head file rewritten: the files' fingerprint is unknown again
    assert NumpyEncoder.load(str(ckpt)) is None
    reloaded = M3Model.from_pretrained(ckpt, device="cpu").fingerprint
    assert NumpyEncoder.load(str(ckpt)).fingerprint == reloaded == model.fingerprint


def test_new_heads_are_not_the_files(copy_ckpt, xlmr_ckpt: Path) -> None:
    ckpt = copy_ckpt(xlmr_ckpt)
    (ckpt / "sparse_linear.pt").unlink()
    _ = M3Model.from_pretrained(ckpt, device="cpu", new_heads=True).fingerprint  # a random sparse head
    assert NumpyEncoder.load(str(ckpt)) is None
    model = M3Model.from_pretrained(ckpt, device="cpu", modes=("dense", "colbert"))
    fingerprint = model.fingerprint
    fast = NumpyEncoder.load(str(ckpt))
    assert fast.fingerprint == fingerprint and fast.available_modes() == ("dense", "colbert")
    with pytest.raises(ValueError, match="no sparse head"):
        fast.encode_queries("q", modes=MODES)


def test_what_it_does_not_cover_is_none(xlmr_ckpt_bin: Path, tmp_path: Path) -> None:
    _ = M3Model.from_pretrained(xlmr_ckpt_bin, device="cpu").fingerprint
    assert NumpyEncoder.load(str(xlmr_ckpt_bin)) is None  # pytorch_model.bin: torch's own format
    assert NumpyEncoder.load(str(tmp_path / "nowhere")) is None


def test_a_head_file_with_other_objects_is_refused(copy_ckpt, xlmr_ckpt: Path) -> None:
    ckpt = copy_ckpt(xlmr_ckpt)
    state = torch.load(ckpt / "sparse_linear.pt", weights_only=True)
    torch.save({**state, "extra": os.getcwd}, ckpt / "sparse_linear.pt")  # a global no head holds
    from m3embed.numpy_encoder import _read_head

    with pytest.raises(Exception, match="not part of a saved head"):
        _read_head(ckpt / "sparse_linear.pt")


def test_cli_search_runs_without_torch(copy_ckpt, bert_ckpt: Path, tmp_path: Path, own_cache: Path) -> None:
    ckpt = copy_ckpt(bert_ckpt)
    model = M3Model.from_pretrained(ckpt, device="cpu")
    texts = ["paris is the capital of france", "the weather is sunny today", "rivers run to the sea",
             "the seine runs through paris"]
    with open_index(tmp_path / "idx", model, create=True) as index:
        index.add([f"d{i}" for i in range(len(texts))], texts)
        expected = index.search("which river runs through paris", k=3)
    probe = ("import json, sys\nfrom m3embed.cli import main\n"
             f"sys.argv = ['m3embed', 'search', {str(tmp_path / 'idx')!r}, 'which river runs through paris', "
             "'-k', '3', '--json']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(json.dumps([m for m in ('torch', 'transformers') if m in sys.modules]), file=sys.stderr)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3EMBED_CACHE": str(own_cache)}
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stderr.strip().splitlines()[-1]) == []
    hits = [json.loads(line) for line in run.stdout.splitlines()]
    assert [h["id"] for h in hits] == [h.id for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-5)
