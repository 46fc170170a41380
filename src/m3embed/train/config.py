"""Run settings as flat dataclasses; the CLI fills them, checkpoints keep them.

`RunConfig` holds what every fine-tuning run shares; `TrainConfig` adds BGE-M3's losses (`m3embed train`),
`RerankerTrainConfig` the cross-encoder's (`m3embed train-reranker`). `LossConfig` is the part of TrainConfig
the M3 loss module reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Self

from m3embed.modes import MODES, check_modes
from m3embed.tokenize import resolve_max_length

FREEZABLE = ("encoder", "sparse", "colbert")  # the parts whose weights `freeze` can hold fixed
KD_LOSSES = ("m3_kd_loss", "kl_div")
TEACHER_SCORE_USE = ("auto", "on", "off")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup", "constant")
# fields renamed since: configs saved under the old names (train_config.json, checkpoints) still load
RENAMED_FIELDS = {"query_max_len": "query_max_length", "passage_max_len": "passage_max_length"}


@dataclass
class RunConfig:
    """The settings every fine-tuning run shares (data, optimisation, checkpoints); `TrainConfig` (M3) and
    `RerankerTrainConfig` (cross-encoder) add their own. Defaults follow FlagEmbedding unless a comment says why."""

    model: str = ""  # checkpoint dir or hub id; a plain encoder gets new random heads
    train_data: list[str] = field(default_factory=list)  # jsonl files or directories of *.jsonl
    output_dir: str = "m3embed-finetuned"

    # ---- data ----
    train_group_size: int = 8  # 1 positive + 7 negatives per query (FlagEmbedding default)
    # truncation in tokens; None = the default (per config class) capped at the model's positions. An explicit
    # value above the model's positions is an error
    query_max_length: int | None = None
    passage_max_length: int | None = None
    per_device_batch_size: int = 4  # queries per process per step (each brings train_group_size passages)
    group_by_length: bool = True  # batches of similar length (paper §3.5): less padding
    teacher_scores: str = "auto"  # use pos/neg_scores: "auto" (when every line has them), "on", "off"

    # ---- optimisation ----
    learning_rate: float = 1e-5  # FlagEmbedding m3.sh
    weight_decay: float = 0.01
    lr_scheduler: str = "linear"  # transformers.get_scheduler name
    warmup_ratio: float = 0.1  # share of the steps spent warming up (used when warmup_steps is 0)
    warmup_steps: int = 0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    max_grad_norm: float = 1.0  # transformers Trainer default, as FlagEmbedding runs it
    bf16: bool = False  # bf16 autocast (GPU, or CPU with AVX512-BF16); losses stay float32
    gradient_checkpointing: bool = False  # recompute encoder layers in backward: long passages fit
    sub_batch_size: int | None = None  # texts per checkpointed encoder chunk; None = encode in one go
    # attention-probability dropout of every attention layer while training; None = the checkpoint's. 0 lets torch
    # run its fused attention kernel in training, whose memory grows linearly with the length (with dropout the
    # CPU kernel materialises a (T x T) map per head): what 8,192-token steps need
    attention_dropout: float | None = None
    seed: int = 42
    device: str | None = None  # None: cuda:LOCAL_RANK when available, else cpu

    # ---- checkpoints and logs ----
    save_steps: int = 0  # checkpoint every N steps (0 = only the final model)
    save_total_limit: int = 2  # keep this many newest checkpoints (0 = keep all)
    resume_from: str | None = None  # checkpoint dir, or "auto" = newest checkpoint in output_dir
    logging_steps: int = 1  # a JSON line in output_dir/train_log.jsonl every N steps
    progress: bool = True  # rich progress bar on the main process

    # default truncation (tokens) of queries and passages when the fields are None; REFERENCE §Training
    DEFAULT_LENGTHS: ClassVar[tuple[int, int]] = (64, 256)

    def __post_init__(self) -> None:
        self.output_dir = str(self.output_dir)
        if self.resume_from is not None:
            self.resume_from = str(self.resume_from)
        if isinstance(self.train_data, (str, Path)):
            self.train_data = [str(self.train_data)]
        self.train_data = [str(p) for p in self.train_data]
        self.validate()

    def checks(self) -> list[tuple[bool, tuple[str, ...], str]]:
        """(valid?, settings shown in the error, what is expected) for every rule of this config."""
        return [
            (self.train_group_size >= 1, ("train_group_size",), "must be >= 1"),
            (
                all(n is None or n >= 2 for n in (self.query_max_length, self.passage_max_length)),
                ("query_max_length", "passage_max_length"),
                "must be >= 2 or None",
            ),
            (self.per_device_batch_size >= 1, ("per_device_batch_size",), "must be >= 1"),
            (self.learning_rate >= 0, ("learning_rate",), "must be >= 0"),
            (
                0 <= self.warmup_ratio < 1 and self.warmup_steps >= 0,
                ("warmup_ratio", "warmup_steps"),
                "must be in [0, 1) and >= 0",
            ),
            (
                self.epochs > 0 or self.max_steps > 0,
                ("epochs", "max_steps"),
                "need epochs > 0 or max_steps > 0",
            ),
            (
                self.sub_batch_size is None or self.sub_batch_size >= 1,
                ("sub_batch_size",),
                "must be >= 1 or None",
            ),
            (
                min(self.save_steps, self.save_total_limit) >= 0,
                ("save_steps", "save_total_limit"),
                "must be >= 0",
            ),
            (self.logging_steps >= 1, ("logging_steps",), "must be >= 1"),
            (
                self.attention_dropout is None or 0 <= self.attention_dropout < 1,
                ("attention_dropout",),
                "must be in [0, 1) or None",
            ),
            (
                self.teacher_scores in TEACHER_SCORE_USE,
                ("teacher_scores",),
                f"must be one of {TEACHER_SCORE_USE}",
            ),
            (self.lr_scheduler in SCHEDULERS, ("lr_scheduler",), f"must be one of {SCHEDULERS}"),
        ]

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting and its valid range."""
        for ok, names, expected in self.checks():
            if not ok:
                shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
                raise ValueError(f"{shown}: {expected}")

    def max_lengths(self, limit: int) -> tuple[int, int]:
        """(query, passage) truncation for a model of `limit` positions.

        A length left at None takes its default (DEFAULT_LENGTHS) capped at `limit`; an explicit length above
        `limit` raises ValueError naming the value and the limit.
        """
        query, passage = self.DEFAULT_LENGTHS
        return (
            resolve_max_length(self.query_max_length, limit, query, "query_max_length"),
            resolve_max_length(self.passage_max_length, limit, passage, "passage_max_length"),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict) -> Self:
        """A config from saved values; keys under their old names (RENAMED_FIELDS) are mapped to the new ones."""
        values = dict(values)
        for old, new in RENAMED_FIELDS.items():
            if old in values:
                if new in values and values[new] != values[old]:
                    raise ValueError(f"{old}={values[old]!r} and {new}={values[new]!r} disagree; keep only {new}")
                values[new] = values.pop(old)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s) {unknown}; valid fields: {', '.join(sorted(known))}"
            )
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class TrainConfig(RunConfig):
    """Settings of one M3 fine-tuning run (`m3embed train`): RunConfig's plus the M3 losses and parts.

    `modes` picks the losses (and so the heads that learn): ("dense",) is FlagEmbedding's dense-only
    fine-tuning, all three modes is its unified fine-tuning. `freeze` holds parts fixed, e.g.
    freeze=("encoder",) trains the heads only (FlagEmbedding's fix_encoder). Lengths default to 64 / 256.
    """

    modes: tuple[str, ...] = MODES  # losses to train; a single mode uses its own InfoNCE only
    freeze: tuple[str, ...] = ()  # any of "encoder", "sparse", "colbert": weights kept fixed
    pooling: str | None = None  # override the checkpoint's dense pooling ("cls" / "mean")

    # ---- losses ----
    temperature: float = 0.02  # paper + FlagEmbedding examples
    self_distill: bool = True  # self-knowledge distillation from the ensemble (unified training only)
    self_distill_start_step: int = -1  # distil once step > this; -1 = from the first step (FlagEmbedding)
    kd_loss: str = "m3_kd_loss"  # loss for teacher scores: "m3_kd_loss" (M3 paper) or "kl_div"
    negatives_cross_device: bool = True  # dense negatives from every process (no effect on one process)
    # train only this many top encoder layers (with the heads); the embeddings and the layers below stay fixed
    train_layers: int | None = None
    # learning rate of the sparse and ColBERT heads (new heads start random and take a larger one than a
    # pre-trained encoder); None = learning_rate
    head_learning_rate: float | None = None
    # frozen encoder (or frozen lower layers): run the frozen part once per distinct text (eval mode, no dropout)
    # and train on its cached states; None = on exactly when "encoder" is frozen or train_layers is set
    cache_encoder_states: bool | None = None

    def __post_init__(self) -> None:
        self.modes = check_modes(self.modes)
        self.freeze = tuple(self.freeze.split(",")) if isinstance(self.freeze, str) else tuple(self.freeze)
        self.freeze = tuple(p.strip() for p in self.freeze if p.strip())
        super().__post_init__()

    def validate(self) -> None:
        bad_parts = [p for p in self.freeze if p not in FREEZABLE]
        if bad_parts:
            raise ValueError(f"freeze={bad_parts!r}: choose from {', '.join(FREEZABLE)}")
        trained = {"encoder"} | {m for m in self.modes if m != "dense"}
        if trained <= set(self.freeze):
            raise ValueError(
                f"freeze={self.freeze!r} with modes={self.modes!r} leaves nothing to train; "
                "unfreeze a part or add a mode whose head is not frozen"
            )
        super().validate()

    def checks(self) -> list[tuple[bool, tuple[str, ...], str]]:
        return [
            *super().checks(),
            (self.temperature > 0, ("temperature",), "must be > 0"),
            (
                not self.cache_encoder_states or "encoder" in self.freeze or self.train_layers is not None,
                ("cache_encoder_states", "freeze"),
                "caching encoder states needs a frozen encoder (add 'encoder' to freeze, or set train_layers)",
            ),
            (self.head_learning_rate is None or self.head_learning_rate > 0, ("head_learning_rate",),
             "must be > 0 or None"),
            (self.train_layers is None or self.train_layers >= 1, ("train_layers",),
             "must be >= 1 or None (freeze 'encoder' to train the heads only)"),
            (
                self.train_layers is None or "encoder" not in self.freeze,
                ("train_layers", "freeze"),
                "trains encoder layers, but 'encoder' is frozen: drop one of them",
            ),
            (self.kd_loss in KD_LOSSES, ("kd_loss",), f"must be one of {KD_LOSSES}"),
            (self.pooling in (None, "cls", "mean"), ("pooling",), "must be 'cls', 'mean' or None"),
        ]

    @property
    def use_state_cache(self) -> bool:
        """Whether training reads cached encoder states (explicit setting, else: the encoder, or the part below
        the trained layers, is frozen)."""
        if self.cache_encoder_states is None:
            return "encoder" in self.freeze or self.train_layers is not None
        return self.cache_encoder_states

    @property
    def unified(self) -> bool:
        """More than one mode: the ensemble loss and self-distillation apply."""
        return len(self.modes) > 1

    def to_dict(self) -> dict:
        out = asdict(self)
        out["modes"], out["freeze"] = list(self.modes), list(self.freeze)
        return out


@dataclass
class RerankerTrainConfig(RunConfig):
    """Settings of one cross-encoder fine-tuning run (`m3embed train-reranker`): FlagEmbedding's reranker recipe.

    A step scores B groups of (query, passage) pairs, 1 positive + G-1 negatives each; the loss is the
    cross-entropy over each group's logits (positive first), plus a soft cross-entropy against the softmax of
    the teacher scores when they are used. As in FlagEmbedding, a pair holds at most
    query_max_length + passage_max_length tokens (default 32 + 128).
    """

    learning_rate: float = 6e-5  # FlagEmbedding's reranker fine-tuning example (bge-reranker-base)
    # encoder layers trained, counted from the top (the classification head always trains); None = the whole
    # model, embeddings included. A few top layers train quickly and ship small.
    train_layers: int | None = None

    DEFAULT_LENGTHS: ClassVar[tuple[int, int]] = (32, 128)  # FlagEmbedding's query_max_len / passage_max_len

    def max_lengths(self, limit: int) -> tuple[int, int]:
        """(query, passage) token shares of a pair of at most `limit` tokens: their sum must fit.

        A default passage length is shortened to fit silently; explicit lengths that do not fit are an error.
        """
        query, passage = super().max_lengths(limit)
        if query + passage > limit:
            if self.passage_max_length is not None or query >= limit:
                raise ValueError(f"query_max_length + passage_max_length = {query} + {passage} exceeds the model's "
                                 f"position limit of {limit} tokens (a pair holds both); lower them")
            passage = limit - query
        return query, passage

    def checks(self) -> list[tuple[bool, tuple[str, ...], str]]:
        return [
            *super().checks(),
            (self.train_layers is None or self.train_layers >= 0, ("train_layers",), "must be >= 0 or None"),
            (
                self.passage_max_length is None or self.passage_max_length >= 8,
                ("passage_max_length",),
                "must be >= 8 (a quarter of it goes to the query)",
            ),
        ]


@dataclass
class UnsupervisedTrainConfig(TrainConfig):
    """Settings of the unsupervised contrastive stage (`m3embed train-unsupervised`): TrainConfig's, on
    {"query", "pos"} pairs (other keys by `query_field` / `pos_field`) with in-batch negatives only
    (train_group_size 1), dense only by default.

    Large batches fit in small memory by gradient caching: the batch is embedded without a graph, the loss and
    the embeddings' gradients are computed, then each chunk of `grad_cache_chunk_size` texts is re-run with a
    graph and back-propagated (`m3embed.train.gradcache`). The gradients are the full batch's.
    """

    modes: tuple[str, ...] = ("dense",)  # the paper's unsupervised stage trains the dense embedding only
    train_group_size: int = 1  # in-batch negatives only: each pair brings its positive, nothing else
    per_device_batch_size: int = 256  # pairs per process per step; GradCache keeps memory at one chunk's
    learning_rate: float = 5e-5  # M3 paper, pre-training stage
    # texts per re-run chunk (the memory of a step is one chunk's activations); None = one uncached pass
    grad_cache_chunk_size: int | None = 32
    query_field: str = "query"  # jsonl key of each pair's query (e.g. "title")
    pos_field: str = "pos"  # jsonl key of its positive: a text or a list of texts (e.g. "body")

    def checks(self) -> list[tuple[bool, tuple[str, ...], str]]:
        return [
            *super().checks(),
            (self.train_group_size == 1, ("train_group_size",), "must be 1: in-batch negatives only"),
            (
                bool(self.query_field) and bool(self.pos_field) and self.query_field != self.pos_field,
                ("query_field", "pos_field"),
                "must be two different non-empty keys",
            ),
            (self.teacher_scores != "on", ("teacher_scores",), "the unsupervised stage uses no teacher scores"),
            (
                self.grad_cache_chunk_size is None or self.grad_cache_chunk_size >= 1,
                ("grad_cache_chunk_size",),
                "must be >= 1 or None",
            ),
            (
                self.sub_batch_size is None or self.grad_cache_chunk_size is None,
                ("sub_batch_size", "grad_cache_chunk_size"),
                "GradCache already chunks the batch; leave sub_batch_size unset",
            ),
            (not self.use_state_cache, ("cache_encoder_states",), "the unsupervised stage trains the encoder"),
        ]


@dataclass
class PretrainConfig(RunConfig):
    """Settings of RetroMAE pre-training (`m3embed pretrain`): RunConfig's on plain texts (jsonl `text_field`,
    txt lines or parquet column), cut at `max_length` tokens; train_group_size, the query/passage lengths and
    teacher_scores do not apply.

    The encoder reads each text with `encoder_mask_ratio` of its tokens masked (BERT's 80/10/10 replacement) and
    learns by MLM; a one-layer decoder rebuilds every token from the sentence embedding (`bottleneck`) and a
    sampled `decoder_mask_ratio`-masked view of the others (enhanced decoding). Defaults follow FlagEmbedding's
    RetroMAE example unless a comment says why.
    """

    max_length: int | None = None  # tokens per text; None = 512 capped at the model's positions
    text_field: str = "text"  # jsonl key / parquet column of the text (a "title" is prepended when present)
    encoder_mask_ratio: float = 0.3  # RetroMAE: moderate masking of the encoder input
    # mask whole words for the encoder (the ratio then counts words; needs a fast tokenizer); False: tokens
    whole_word_mask: bool = False
    decoder_mask_ratio: float = 0.5  # RetroMAE: aggressive masking of what each decoder row sees (0.5-0.7)
    # the decoder's sentence embedding: "pooling" = the checkpoint's dense pooling (m3embed.json: [CLS] for BGE-M3,
    # the mean for e5 / MiniLM), so the vector dense retrieval uses is the one trained; "cls" = RetroMAE's [CLS]
    bottleneck: str = "pooling"
    per_device_batch_size: int = 32
    learning_rate: float = 2e-5  # FlagEmbedding's retromae example
    output_dir: str = "m3embed-pretrained"

    DEFAULT_LENGTHS: ClassVar[tuple[int, int]] = (512, 512)  # FlagEmbedding's retromae max_seq_length

    def checks(self) -> list[tuple[bool, tuple[str, ...], str]]:
        return [
            *super().checks(),
            (
                0 < self.encoder_mask_ratio < 1 and 0 < self.decoder_mask_ratio < 1,
                ("encoder_mask_ratio", "decoder_mask_ratio"),
                "must be in (0, 1)",
            ),
            (self.bottleneck in ("pooling", "cls"), ("bottleneck",), "must be 'pooling' or 'cls'"),
            (self.max_length is None or self.max_length >= 4, ("max_length",), "must be >= 4 or None"),
        ]

    def max_lengths(self, limit: int) -> tuple[int, int]:
        """(max_length, max_length): every text is cut at the same length."""
        n = resolve_max_length(self.max_length, limit, self.DEFAULT_LENGTHS[1], "max_length")
        return n, n


@dataclass(frozen=True)
class LossConfig:
    """The settings of `M3TrainingLoss`: the TrainConfig fields of the same names (defaults included)."""

    modes: tuple[str, ...] = TrainConfig.modes  # losses trained
    train_group_size: int = TrainConfig.train_group_size  # G, passages per query
    temperature: float = TrainConfig.temperature  # τ
    self_distill: bool = TrainConfig.self_distill  # applies only with several modes
    self_distill_start_step: int = TrainConfig.self_distill_start_step  # distil when step > this
    kd_loss: str = TrainConfig.kd_loss  # "m3_kd_loss" or "kl_div" for teacher scores
    negatives_cross_device: bool = TrainConfig.negatives_cross_device  # gathered dense negatives (DDP)
    sub_batch_size: int | None = TrainConfig.sub_batch_size  # texts per checkpointed encoder chunk
    train_layers: int | None = TrainConfig.train_layers  # top encoder layers run on cached states below them
    bf16: bool = TrainConfig.bf16  # encoder under bf16 autocast

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", check_modes(self.modes))
        if self.kd_loss not in KD_LOSSES:
            raise ValueError(f"kd_loss={self.kd_loss!r}: must be one of {KD_LOSSES}")

    @classmethod
    def from_train_config(cls, config: TrainConfig) -> LossConfig:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})
