"""The model fingerprint covers every encoder weight (issue 9 item 1), is cached by weight file, and indexes
built with the old fingerprint (config and heads only) still open with their model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from m3embed import identity
from m3embed.index import Index
from m3embed.index.manifest import MANIFEST_NAME
from m3embed.model import M3Model

CLI = [sys.executable, "-c", "from m3embed.cli import main; main()"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A digest cache of this test's own (the user's cache is left alone, and starts cold)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("M3EMBED_CACHE", str(cache))
    return cache


def _bump_one_encoder_weight(ckpt: Path) -> None:
    """Change one value of one encoder matrix in the checkpoint's weight file (heads untouched)."""
    weights = load_file(ckpt / "model.safetensors")
    name = next(k for k in sorted(weights) if k.endswith("attention.self.query.weight"))
    weights[name][0, 0] += 0.25
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})


def _old_fingerprint(model: M3Model) -> str:
    """The fingerprint m3embed computed before format 2, written out independently of model.py."""
    config = {k: v for k, v in model.backbone.config.to_dict().items()
              if not k.startswith("_") and k not in ("dtype", "torch_dtype", "transformers_version")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(model.pooling.encode())
    for mode, head in (("colbert", model.colbert_linear), ("sparse", model.sparse_linear)):
        digest.update(mode.encode())
        if head is not None:
            for t in (head.weight, head.bias):
                digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def test_one_encoder_weight_changes_the_fingerprint(copy_ckpt, xlmr_ckpt: Path) -> None:
    ckpt = copy_ckpt(xlmr_ckpt)
    before = M3Model.from_pretrained(ckpt, device="cpu")
    _bump_one_encoder_weight(ckpt)
    after = M3Model.from_pretrained(ckpt, device="cpu")
    assert after.legacy_fingerprint == before.legacy_fingerprint  # the old scheme could not tell them apart
    assert after.fingerprint != before.fingerprint
    assert len(after.fingerprint) == 16


def _encoder_digests(cache: Path) -> dict[str, str]:
    """The digest cache's encoder entries (the others are fingerprints known per checkpoint, `known_fingerprint`)."""
    entries = json.loads((cache / identity.DIGEST_CACHE).read_text())
    return {k: v for k, v in entries.items() if not k.startswith("fingerprint:")}


def test_digest_is_cached_by_file_and_equal_across_dtype_and_save(copy_ckpt, xlmr_ckpt: Path, own_cache: Path,
                                                                  tmp_path: Path) -> None:
    ckpt = copy_ckpt(xlmr_ckpt)
    model = M3Model.from_pretrained(ckpt, device="cpu")
    fp = model.fingerprint
    assert len(_encoder_digests(own_cache)) == 1
    # a new load of the same files takes the cached digest; a bfloat16 load gives the same identity
    assert M3Model.from_pretrained(ckpt, device="cpu").fingerprint == fp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no native bfloat16 matmul" on some CPUs
        (own_cache / identity.DIGEST_CACHE).unlink()  # cold: the float32 values are read from the files
        assert M3Model.from_pretrained(ckpt, device="cpu", dtype="bfloat16").fingerprint == fp
    # rewriting the file with the same content gives a new cache key and the same digest
    os.utime(ckpt / "model.safetensors", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert M3Model.from_pretrained(ckpt, device="cpu").fingerprint == fp
    assert len(_encoder_digests(own_cache)) == 2
    # saving and loading the saved copy keeps the identity (the digest is over values, not file bytes)
    model.save_pretrained(tmp_path / "saved")
    assert M3Model.from_pretrained(tmp_path / "saved", device="cpu").fingerprint == fp


def test_a_model_changed_in_memory_is_hashed_from_its_tensors(xlmr_ckpt: Path, tmp_path: Path) -> None:
    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    fp = model.fingerprint
    model.to(torch.float32)  # moving or casting is no change
    assert model.fingerprint == fp
    with torch.no_grad():  # what an optimizer step does to the encoder
        model.backbone.encoder.layer[0].output.dense.weight[3, 2] += 1e-3
    changed = model.fingerprint
    assert changed != fp
    model.save_pretrained(tmp_path / "saved")
    assert M3Model.from_pretrained(tmp_path / "saved", device="cpu").fingerprint == changed


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})


def test_index_add_refuses_an_encoder_changed_in_place(copy_ckpt, xlmr_ckpt: Path, tmp_path: Path) -> None:
    ckpt = copy_ckpt(xlmr_ckpt)
    docs, idx = tmp_path / "d.jsonl", tmp_path / "idx"
    docs.write_text('{"id":"a","text":"the quick brown fox"}\n')
    assert _cli("index", "build", idx, docs, "--model", ckpt).returncode == 0
    built = json.loads((idx / MANIFEST_NAME).read_text())["fingerprint"]
    _bump_one_encoder_weight(ckpt)  # fine-tuned with --modes dense: encoder changed, heads not
    now = M3Model.from_pretrained(ckpt, device="cpu").fingerprint
    run = _cli("index", "add", idx, docs)  # the model the index records: same path, new weights
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert f"fingerprint {built}" in run.stderr and f"fingerprint {now}" in run.stderr


def test_an_index_of_format_1_opens_with_its_model(xlmr_ckpt: Path, bert_ckpt: Path, tmp_path: Path) -> None:
    model = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    with Index.create(tmp_path / "idx", model) as index:
        index.add(["a"], ["the quick brown fox"])
    path = tmp_path / "idx" / MANIFEST_NAME
    old = json.loads(path.read_text())  # what m3embed wrote before format 2
    old.pop("fingerprint_version")
    old.update(format_version=1, fingerprint=_old_fingerprint(model))
    path.write_text(json.dumps(old))
    with Index.open(tmp_path / "idx", model) as index:
        assert index.manifest.fingerprint_version == 1
        index.add(["b"], ["a lazy dog"])
        assert index.search("the quick brown fox", k=1)[0].id == "a"
    assert json.loads(path.read_text())["format_version"] == 1  # opening does not rewrite the manifest
    other = M3Model.from_pretrained(bert_ckpt, device="cpu")
    with pytest.raises(ValueError, match=f"fingerprint {old['fingerprint']} .*version 1.*fingerprint "
                                         f"{other.legacy_fingerprint}"):
        Index.open(tmp_path / "idx", other)
