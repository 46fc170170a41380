"""One home for M3's modes: the three representations, the five search modes, and the default weights.

A *representation* is what one encoder pass produces and an index stores: "dense", "sparse", "colbert".
A *search mode* is how an index ranks documents:

| search mode    | scored with            | candidates                                  | index must store |
|----------------|------------------------|---------------------------------------------|------------------|
| dense          | dense                  | HNSW over all documents                     | dense            |
| sparse         | sparse                 | inverted index over all documents           | sparse           |
| dense+sparse   | w_d·dense + w_s·sparse | dense ∪ sparse top candidates               | dense, sparse    |
| colbert        | colbert (MaxSim mean)  | dense ∪ sparse candidates that are stored;  | colbert          |
|                |                        | with neither, an exact scan of all documents |                  |
| all            | w_d·d + w_s·s + w_c·c  | dense ∪ sparse top candidates               | all three        |

Both engines (Qdrant Edge, qdrant-client) run the colbert-only scan: a MaxSim query with no prefetch scores
every stored document exactly (tests/index/test_index.py checks it against NumPy). It costs O(all tokens) per
query, so an index meant for fast ColBERT search also stores dense and sparse; `index_representations` asks
for that.

Two default weight triples (dense, sparse, colbert), used alike by Python, the CLI and HTTP:
- `SEARCH_WEIGHTS` (0.4, 0.2, 0.4), the BGE-M3 README's hybrid weights: index search, eval, `/v1/search`.
  Search scores are the plain weighted sums (not divided by the weight sum).
- `SCORE_WEIGHTS` (1, 1, 1), FlagEmbedding's `compute_score` default: `compute_score`, `m3embed score`,
  `/v1/score`. Its hybrid scores are divided by the sum of the weights used, as FlagEmbedding does.

Every weight triple passes `check_weights`, everywhere: finite, >= 0, not all 0 (and a hybrid search mode
gives one of its representations a positive weight).

This module imports only `m3embed.errors`: every other module may use it. Its checks raise `ParamError`
naming the parameter ("mode", "weights").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from m3embed.errors import ParamError

MODES = ("dense", "sparse", "colbert")  # the representations, in canonical order
SEARCH_MODES = ("dense", "sparse", "colbert", "dense+sparse", "all")
CANDIDATE_ROUTES = ("dense", "sparse")  # searched over the whole index; hybrid modes rescore their union
SEARCH_WEIGHTS = (0.4, 0.2, 0.4)  # BGE-M3 README: dense 0.4, sparse 0.2, colbert 0.4
SCORE_WEIGHTS = (1.0, 1.0, 1.0)  # FlagEmbedding BGEM3FlagModel.compute_score's default
DEFAULT_RERANK_TOP = 100  # first-stage hits a cross-encoder reranker rescores, unless told otherwise
# a text's role selects the model's prompt for it (e5: "query: " / "passage: "); the index and search know their
# roles, while `m3embed encode --input-type` and the `input_type` of /v1/embeddings and /v1/encode default to
# this: None, the text as given, so both shells give one text the same vectors
DEFAULT_ROLE: str | None = None

_SCORED = {"dense": ("dense",), "sparse": ("sparse",), "colbert": ("colbert",),
           "dense+sparse": ("dense", "sparse"), "all": MODES}


def check_modes(modes: Sequence[str] | str) -> tuple[str, ...]:
    """Normalise a selection of representations ("dense,colbert" or a sequence) to canonical order.

    Raises ValueError on an unknown or empty selection; a search mode such as "dense+sparse" is refused with
    the representation list it stands for.
    """
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(",") if m.strip()]
    plus = [m for m in modes if "+" in m or m == "all"]
    if plus:
        listed = ",".join(m for m in MODES if any(m in scored(p) for p in plus if p in _SCORED)) or "dense,sparse"
        raise ValueError(f"{plus[0]!r} is a search mode; list representations comma-separated, e.g. {listed}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {bad or list(modes)!r}; choose from {', '.join(MODES)}")
    return tuple(m for m in MODES if m in modes)


def scored(mode: str) -> tuple[str, ...]:
    """The representations whose scores make up search mode `mode`'s ranking score."""
    if mode not in _SCORED:
        raise ParamError(f"unknown search mode {mode!r}; choose from {', '.join(SEARCH_MODES)}", param="mode")
    return _SCORED[mode]


def check_search_mode(mode: str, stored: Sequence[str]) -> str:
    """Return `mode` if the stored representations can serve it; otherwise raise a ValueError saying why."""
    missing = [m for m in scored(mode) if m not in stored]
    if missing:
        raise ParamError(f"search mode {mode!r} needs {', '.join(missing)}, but this index stores only "
                         f"{', '.join(stored)}; pick another mode or rebuild the index with those modes", param="mode")
    return mode


def check_search_modes(modes: Sequence[str] | str) -> tuple[str, ...]:
    """Normalise a list of search modes ("dense,all" or a sequence) to SEARCH_MODES order; raise on unknown."""
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in SEARCH_MODES]
    if bad or not modes:
        raise ValueError(f"unknown search mode(s) {bad or list(modes)!r}; choose from {', '.join(SEARCH_MODES)}")
    return tuple(m for m in SEARCH_MODES if m in modes)


def servable(stored: Sequence[str]) -> tuple[str, ...]:
    """Every search mode the stored representations can serve, in SEARCH_MODES order."""
    return tuple(m for m in SEARCH_MODES if all(r in stored for r in scored(m)))


def default_search_mode(stored: Sequence[str]) -> str:
    """The fullest search mode the stored representations allow: all, dense+sparse, or the one there is."""
    for mode in ("all", "dense+sparse", "dense", "sparse", "colbert"):
        if all(r in stored for r in scored(mode)):
            return mode
    raise ValueError(f"no search mode can use the stored representations {tuple(stored)!r}")


def query_representations(mode: str, stored: Sequence[str]) -> tuple[str, ...]:
    """What a query must be encoded into for `mode`: its scored representations plus the stored candidate
    routes for the modes that rescore candidates (colbert and the hybrids)."""
    need = set(scored(mode))
    if mode not in CANDIDATE_ROUTES:
        need.update(r for r in CANDIDATE_ROUTES if r in stored)
    return tuple(m for m in MODES if m in need)


def index_representations(search_modes: Iterable[str]) -> tuple[str, ...]:
    """What an index should store to serve these search modes as M3 does: colbert over dense ∪ sparse
    candidates, so colbert brings both candidate routes along."""
    need: set[str] = set()
    for mode in search_modes:
        need.update(scored(mode))
        if mode == "colbert":
            need.update(CANDIDATE_ROUTES)
    return tuple(m for m in MODES if m in need)


def check_weights(weights: Sequence[float], *, name: str = "weights", mode: str | None = None,
                  normalized: bool = False) -> tuple[float, float, float]:
    """Three finite numbers (dense, sparse, colbert) >= 0, not all 0, as floats; the one weights rule of the
    library, the CLI and HTTP. A ParamError naming the problem otherwise.

    With `mode`, a hybrid search mode must also give one of the representations it combines a positive weight
    (else every score is 0 and the order arbitrary). With `normalized` (hybrids divided by their weight sum, as
    compute_score does) dense + sparse must be > 0.
    """
    param = name.lstrip("-")
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise ParamError(f"{name} must be three numbers (dense, sparse, colbert), got {weights!r}",
                         param=param) from None
    if len(values) != 3:
        raise ParamError(f"{name} must be (dense, sparse, colbert), got {len(values)} values", param=param)
    if not all(math.isfinite(w) for w in values):
        raise ParamError(f"{name} must be finite numbers, got {list(values)}", param=param)
    if min(values) < 0:
        raise ParamError(f"{name} must be >= 0, got {list(values)} (a negative weight ranks that "
                         "representation's best matches last)", param=param)
    if not any(values):
        raise ParamError(f"{name} are all 0, so every score would be 0 in arbitrary order; give at least one a "
                         "positive weight, e.g. 0.4,0.2,0.4", param=param)
    used = scored(mode) if mode is not None else MODES
    if len(used) > 1 and not any(values[MODES.index(r)] for r in used):
        raise ParamError(f"{name} {list(values)} give the {', '.join(used)} of search mode {mode!r} weight 0, so "
                         "every score would be 0; give one of them a positive weight", param=param)
    if normalized and values[0] + values[1] <= 0:
        raise ParamError(f"{name} {list(values)} need dense + sparse > 0 (the sparse+dense score is divided by "
                         "their sum)", param=param)
    return values  # type: ignore[return-value]


def parse_weights(text: str, *, name: str = "--weights") -> tuple[float, float, float]:
    """'0.4,0.2,0.4' → (dense, sparse, colbert), checked as `check_weights` does."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ParamError(f"{name} must be three numbers (dense,sparse,colbert) like 0.4,0.2,0.4, "
                         f"got {text!r}", param=name.lstrip("-")) from None
    return check_weights(values, name=name)
