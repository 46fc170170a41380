"""The one home of modes: representations, search modes, what each needs, default weights."""

from __future__ import annotations

import math

import pytest

from m3embed.modes import (
    MODES,
    SCORE_WEIGHTS,
    SEARCH_MODES,
    SEARCH_WEIGHTS,
    check_modes,
    check_search_mode,
    check_search_modes,
    check_weights,
    default_search_mode,
    index_representations,
    parse_weights,
    query_representations,
    servable,
)


def test_check_modes_takes_representations_only():
    assert check_modes("colbert,dense") == ("dense", "colbert")
    assert check_modes(["sparse", "dense"]) == ("dense", "sparse")
    with pytest.raises(ValueError, match="unknown mode"):
        check_modes(["dense", "splade"])
    with pytest.raises(ValueError, match="unknown mode"):
        check_modes("")
    with pytest.raises(ValueError, match="'dense\\+sparse' is a search mode.*dense,sparse"):
        check_modes("dense+sparse")
    with pytest.raises(ValueError, match="'all' is a search mode.*dense,sparse,colbert"):
        check_modes("all")


def test_search_mode_needs_and_defaults():
    assert default_search_mode(MODES) == "all"
    assert default_search_mode(("dense", "sparse")) == "dense+sparse"
    assert default_search_mode(("sparse",)) == "sparse"
    assert default_search_mode(("colbert",)) == "colbert"
    assert check_search_mode("colbert", ("sparse", "colbert")) == "colbert"
    assert check_search_mode("colbert", ("colbert",)) == "colbert"  # an exact scan: both engines run it
    with pytest.raises(ValueError, match="search mode 'all' needs dense, sparse, but this index stores only colbert"):
        check_search_mode("all", ("colbert",))
    with pytest.raises(ValueError, match="unknown search mode 'hybrid'"):
        check_search_mode("hybrid", MODES)
    assert servable(("dense",)) == ("dense",)
    assert servable(("dense", "sparse")) == ("dense", "sparse", "dense+sparse")
    assert servable(MODES) == SEARCH_MODES
    assert check_search_modes("all,dense") == ("dense", "all")
    with pytest.raises(ValueError, match=r"unknown search mode\(s\) \['hybrid'\]"):
        check_search_modes("dense,hybrid")


def test_query_and_index_representations():
    assert query_representations("dense", MODES) == ("dense",)
    assert query_representations("dense+sparse", MODES) == ("dense", "sparse")
    assert query_representations("colbert", MODES) == MODES  # candidates from dense and sparse
    assert query_representations("colbert", ("sparse", "colbert")) == ("sparse", "colbert")
    assert query_representations("colbert", ("colbert",)) == ("colbert",)
    assert index_representations(["dense"]) == ("dense",)
    assert index_representations(["dense+sparse"]) == ("dense", "sparse")
    assert index_representations(["colbert"]) == MODES  # colbert rescores dense/sparse candidates
    with pytest.raises(ValueError, match="unknown search mode 'hybrid'"):
        index_representations(["dense", "hybrid"])


def test_weights():
    assert SEARCH_WEIGHTS == (0.4, 0.2, 0.4) and SCORE_WEIGHTS == (1.0, 1.0, 1.0)
    assert parse_weights("0.4,0.2,0.4") == (0.4, 0.2, 0.4)
    assert check_weights([1, 0, 2]) == (1.0, 0.0, 2.0)
    assert check_weights((0, 0, 1), mode="colbert") == (0.0, 0.0, 1.0)
    # one rule everywhere (search used to take [0, 0, 0], answering every score 0 in arbitrary order, and -1)
    for bad, message in [((1, 2), "got 2 values"), ((math.nan, 0.2, 0.4), "finite"), ((1e999, 0, 0), "finite"),
                         (("a", 1, 1), "three numbers"), (None, "three numbers"), ((-1, 0.5, 0), "must be >= 0"),
                         ((0, 0, 0), "all 0, so every score would be 0"), ((-0.0, 0, 0), "all 0")]:
        with pytest.raises(ValueError, match=message):
            check_weights(bad)
    for bad in ("nan,0.2,0.4", "inf,0,0"):
        with pytest.raises(ValueError, match="--weights must be finite"):
            parse_weights(bad)
    with pytest.raises(ValueError, match="--weights must be three numbers"):
        parse_weights("0.4;0.2")
    with pytest.raises(ValueError, match="--weights must be >= 0"):
        parse_weights("-1,0,0")
    with pytest.raises(ValueError, match=r"give the dense, sparse of search mode 'dense\+sparse' weight 0"):
        check_weights((0, 0, 1), mode="dense+sparse")
    with pytest.raises(ValueError, match="divided by their sum"):
        check_weights((0, 0, 1), normalized=True)
    with pytest.raises(ValueError, match="must be >= 0"):
        check_weights((1, -0.5, 1), normalized=True)
