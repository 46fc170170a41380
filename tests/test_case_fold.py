"""Case folding (m3embed.json `case_fold`, issue 21 item 3): the rule, and every path through which a model reads
text applying it — encode, encode_queries / encode_corpus, the NumPy query encoder, training batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m3embed import checkpoint
from m3embed.model import M3Model
from m3embed.numpy_encoder import NumpyEncoder
from m3embed.tokenize import fold_case

MODES = ("dense", "sparse", "colbert")


def test_capitals_folds_words_written_in_capitals_only() -> None:
    given = ["UNIVERSITY LIBRARIANSHIP COURSES", "Carl Scheele found it in 1771", "a DNA test, I think",
             "ÜBER DIE BRÜCKE", "МОСКВА и Москва", "北京 BEIJING", "X-RAY of A B", "O'NEILL"]
    assert fold_case(given, "capitals") == [
        "university librarianship courses", "Carl Scheele found it in 1771", "a dna test, I think",
        "über die brücke", "москва и Москва", "北京 beijing", "X-ray of A B", "O'neill"]
    assert fold_case(given, "none") is given
    assert fold_case(["Carl SCHEELE"], "lower") == ["carl scheele"]
    with pytest.raises(ValueError, match="case_fold must be one of"):
        fold_case(["x"], "upper")
    with pytest.raises(ValueError, match="case_fold must be one of"):
        checkpoint.M3Config(case_fold="upper")


def test_a_folding_model_reads_capitals_as_lower_case(copy_ckpt, xlmr_ckpt: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M3EMBED_CACHE", str(tmp_path / "cache"))
    plain = M3Model.from_pretrained(xlmr_ckpt, device="cpu")
    ckpt = copy_ckpt(xlmr_ckpt)
    checkpoint.M3Config(case_fold="capitals", query_prefix="q: ").save(ckpt)
    model = M3Model.from_pretrained(ckpt, device="cpu")
    assert model.case_fold == "capitals"
    shouted, spoken = ["THE RIVER FLOWS THROUGH THE VALLEY"], ["the river flows through the valley"]
    for encode in (model.encode, model.encode_queries, model.encode_corpus):
        a, b = encode(shouted, modes=MODES), encode(spoken, modes=MODES)
        np.testing.assert_array_equal(a.dense, b.dense)
        assert (a.sparse != b.sparse).nnz == 0
    assert not np.allclose(plain.encode(shouted).dense, plain.encode(spoken).dense)  # without folding they differ
    assert model.input_texts(shouted, "query") == ["q: the river flows through the valley"]  # training reads these
    fingerprint = model.fingerprint
    checkpoint.M3Config(query_prefix="q: ").save(ckpt)
    assert M3Model.from_pretrained(ckpt, device="cpu").fingerprint != fingerprint  # folding changes the outputs
    checkpoint.M3Config(case_fold="capitals", query_prefix="q: ").save(ckpt)
    fast = NumpyEncoder.load(str(ckpt))
    assert fast is not None and fast.fingerprint == fingerprint
    np.testing.assert_allclose(fast.encode_queries(shouted, modes=MODES).dense,
                               model.encode_queries(spoken, modes=MODES).dense, atol=1e-5)
    saved = M3Model.from_pretrained(model.save_pretrained(tmp_path / "saved"), device="cpu")
    assert saved.case_fold == "capitals" and saved.fingerprint == fingerprint
