"""The offline checkpoint builders: tokenizer ids, file layout, seeding, and outputs that do not collapse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

from m3testkit.checkpoints import (
    BGE_M3_SHAPE,
    bert_model_dir,
    build_xlmr_tokenizer,
    sample_texts,
    write_random_checkpoint,
)

TEXTS = sample_texts(60)[11:]  # past the per-language word lists: ordinary sentences


def _hidden(path: Path, texts: list[str], **config_overrides: object) -> tuple[torch.Tensor, torch.Tensor]:
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(texts, padding=True, return_tensors="pt")
    model = AutoModel.from_pretrained(path, **config_overrides).eval()
    with torch.inference_mode():
        return model(**batch).last_hidden_state, batch["attention_mask"].bool()  # (B, T, h), (B, T)


def _offdiag_cos(x: torch.Tensor) -> torch.Tensor:
    x = torch.nn.functional.normalize(x, dim=-1)
    sim = x @ x.T
    return sim[~torch.eye(len(x), dtype=torch.bool)]


def test_sample_texts_are_multilingual_and_seeded() -> None:
    texts = sample_texts(200)
    assert len(texts) == 200 and texts == sample_texts(200) and texts != sample_texts(200, seed=1)
    joined = "".join(texts)
    for ch in ("é", "ä", "ж", "λ", "ع", "क", "猫", "の", "고", "🍕"):
        assert ch in joined


def test_xlmr_tokenizer_ids_and_class(tmp_path: Path) -> None:
    build_xlmr_tokenizer(tmp_path, vocab_size=500, model_max_length=100)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "XLMRobertaTokenizer"
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tok).__name__ == "XLMRobertaTokenizer"
    assert (tok.bos_token_id, tok.cls_token_id, tok.pad_token_id) == (0, 0, 1)
    assert (tok.eos_token_id, tok.sep_token_id, tok.unk_token_id) == (2, 2, 3)
    assert tok.mask_token_id == len(tok) - 1 and len(tok) <= 500
    assert tok.model_max_length == 100

    ids = tok("Le chat lit une longue lettre. 猫")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
    assert 3 in tok("ᚠᚢᚦ")["input_ids"]  # a script absent from the sample -> <unk>
    assert tok.mask_token_id in tok("a <mask> b")["input_ids"]
    assert tok("")["input_ids"] == [0, 2]


def test_xlmr_layout_and_config(xlmr_ckpt: Path) -> None:
    names = {p.name for p in xlmr_ckpt.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"colbert_linear.pt", "sparse_linear.pt", "m3embed.json"} <= names
    config = AutoConfig.from_pretrained(xlmr_ckpt)
    assert config.model_type == "xlm-roberta" and config.architectures == ["XLMRobertaModel"]
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (1, 0, 2)
    assert config.type_vocab_size == 1 and config.layer_norm_eps == 1e-5
    assert config.num_hidden_layers == 2 and config.max_position_embeddings == 130
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(xlmr_ckpt))
    h = config.hidden_size
    colbert = torch.load(xlmr_ckpt / "colbert_linear.pt", weights_only=True)
    sparse = torch.load(xlmr_ckpt / "sparse_linear.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in colbert.items()} == {"weight": (h, h), "bias": (h,)}
    assert {k: tuple(v.shape) for k, v in sparse.items()} == {"weight": (1, h), "bias": (1,)}
    assert json.loads((xlmr_ckpt / "m3embed.json").read_text()) == {"pooling": "cls"}


def test_same_seed_same_weights_bin_equals_safetensors(xlmr_ckpt: Path, xlmr_ckpt_bin: Path) -> None:
    st = load_file(str(xlmr_ckpt / "model.safetensors"))
    pt = torch.load(xlmr_ckpt_bin / "pytorch_model.bin", weights_only=True)
    assert st.keys() == pt.keys() and all(torch.equal(st[k], pt[k]) for k in st)
    for head in ("colbert_linear.pt", "sparse_linear.pt"):
        a, b = (torch.load(d / head, weights_only=True) for d in (xlmr_ckpt, xlmr_ckpt_bin))
        assert all(torch.equal(a[k], b[k]) for k in a)
    model = AutoModel.from_pretrained(xlmr_ckpt_bin)  # transformers reads the .bin layout without warnings
    assert torch.equal(model.embeddings.word_embeddings.weight, st["embeddings.word_embeddings.weight"])


def test_same_seed_same_files_in_another_process(xlmr_ckpt: Path, tmp_path: Path) -> None:
    """The tokenizer too: Unigram training is not deterministic across processes, so its vocab is stored."""
    code = ("import sys; from m3testkit.checkpoints import write_random_checkpoint; "
            "write_random_checkpoint(sys.argv[1], arch='xlmr', seed=0)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120,
                   cwd=Path(__file__).resolve().parents[1])
    for name in ("tokenizer.json", "model.safetensors", "sparse_linear.pt", "colbert_linear.pt"):
        assert (tmp_path / name).read_bytes() == (xlmr_ckpt / name).read_bytes(), name


def test_other_seed_other_weights(xlmr_ckpt: Path, tmp_path: Path) -> None:
    other = write_random_checkpoint(tmp_path, seed=1, heads=("sparse",))
    a, b = (load_file(str(d / "model.safetensors")) for d in (xlmr_ckpt, other))
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a[key], b[key])
    assert not (other / "colbert_linear.pt").exists() and (other / "sparse_linear.pt").exists()


def test_random_xlmr_does_not_collapse(xlmr_ckpt: Path) -> None:
    hidden, mask = _hidden(xlmr_ckpt, TEXTS)
    cls_cos = _offdiag_cos(hidden[:, 0])
    assert cls_cos.mean() < 0.9 and cls_cos.max() < 0.99, "CLS vectors of different texts nearly equal"
    assert _offdiag_cos(hidden[mask]).mean() < 0.8, "token states nearly equal"


def test_random_xlmr_detects_a_tanh_gelu_bug(xlmr_ckpt: Path) -> None:
    """A 1e-5 parity test must be able to fail: swapping exact GELU for the tanh form moves CLS > 1e-4."""
    exact, _ = _hidden(xlmr_ckpt, TEXTS)
    tanh, _ = _hidden(xlmr_ckpt, TEXTS, hidden_act="gelu_new")
    norm = torch.nn.functional.normalize
    assert (norm(exact[:, 0], dim=-1) - norm(tanh[:, 0], dim=-1)).abs().max() > 1e-4


@pytest.mark.parametrize("ckpt_name", ["xlmr_ckpt", "bert_ckpt"])
def test_sparse_head_keeps_some_but_not_all_tokens(ckpt_name: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(ckpt_name)
    hidden, mask = _hidden(path, TEXTS)
    head = torch.load(path / "sparse_linear.pt", weights_only=True)
    weights = torch.relu(hidden[mask] @ head["weight"].T + head["bias"]).squeeze(-1)
    share = (weights > 0).float().mean().item()
    assert 0.4 < share < 0.9, f"share of tokens with a positive sparse weight is {share:.2f}"


def test_bert_is_minilm_with_random_heads(bert_ckpt: Path) -> None:
    src = bert_model_dir()
    assert load_file(str(src / "model.safetensors")).keys() == load_file(str(bert_ckpt / "model.safetensors")).keys()
    assert (bert_ckpt / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert AutoConfig.from_pretrained(bert_ckpt).hidden_size == 384
    assert json.loads((bert_ckpt / "m3embed.json").read_text()) == {"pooling": "mean"}
    colbert = torch.load(bert_ckpt / "colbert_linear.pt", weights_only=True)
    assert colbert["weight"].shape == (384, 384)


def test_bert_shape_mismatch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="random_backbone=True"):
        write_random_checkpoint(tmp_path, arch="bert", num_layers=2)


def test_random_bert_with_minilm_tokenizer(tmp_path: Path) -> None:
    path = write_random_checkpoint(tmp_path, arch="bert", random_backbone=True, num_layers=2, hidden_size=64,
                                   num_heads=4, intermediate_size=128, weights_format="bin")
    config = AutoConfig.from_pretrained(path)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 2, 64)
    assert (path / "pytorch_model.bin").is_file() and not (path / "model.safetensors").exists()
    hidden, _ = _hidden(path, TEXTS)
    assert _offdiag_cos(hidden.mean(1)).mean() < 0.95


def test_model_vocab_may_exceed_tokenizer(tmp_path: Path) -> None:
    path = write_random_checkpoint(tmp_path, vocab_size=5000, hidden_size=32, num_heads=2, intermediate_size=64)
    assert AutoConfig.from_pretrained(path).vocab_size == 5000
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        write_random_checkpoint(tmp_path / "small", vocab_size=20)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"arch": "gpt"}, "arch="), ({"weights_format": "onnx"}, "weights_format"), ({"heads": ("mlm",)}, "head"),
     ({"pooling": "max"}, "pooling")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_random_checkpoint(tmp_path, **kwargs)


@pytest.mark.slow
def test_bge_m3_shape(tmp_path: Path) -> None:
    """The real bge-m3 shape builds (2.3 GB of float32 weights) and runs."""
    path = write_random_checkpoint(tmp_path, **BGE_M3_SHAPE)
    config = AutoConfig.from_pretrained(path)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (24, 1024, 250002)
    assert config.max_position_embeddings == 8194
    hidden, _ = _hidden(path, TEXTS[:4])
    assert hidden.shape[-1] == 1024 and torch.isfinite(hidden).all()
