"""Training data: jsonl {"query", "pos", "neg"} lines, training groups, and length-grouped batches.

One line → one `TrainExample`; a bad line raises ValueError naming `file:line` and the field. The unsupervised
stage's pairs (`parse_pair`) may use other keys for query and positive, and give the positive as one string.
Each step a query brings a group of `train_group_size` passages: one positive sampled from `pos` and G−1
negatives sampled from `neg` (tiled first when it is shorter, as FlagEmbedding does). The batch order of an epoch
depends only on (seed, epoch), so every process agrees on it and a resumed run continues where it stopped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3embed.corpus import iter_jsonl


@dataclass(frozen=True)
class TrainExample:
    """One jsonl line. Texts are non-empty strings; scores, when present, match their texts one to one."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    pos_scores: tuple[float, ...] | None = None
    neg_scores: tuple[float, ...] | None = None
    prompt: str | None = None  # prepended to the query (FlagEmbedding's per-line instruction)
    type: str | None = None
    source: str = ""  # "file:line", for error messages

    @property
    def has_scores(self) -> bool:
        return self.pos_scores is not None and self.neg_scores is not None

    @property
    def length(self) -> int:
        """Characters of the longest text: a cheap stand-in for token length when grouping batches."""
        return max(len(t) for t in (self.query, *self.pos, *self.neg))


@dataclass
class TrainBatch:
    """B queries and their B·G passages, group-major (query b's group is passages [b·G, (b+1)·G), positive
    first); teacher_scores (B, G) raw scores or None."""

    queries: list[str]
    passages: list[str]
    teacher_scores: list[list[float]] | None = None
    sources: list[str] | None = None


def _texts(value: Any, where: str, name: str, allow_empty_list: bool) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: '{name}' must be a list of strings, got {type(value).__name__}")  # noqa: TRY004
    if not value and not allow_empty_list:
        raise ValueError(f"{where}: '{name}' must hold at least one text, got an empty list")
    for i, t in enumerate(value):
        if not isinstance(t, str) or not t.strip():
            got = repr(t) if isinstance(t, str) else type(t).__name__
            raise ValueError(f"{where}: '{name}'[{i}] must be a non-empty string, got {got}")
    return tuple(value)


def _scores(value: Any, where: str, name: str, n: int) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != n:
        got = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{where}: '{name}' must be a list of {n} numbers (one per text), got {got}")
    for i, s in enumerate(value):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ValueError(f"{where}: '{name}'[{i}] must be a finite number, got {s!r}")
    return tuple(float(s) for s in value)


def parse_example(obj: Any, where: str, query_field: str = "query", pos_field: str = "pos") -> TrainExample:
    """Validate one decoded jsonl line; `where` ("file:line") prefixes every error. The query and the positives
    are read from `query_field` and `pos_field`."""
    if not isinstance(obj, dict):
        raise ValueError(  # noqa: TRY004 (one error type for every bad data line)
            f"{where}: each line must be a JSON object with '{query_field}', '{pos_field}', 'neg', "
            f"got {type(obj).__name__}"
        )
    if query_field not in obj or pos_field not in obj:
        missing = [k for k in (query_field, pos_field) if k not in obj]
        raise ValueError(
            f"{where}: missing field(s) {missing}; a line needs '{query_field}', '{pos_field}' (and 'neg' to "
            "fine-tune)"
        )
    query = obj[query_field]
    if not isinstance(query, str) or not query.strip():
        raise ValueError(
            f"{where}: '{query_field}' must be a non-empty string, got "
            f"{repr(query) if isinstance(query, str) else type(query).__name__}"
        )
    pos = _texts(obj[pos_field], where, pos_field, allow_empty_list=False)
    neg = _texts(obj.get("neg", []), where, "neg", allow_empty_list=True)
    has_pos_s, has_neg_s = obj.get("pos_scores") is not None, obj.get("neg_scores") is not None
    if has_pos_s != has_neg_s:
        given, absent = ("pos_scores", "neg_scores") if has_pos_s else ("neg_scores", "pos_scores")
        raise ValueError(f"{where}: '{given}' is given without '{absent}'; teacher scores need both")
    pos_scores = _scores(obj["pos_scores"], where, "pos_scores", len(pos)) if has_pos_s else None
    neg_scores = _scores(obj["neg_scores"], where, "neg_scores", len(neg)) if has_neg_s else None
    extra = {}
    for key in ("prompt", "type"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
        extra[key] = value or None
    return TrainExample(query, pos, neg, pos_scores, neg_scores, source=where, **extra)


def parse_pair(obj: Any, where: str, query_field: str = "query", pos_field: str = "pos") -> TrainExample:
    """`parse_example` for a pair of the unsupervised stage: the positive may also be one string."""
    if isinstance(obj, dict) and isinstance(obj.get(pos_field), str):
        obj = {**obj, pos_field: [obj[pos_field]]}
    return parse_example(obj, where, query_field, pos_field)


def read_jsonl(path: str | Path, parse: Callable[[Any, str], TrainExample] = parse_example) -> list[TrainExample]:
    """All examples of one jsonl file (blank lines skipped), each line read by `parse`; errors name file:line."""
    return [parse(obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]


def load_examples(paths: str | Path | Iterable[str | Path],
                  parse: Callable[[Any, str], TrainExample] = parse_example) -> list[TrainExample]:
    """Examples of jsonl files and of every *.jsonl in given directories (sorted), in order, each line read by
    `parse` (`parse_example`, or `parse_pair` with its fields bound)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"{p} holds no *.jsonl file")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"training data {p} does not exist")
    if not files:
        raise ValueError("no training data given; pass jsonl files or directories")
    examples = [ex for f in files for ex in read_jsonl(f, parse)]
    if not examples:
        raise ValueError(f"no training lines in {', '.join(map(str, files))}")
    return examples


def check_group_size(examples: Sequence[TrainExample], group_size: int) -> None:
    """Raise naming the first line that cannot fill a group of `group_size` (it has no negatives)."""
    if group_size <= 1:
        return
    for ex in examples:
        if not ex.neg:
            raise ValueError(
                f"{ex.source}: 'neg' is empty but train_group_size={group_size} needs negatives; "
                "add negatives (e.g. `m3embed mine`) or use train_group_size=1"
            )


def sample_group(
    example: TrainExample, group_size: int, rng: random.Random
) -> tuple[str, list[str], list[float] | None]:
    """(query text, [positive, G−1 negatives], their teacher scores or None) for one example."""
    i = rng.randrange(len(example.pos))
    passages, scores = [example.pos[i]], [example.pos_scores[i]] if example.has_scores else None
    n_neg = group_size - 1
    if n_neg > 0:
        pool = list(range(len(example.neg))) * math.ceil(n_neg / len(example.neg))  # tile short neg lists
        for j in rng.sample(pool, n_neg):
            passages.append(example.neg[j])
            if scores is not None:
                scores.append(example.neg_scores[j])
    query = f"{example.prompt}{example.query}" if example.prompt else example.query
    return query, passages, scores


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool = True,
    megabatch: int = 50,
) -> list[np.ndarray]:
    """Index batches of one epoch; the incomplete tail batch is dropped.

    With group_by_length, a random permutation is cut into megabatches of `megabatch` batches, each sorted
    by length (longest first) and cut into batches; the batch order is then shuffled. So a batch holds
    texts of similar length while the data order stays random from epoch to epoch.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    if group_by_length:
        lengths = np.asarray(lengths)
        span = batch_size * megabatch
        perm = (
            np.concatenate(
                [
                    chunk[np.argsort(-lengths[chunk], kind="stable")]
                    for chunk in np.array_split(perm, range(span, len(perm), span))
                ]
            )
            if len(perm)
            else perm
        )
    n_batches = len(perm) // batch_size
    batches = [perm[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(n_batches)]
    return batches


class GroupedBatches:
    """This process's batches: global batches of per_device_batch_size × world_size examples, rank r taking
    slice r. Groups are sampled with an RNG seeded by (seed, epoch, example index).

    Args:
        examples: the training lines.
        group_size: G.
        per_device_batch_size: queries per process per step.
        world_size, rank: the process group (1, 0 on one process).
        seed: data order and group sampling seed.
        group_by_length: length-grouped batches.
        use_teacher_scores: put teacher scores in the batches.
    """

    def __init__(
        self,
        examples: Sequence[TrainExample],
        group_size: int,
        per_device_batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 42,
        group_by_length: bool = True,
        use_teacher_scores: bool = False,
    ) -> None:
        check_group_size(examples, group_size)
        self.examples = list(examples)
        self.group_size = group_size
        self.per_device_batch_size = per_device_batch_size
        self.world_size, self.rank = world_size, rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.use_teacher_scores = use_teacher_scores
        self.global_batch_size = per_device_batch_size * world_size
        if len(self.examples) < self.global_batch_size:
            raise ValueError(
                f"{len(self.examples)} training lines cannot fill one global batch of "
                f"{per_device_batch_size} queries x {world_size} processes; lower "
                "per_device_batch_size or add data"
            )
        self._lengths = [ex.length for ex in self.examples]
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        """Steps per epoch."""
        return len(self.examples) // self.global_batch_size

    def global_indices(self, epoch: int, index: int) -> np.ndarray:
        """Example indices of global batch `index` of `epoch` (all processes)."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (
                epoch,
                epoch_batches(self._lengths, self.global_batch_size, self.seed, epoch, self.group_by_length),
            )
        return self._epoch_cache[1][index]

    def batch(self, epoch: int, index: int, rank: int | None = None) -> TrainBatch:
        """Process `rank`'s part (default: this process) of global batch `index` of `epoch`."""
        rank = self.rank if rank is None else rank
        b = self.per_device_batch_size
        idx = self.global_indices(epoch, index)[rank * b : (rank + 1) * b]
        queries, passages, scores, sources = [], [], [], []
        for i in idx:
            ex = self.examples[int(i)]
            rng = random.Random(f"{self.seed}-{epoch}-{int(i)}")
            query, group, group_scores = sample_group(ex, self.group_size, rng)
            queries.append(query)
            passages.extend(group)
            scores.append(group_scores)
            sources.append(ex.source)
        teacher = scores if self.use_teacher_scores else None
        return TrainBatch(queries, passages, teacher, sources)


def resolve_teacher_use(examples: Sequence[TrainExample], setting: str) -> bool:
    """Whether to distil from pos/neg_scores: "on" needs them on every line, "auto" uses them when every
    line has them (and refuses a mix), "off" ignores them."""
    if setting == "off":
        return False
    missing = next((ex for ex in examples if not ex.has_scores), None)
    if missing is None:
        return True
    if setting == "on" or any(ex.has_scores for ex in examples):
        raise ValueError(
            f"{missing.source}: no 'pos_scores'/'neg_scores' while teacher scores are "
            f"{'required' if setting == 'on' else 'on other lines'}; add them to every line "
            "or set teacher_scores='off'"
        )
    return False
