"""Hard-negative mining: retrieve candidates for each training query with the model, sample negatives from a
rank range, never a positive, and write them back as the line's `neg` list.

Candidates are the unique texts of every line's `pos` + `neg` (FlagEmbedding's default), or a separate
candidate pool. Retrieval is exact: dense inner products (and, for hybrid, + w·lexical scores) in NumPy.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from m3embed.corpus import iter_jsonl, read_records
from m3embed.modes import check_modes
from m3embed.scoring import dense_scores, lexical_scores
from m3embed.tokenize import resolve_max_length
from m3embed.train.data import parse_example

if TYPE_CHECKING:
    from m3embed.model import M3Model

MINE_MODES = ("dense", "sparse")  # ColBERT over a whole pool is too costly for first-stage retrieval


@dataclass
class MineStats:
    """What a mining run did: lines written, negatives per line, lines topped up with random candidates."""

    lines: int
    candidates: int
    mean_negatives: float
    topped_up: int
    dropped_teacher_scores: int


def parse_range(value: str | Sequence[int]) -> tuple[int, int]:
    """ "2-200" or (2, 200) -> (2, 200); start >= 0, end > start."""
    if isinstance(value, str):
        try:
            start, end = (int(v) for v in value.split("-"))
        except ValueError:
            raise ValueError(f"range {value!r} must look like START-END, e.g. 2-200") from None
    else:
        start, end = (int(v) for v in value)
    if start < 0 or end <= start:
        raise ValueError(f"range {start}-{end}: need 0 <= start < end")
    return start, end


def rank_candidates(
    model: M3Model,
    queries: list[str],
    candidates: list[str],
    top_k: int,
    modes: Sequence[str] = ("dense",),
    weights: Sequence[float] = (1.0, 0.3),
    query_max_length: int | None = None,
    passage_max_length: int | None = None,
    chunk: int = 1024,
    progress: bool | None = None,
) -> np.ndarray:
    """(n_queries, min(top_k, n_candidates)) candidate indices, best first.

    The score is w_dense·dense + w_sparse·lexical over the chosen modes (dense, sparse, or both = hybrid).
    """
    modes = check_modes(modes)
    bad = [m for m in modes if m not in MINE_MODES]
    if bad:
        raise ValueError(f"mining modes {bad} unsupported; choose from {', '.join(MINE_MODES)}")
    for name, value in (("query_max_length", query_max_length), ("passage_max_length", passage_max_length)):
        if value is not None:  # None: the model's query/passage length; an explicit value above its limit raises
            resolve_max_length(value, model.max_length, name=name)
    w = dict(zip(MINE_MODES, weights))
    q = model.encode_queries(queries, modes=modes, max_length=query_max_length, progress=progress)
    c = model.encode_corpus(candidates, modes=modes, max_length=passage_max_length, progress=progress)
    k = min(top_k, len(candidates))
    ranked = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        rows = slice(start, min(start + chunk, len(queries)))
        scores = np.zeros((rows.stop - rows.start, len(candidates)), dtype=np.float64)
        if "dense" in modes:
            scores += w["dense"] * dense_scores(q.dense[rows], c.dense)
        if "sparse" in modes:
            scores += w["sparse"] * lexical_scores(q.sparse[rows], c.sparse)
        top = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < len(candidates)
            else np.tile(np.arange(len(candidates)), (len(scores), 1))
        )
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        ranked[rows] = np.take_along_axis(top, order, 1)
    return ranked


def mine_hard_negatives(
    model: M3Model,
    input_path: str | Path,
    output_path: str | Path,
    *,
    candidate_pool: str | Path | None = None,
    sample_range: str | Sequence[int] = (2, 200),
    negative_number: int = 15,
    modes: Sequence[str] | str = ("dense",),
    weights: Sequence[float] = (1.0, 0.3),
    query_max_length: int | None = None,
    passage_max_length: int | None = None,
    seed: int = 42,
    progress: bool | None = None,
) -> MineStats:
    """Replace each line's `neg` with negatives mined by `model`; other fields are kept.

    Args:
        model: the retriever (an M3Model).
        input_path: jsonl with "query", "pos" (and optionally "neg").
        output_path: where to write the lines with mined negatives.
        candidate_pool: jsonl with a "text" field per line; default: all pos + neg texts of the input.
        sample_range: ranks start-end (0-based, end excluded, as FlagEmbedding's range_for_sampling) to sample
            from; "2-200" skips the two best candidates.
        negative_number: negatives per line; topped up with random non-positive candidates if the range
            holds fewer.
        modes: "dense", "sparse" or both (hybrid: w_dense·dense + w_sparse·lexical).
        weights: (w_dense, w_sparse).
        query_max_length, passage_max_length: truncation in tokens (default: the model's limit; a value above
            it raises ValueError).
        seed: sampling seed.
        progress: progress bars on stderr while the queries and the candidates are encoded (None: for long runs).

    Lines that carried teacher scores lose them: the new negatives have none.
    """
    start, end = parse_range(sample_range)
    if negative_number < 1:
        raise ValueError(f"negative_number must be >= 1, got {negative_number}")
    input_path = Path(input_path)
    rows, examples = [], []
    for lineno, row in iter_jsonl(input_path):
        examples.append(parse_example(row, f"{input_path}:{lineno}"))
        rows.append(row)
    if not examples:
        raise ValueError(f"{input_path} holds no lines")
    candidates = _candidates(examples, candidate_pool)
    ranked = rank_candidates(
        model, [ex.query for ex in examples], candidates, end, modes, weights, query_max_length, passage_max_length,
        progress=progress,
    )

    topped_up = dropped = 0
    n_negs = []
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("w", encoding="utf-8") as out:
        for i, (row, ex) in enumerate(zip(rows, examples)):
            rng = random.Random(f"{seed}-{i}")
            banned = set(ex.pos) | {ex.query}
            pool = [candidates[j] for j in ranked[i, start:end] if candidates[j] not in banned]
            negs = rng.sample(pool, min(negative_number, len(pool)))
            if len(negs) < negative_number:
                taken = banned | set(negs)
                rest = [t for t in candidates if t not in taken]
                negs += rng.sample(rest, min(negative_number - len(negs), len(rest)))
                topped_up += 1
            row = dict(row, neg=negs)
            if row.pop("pos_scores", None) is not None or row.pop("neg_scores", None) is not None:
                row.pop("neg_scores", None)
                dropped += 1
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            n_negs.append(len(negs))
    return MineStats(len(rows), len(candidates), float(np.mean(n_negs)), topped_up, dropped)


def _candidates(examples: list, candidate_pool: str | Path | None) -> list[str]:
    """Unique candidate texts in first-seen order."""
    if candidate_pool is None:
        texts = [t for ex in examples for t in (*ex.pos, *ex.neg)]
    else:
        texts = [
            r.text
            for r in read_records(candidate_pool, text_field="text", title_field=None, generate_ids=True)
            if r.text.strip()
        ]
    unique = list(dict.fromkeys(texts))
    if not unique:
        raise ValueError(f"no candidate texts in {candidate_pool or 'the input pos/neg lists'}")
    return unique
