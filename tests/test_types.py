from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse as sp

from m3embed.types import M3Output, SparseVector


def _output(n=3, h=4, v=10):
    rng = np.random.default_rng(0)
    w = np.where(rng.random((n, v)) < 0.4, rng.random((n, v)), 0).astype(np.float32)
    return M3Output(dense=rng.normal(size=(n, h)).astype(np.float32), sparse=sp.csr_array(w),
                    colbert=[rng.normal(size=(k + 1, h)).astype(np.float32) for k in range(n)],
                    n_tokens=np.arange(2, 2 + n))


def test_sparse_vector_flag_round_trip_sorts_and_drops_zeros():
    v = SparseVector.from_flag({"9": 0.5, "2": 0.25, "4": 0.0})
    assert v.ids.tolist() == [2, 9] and v.weights.tolist() == [0.25, 0.5]
    assert v.to_flag() == {"2": 0.25, "9": 0.5}


def test_save_load_round_trip(tmp_path):
    out = _output()
    out.save(tmp_path / "o", ids=["a", "b", "c"], meta={"model": "x"})
    back, ids = M3Output.load(tmp_path / "o")
    assert ids == ["a", "b", "c"]
    np.testing.assert_array_equal(back.dense, out.dense)
    assert (back.sparse != out.sparse).nnz == 0
    for a, b in zip(back.colbert, out.colbert):
        np.testing.assert_array_equal(a, b)
    assert back.lexical_weights == out.lexical_weights
    with pytest.raises(FileNotFoundError, match="ids.json"):
        M3Output.load(tmp_path)


def test_select_and_concat_keep_rows_together():
    out = _output()
    sel = out.select([2, 0])
    np.testing.assert_array_equal(sel.dense, out.dense[[2, 0]])
    assert sel.lexical_weights == [out.lexical_weights[2], out.lexical_weights[0]]
    both = M3Output.concat([out.select([0]), out.select([1, 2])])
    assert both.lexical_weights == out.lexical_weights
    flat, offsets = out.colbert_flat()
    assert offsets.tolist() == [0, 1, 3, 6] and flat.shape == (6, 4)


