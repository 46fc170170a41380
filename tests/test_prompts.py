"""Model-level query/passage prompts: stored in m3embed.json, applied by encode_queries / encode_corpus and by
everything built on them (index, search, eval, mine, train, server, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

import m3embed.model as model_module
from m3embed import checkpoint
from m3embed.cli import app
from m3embed.evaluate import Dataset, M3Settings, evaluate_dataset
from m3embed.index import open_index
from m3embed.model import M3Model
from m3embed.server import ServerSettings, create_app
from m3embed.train.config import TrainConfig
from m3embed.train.mine import mine_hard_negatives
from m3embed.train.trainer import Trainer
from tests.server.conftest import LiveServer
from tests.train.conftest import write_train_file

Q, P = "query: ", "passage: "
DOCS = ["the river flows through the valley", "a committee approved the city budget", "oxygen was discovered"]


@pytest.fixture
def prompted_ckpt(copy_ckpt, xlmr_ckpt: Path) -> Path:
    path = copy_ckpt(xlmr_ckpt)
    cfg = json.loads((path / "m3embed.json").read_text()) if (path / "m3embed.json").is_file() else {}
    (path / "m3embed.json").write_text(json.dumps({**cfg, "query_prefix": Q, "passage_prefix": P}))
    return path


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text that reaches the encoder (M3Model's encode methods all call m3embed.model.encode)."""
    texts: list[str] = []
    inner = model_module.encode

    def spy(model, batch, *args, **kwargs):
        texts.extend([batch] if isinstance(batch, str) else batch)
        return inner(model, batch, *args, **kwargs)

    monkeypatch.setattr(model_module, "encode", spy)
    return texts


def test_config_round_trip_and_checks(tmp_path):
    checkpoint.M3Config(pooling="mean", query_prefix="query: ", passage_prefix="passage: ").save(tmp_path)
    assert json.loads((tmp_path / "m3embed.json").read_text())["query_prefix"] == "query: "
    assert checkpoint.read_config(tmp_path).passage_prefix == "passage: "
    (tmp_path / "m3embed.json").write_text('{"pooling": "cls"}')  # older files: no prompts
    assert checkpoint.read_config(tmp_path).query_prefix == ""
    with pytest.raises(ValueError, match="query_prefix must be a str"):
        checkpoint.M3Config(query_prefix=1)


def test_encode_queries_and_corpus_prepend_the_prompts(prompted_ckpt, tmp_path):
    model = M3Model.from_pretrained(prompted_ckpt, device="cpu")
    assert (model.query_prefix, model.passage_prefix) == (Q, P)
    modes = ("dense", "sparse", "colbert")
    q, raw = model.encode_queries(DOCS, modes), model.encode([Q + d for d in DOCS], modes)
    assert np.array_equal(q.dense, raw.dense) and (q.sparse != raw.sparse).nnz == 0
    assert np.array_equal(model.encode_corpus(DOCS).dense, model.encode([P + d for d in DOCS]).dense)
    assert not np.allclose(model.encode_queries(DOCS).dense, model.encode_corpus(DOCS).dense)
    with pytest.raises(ValueError, match="role must be 'query', 'passage' or None"):
        model.input_texts(DOCS, "document")

    plain = M3Model.from_pretrained(prompted_ckpt, device="cpu", query_prefix="", passage_prefix="")
    assert np.array_equal(plain.encode_queries(DOCS).dense, plain.encode(DOCS).dense)
    assert plain.fingerprint != model.fingerprint  # prompts change the outputs, so the index identity
    again = M3Model.from_pretrained(model.save_pretrained(tmp_path / "saved"), device="cpu")
    assert (again.query_prefix, again.passage_prefix, again.fingerprint) == (Q, P, model.fingerprint)


def test_index_search_eval_and_mine_use_the_prompts(prompted_ckpt, tmp_path, seen):
    model = M3Model.from_pretrained(prompted_ckpt, device="cpu")
    with open_index(tmp_path / "idx", model, create=True) as index:
        index.add(["a", "b", "c"], DOCS)
        assert seen == [P + d for d in DOCS]
        seen.clear()
        hits = index.search("where does the river flow", k=3, mode="all")
        assert seen == [Q + "where does the river flow"]
        assert {h.text for h in hits} == set(DOCS)  # the stored texts are the documents as given

    seen.clear()
    data = Dataset("tiny", ["a", "b", "c"], DOCS, {"q1": "river valley"}, {"q1": {"a": 1}}, "qrels.tsv")
    evaluate_dataset(data, model, m3=M3Settings(modes=("dense",), index_dir=tmp_path / "eval"), bm25=None)
    assert set(seen) == {P + d for d in DOCS} | {Q + "river valley"}

    seen.clear()
    src = write_train_file(tmp_path / "in.jsonl", n=6, n_neg=2)
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    mine_hard_negatives(model, src, tmp_path / "out.jsonl", sample_range="1-5", negative_number=2)
    assert {Q + r["query"] for r in rows} <= set(seen) and all(t.startswith((Q, P)) for t in seen)


def test_training_batches_carry_the_prompts(prompted_ckpt, tmp_path):
    src = write_train_file(tmp_path / "in.jsonl", n=8, n_neg=3)
    trainer = Trainer(TrainConfig(model=str(prompted_ckpt), train_data=[str(src)], output_dir=str(tmp_path / "o"),
                                  per_device_batch_size=2, train_group_size=2, progress=False))
    batch = trainer.batches.batch(0, 0)
    tensors = trainer.collate(batch)
    tok = trainer.model.tokenizer
    queries = tok.batch_decode(tensors["q_ids"], skip_special_tokens=True)
    passages = tok.batch_decode(tensors["p_ids"], skip_special_tokens=True)
    assert all(q.startswith(Q.strip()) for q in queries) and all(p.startswith(P.strip()) for p in passages)
    trainer.close()


def test_server_prefixes_by_role(prompted_ckpt, tmp_path, seen):
    model = M3Model.from_pretrained(prompted_ckpt, device="cpu")
    index = open_index(tmp_path / "idx", model, create=True)
    server = LiveServer(create_app(model, index, ServerSettings(model_name="m", batching=False))).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for body, expected in [({"input": "x"}, "x"), ({"input": "x", "input_type": "query"}, Q + "x"),
                                   ({"input": "x", "input_type": "passage"}, P + "x")]:
                seen.clear()
                client.post("/v1/embeddings", json={"model": "m", **body}).raise_for_status()
                client.post("/v1/encode", json=body).raise_for_status()
                assert seen == [expected, expected]
            seen.clear()
            client.post("/v1/documents", json={"documents": [{"id": "a", "text": DOCS[0]}]}).raise_for_status()
            client.post("/v1/search", json={"query": "river", "k": 1}).raise_for_status()
            assert seen == [P + DOCS[0], Q + "river"]
            assert client.post("/v1/encode", json={"input": "x", "input_type": "doc"}).status_code == 422
    finally:
        server.stop()
        index.close()


def test_cli_info_shows_and_encode_applies_the_prompts(prompted_ckpt, tmp_path, seen):
    runner = CliRunner()
    result = runner.invoke(app, ["info", "-m", str(prompted_ckpt)])
    assert result.exit_code == 0 and f"'{Q}' / '{P}'" in result.output
    (tmp_path / "t.txt").write_text("one text\n")
    for input_type, expected in (("passage", P + "one text"), ("query", Q + "one text"), ("none", "one text")):
        seen.clear()
        result = runner.invoke(app, ["encode", str(tmp_path / "t.txt"), "-o", str(tmp_path / input_type), "-m",
                                     str(prompted_ckpt), "--input-type", input_type, "--generate-ids"])
        assert result.exit_code == 0, result.output
        assert seen == [expected]
    result = runner.invoke(app, ["encode", str(tmp_path / "t.txt"), "-o", str(tmp_path / "x"), "-m",
                                 str(prompted_ckpt), "--input-type", "doc", "--generate-ids"])
    assert isinstance(result.exception, ValueError) and "--input-type must be one of" in str(result.exception)


def test_both_shells_default_to_the_text_as_given(prompted_ckpt, tmp_path):
    """One role default (`m3embed.modes.DEFAULT_ROLE`, none): `m3embed encode` and /v1/embeddings give one text
    the same vector unless told its role (the CLI used to prepend the passage prompt, HTTP nothing)."""
    from m3embed.modes import DEFAULT_ROLE
    from m3embed.types import M3Output

    assert DEFAULT_ROLE is None
    (tmp_path / "t.txt").write_text("one text\n")
    result = CliRunner().invoke(app, ["encode", str(tmp_path / "t.txt"), "-o", str(tmp_path / "out"), "-m",
                                      str(prompted_ckpt), "--generate-ids"])
    assert result.exit_code == 0, result.output
    cli = M3Output.load(tmp_path / "out")[0].dense[0]
    model = M3Model.from_pretrained(prompted_ckpt, device="cpu")
    server = LiveServer(create_app(model, None, ServerSettings(model_name="m"))).start()
    try:
        body = httpx.post(f"{server.url}/v1/embeddings", json={"model": "m", "input": "one text"}, timeout=30).json()
    finally:
        server.stop()
    np.testing.assert_allclose(body["data"][0]["embedding"], cli, atol=1e-6)
    np.testing.assert_allclose(cli, model.encode(["one text"]).dense[0], atol=1e-6)
