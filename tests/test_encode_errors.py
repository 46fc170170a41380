"""Bad input to loading and encoding: clear errors that name the item, and well-shaped empty outputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from m3embed.model import M3Model

MODES = ("dense", "sparse", "colbert")


@pytest.fixture(scope="module")
def model(xlmr_ckpt: Path) -> M3Model:
    return M3Model.from_pretrained(xlmr_ckpt, device="cpu")


# ---- encode: texts ----


@pytest.mark.parametrize(
    ("bad", "type_name"), [(42, "int"), (None, "NoneType"), (b"bytes", "bytes"), (["nested"], "list")]
)
def test_non_string_item_names_its_index(model: M3Model, bad: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"index 2\b.*{type_name}"):
        model.encode(["fine", "also fine", bad, "fine"], modes=MODES)


def test_bytes_item_suggests_decoding(model: M3Model) -> None:
    with pytest.raises(TypeError, match="decode"):
        model.encode([b"caf\xc3\xa9"])


@pytest.mark.parametrize("bad", [42, None, b"raw bytes"])
def test_texts_must_be_str_or_sequence(model: M3Model, bad: object) -> None:
    with pytest.raises(TypeError, match="str"):
        model.encode(bad)  # type: ignore[arg-type]


def test_single_string_is_one_text(model: M3Model) -> None:
    out = model.encode("one text", modes=MODES)
    assert out.dense.shape == (1, model.hidden_size) and len(out.colbert) == 1 and out.sparse.shape[0] == 1


def test_empty_list_gives_empty_outputs(model: M3Model) -> None:
    out = model.encode([], modes=MODES)
    assert out.dense.shape == (0, model.hidden_size) and out.dense.dtype == np.float32
    assert out.sparse.shape == (0, model.vocab_size) and out.sparse.nnz == 0
    assert out.colbert == [] and len(out) == 0
    assert out.lexical_weights == []


def test_empty_string_keeps_its_row(model: M3Model) -> None:
    out = model.encode(["", "text"], modes=MODES)
    assert out.n_tokens.tolist()[0] == 2  # <s> </s>
    assert out.colbert[0].shape == (1, model.hidden_size)  # the </s> vector
    assert out.lexical_weights[0] == {}  # only special tokens, all dropped
    assert np.isclose(np.linalg.norm(out.dense[0]), 1.0, atol=1e-5)


# ---- encode: options ----


def test_max_length_above_position_limit(model: M3Model) -> None:
    assert model.max_length == 128  # 130 position embeddings, positions start after pad id 1
    model.encode(["ok"], max_length=128)
    with pytest.raises(ValueError, match=r"max_length=129.*128"):
        model.encode(["too long a limit"], max_length=129)


def test_max_length_too_small(model: M3Model) -> None:
    with pytest.raises(ValueError, match="max_length"):
        model.encode(["x"], max_length=1)


@pytest.mark.parametrize("modes", [("dense", "lexical"), (), "dense+bm25"])
def test_unknown_mode(model: M3Model, modes: object) -> None:
    with pytest.raises(ValueError, match="mode"):
        model.encode(["x"], modes=modes)  # type: ignore[arg-type]


# ---- loading ----


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        M3Model.from_pretrained(missing)


def test_file_instead_of_directory(xlmr_ckpt: Path) -> None:
    with pytest.raises(NotADirectoryError, match="config.json"):
        M3Model.from_pretrained(xlmr_ckpt / "config.json")


def test_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError) as err:
        M3Model.from_pretrained(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    for what in ("config.json", "weights", "tokenizer"):
        assert what in message


def test_missing_weights_only(xlmr_ckpt: Path, copy_ckpt: Callable[[Path], Path]) -> None:
    path = copy_ckpt(xlmr_ckpt)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights") as err:
        M3Model.from_pretrained(path)
    assert "config.json" not in str(err.value) and "tokenizer" not in str(err.value)


def test_unreachable_hub_id() -> None:
    """HF_HUB_OFFLINE=1 (conftest): a hub id that is not cached fails with a FileNotFoundError."""
    with pytest.raises(FileNotFoundError, match="nobody-here/no-such-model"):
        M3Model.from_pretrained("nobody-here/no-such-model")


def test_missing_sparse_head(xlmr_ckpt: Path, copy_ckpt: Callable[[Path], Path]) -> None:
    path = copy_ckpt(xlmr_ckpt)
    (path / "sparse_linear.pt").unlink()
    with pytest.raises(FileNotFoundError, match="sparse_linear.pt"):
        M3Model.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="sparse_linear.pt"):
        M3Model.from_pretrained(path, modes=("dense", "sparse"))

    dense_only = M3Model.from_pretrained(path, modes=("dense",))
    assert dense_only.encode(["works"]).dense.shape == (1, dense_only.hidden_size)
    both = M3Model.from_pretrained(path, modes=("dense", "colbert"))
    assert len(both.encode(["works too"], modes=("dense", "colbert")).colbert) == 1
    with pytest.raises(ValueError, match="sparse"):  # asking later for the missing head is an error, too
        both.encode(["no sparse head"], modes=("sparse",))


def test_missing_colbert_head(xlmr_ckpt: Path, copy_ckpt: Callable[[Path], Path]) -> None:
    path = copy_ckpt(xlmr_ckpt)
    (path / "colbert_linear.pt").unlink()
    with pytest.raises(FileNotFoundError, match="colbert_linear.pt"):
        M3Model.from_pretrained(path)
    model = M3Model.from_pretrained(path, modes=("dense", "sparse"))
    assert model.encode(["x y z"], modes=("sparse",)).sparse.shape[0] == 1


def test_head_with_wrong_shape(xlmr_ckpt: Path, copy_ckpt: Callable[[Path], Path]) -> None:
    path = copy_ckpt(xlmr_ckpt)
    torch.save(torch.nn.Linear(32, 1).state_dict(), path / "sparse_linear.pt")
    with pytest.raises(ValueError, match=r"sparse_linear\.pt.*shape"):
        M3Model.from_pretrained(path)


def test_head_that_is_not_a_state_dict(xlmr_ckpt: Path, copy_ckpt: Callable[[Path], Path]) -> None:
    path = copy_ckpt(xlmr_ckpt)
    (path / "colbert_linear.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="colbert_linear.pt"):
        M3Model.from_pretrained(path)


def test_invalid_m3embed_json(xlmr_ckpt: Path, copy_ckpt: Callable[[Path], Path]) -> None:
    path = copy_ckpt(xlmr_ckpt)
    (path / "m3embed.json").write_text('{"pooling": "max"}')
    with pytest.raises(ValueError, match="pooling"):
        M3Model.from_pretrained(path)


# ---- encode: truncation ----


def test_one_warning_per_call_counts_the_truncated_texts(model: M3Model) -> None:
    from m3embed.tokenize import TruncationWarning, tokenize

    exact = "the river near the harbour"
    n = len(tokenize(model.tokenizer, [exact], 64)[0])  # max_length n: this text exactly fits, it is not cut
    texts = ["word " * 200, exact, "short", "another " * 50]
    with pytest.warns(TruncationWarning) as caught:
        model.encode(texts, modes=MODES, max_length=n)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert message.startswith(f"2 of 4 texts were longer than max_length={n} tokens") and "--max-length" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode([exact, "short"], modes=MODES, max_length=n)  # none cut: no warning
