"""Commands that train and mine: train, train-unsupervised, pretrain, extend-positions, train-reranker, mine."""

from __future__ import annotations

from pathlib import Path

import typer

from m3embed.cli._common import (
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    _load,
    app,
    console,
)

ATTENTION_DROPOUT_HELP = ("attention dropout in training (default: the checkpoint's); 0 lets the fused attention "
                          "kernel run, whose memory is linear in the length (long inputs)")


def _train_option(field: str, *flags: str, help: str, config: str = "TrainConfig") -> typer.models.OptionInfo:
    """A training option setting `config`.`field` (a class of m3embed.train.config), with its default (one place
    for defaults)."""
    from m3embed.train import config as configs  # torch-free

    default = getattr(configs, config).__dataclass_fields__[field].default
    return typer.Option(",".join(default) if isinstance(default, tuple) else default, *flags, help=help)


def _reranker_option(field: str, *flags: str, help: str) -> typer.models.OptionInfo:
    return _train_option(field, *flags, help=help, config="RerankerTrainConfig")


def _default_length(config: str, role: str) -> int:
    """The default query or passage truncation of a config class (its DEFAULT_LENGTHS)."""
    from m3embed.train import config as configs  # torch-free

    return getattr(configs, config).DEFAULT_LENGTHS[("query", "passage").index(role)]


@app.command("train")
def train_command(  # every parameter is named as the TrainConfig field it sets
    train_data: list[Path] = typer.Argument(..., metavar="DATA",
                                            help="jsonl files or directories of *.jsonl: {query, pos, neg}"),
    model: str = typer.Option(..., "--model", "-m", help="M3 checkpoint or plain encoder (dir or hub id)"),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="final model, checkpoint-N/, train_log.jsonl"),
    modes: str = _train_option("modes", help="losses to train: 'dense' = dense only, all three = unified M3 "
                               "(ensemble + self-distillation), or any subset"),
    freeze: str = _train_option("freeze", help="parts kept fixed, comma-separated: encoder, sparse, colbert "
                                "('encoder' trains the heads only)"),
    pooling: str | None = _train_option("pooling", help="override dense pooling: cls or mean"),
    train_group_size: int = _train_option("train_group_size", help="passages per query: 1 positive + N-1 negatives"),
    query_max_length: int | None = _train_option(
        "query_max_length", help=f"query truncation in tokens (default: "
        f"{_default_length('TrainConfig', 'query')}, capped at the model's positions)"),
    passage_max_length: int | None = _train_option(
        "passage_max_length", help=f"passage truncation in tokens (default: "
        f"{_default_length('TrainConfig', 'passage')}, capped at the model's positions)"),
    per_device_batch_size: int = _train_option("per_device_batch_size", "--per-device-batch-size", "--batch-size",
                                               help="queries per process per step"),
    group_by_length: bool = _train_option("group_by_length", help="batches of similar length"),
    teacher_scores: str = _train_option("teacher_scores", help="use pos_scores/neg_scores: auto, on, off"),
    temperature: float = _train_option("temperature", help="softmax temperature of every score"),
    self_distill: bool = _train_option("self_distill", help="self-knowledge distillation (unified training)"),
    self_distill_start_step: int = _train_option("self_distill_start_step",
                                                 help="distil once the step exceeds this (-1: from the start)"),
    kd_loss: str = _train_option("kd_loss", help="loss on teacher scores: m3_kd_loss or kl_div"),
    negatives_cross_device: bool = _train_option(
        "negatives_cross_device", "--negatives-cross-device/--no-negatives-cross-device",
        "--cross-device-negatives/--no-cross-device-negatives", help="dense negatives from every process"),
    learning_rate: float = _train_option("learning_rate", "--learning-rate", "--lr", help="peak learning rate"),
    head_learning_rate: float | None = _train_option("head_learning_rate", "--head-learning-rate", "--head-lr",
                                                     help="peak learning rate of the sparse and ColBERT heads "
                                                     "(default: --lr)"),
    weight_decay: float = _train_option("weight_decay", help="AdamW weight decay (not on biases and norms)"),
    lr_scheduler: str = _train_option("lr_scheduler", help="linear, cosine, constant_with_warmup, constant"),
    warmup_ratio: float = _train_option("warmup_ratio", help="share of the steps spent warming up"),
    warmup_steps: int = _train_option("warmup_steps", help="warm-up steps; overrides --warmup-ratio when > 0"),
    epochs: float = _train_option("epochs", help="passes over the data (fractions allowed)"),
    max_steps: int = _train_option("max_steps", help="> 0 overrides --epochs"),
    max_grad_norm: float = _train_option("max_grad_norm", help="gradient clipping norm (0: no clipping)"),
    bf16: bool = _train_option("bf16", help="bf16 autocast for the encoder"),
    gradient_checkpointing: bool = _train_option("gradient_checkpointing",
                                                 help="recompute encoder layers in the backward pass"),
    attention_dropout: float | None = _train_option("attention_dropout", help=ATTENTION_DROPOUT_HELP),
    sub_batch_size: int | None = _train_option("sub_batch_size",
                                               help="texts per checkpointed encoder chunk (saves memory)"),
    train_layers: int | None = _train_option("train_layers", help="train only this many top encoder layers "
                                             "with the heads (the layers below run once per text, cached)"),
    cache_encoder_states: bool | None = _train_option(
        "cache_encoder_states", "--cache-encoder-states/--no-cache-encoder-states",
        help="frozen encoder: encode each text once and train the heads on cached states "
        "(default: on when --freeze has encoder or --train-layers is set)"),
    seed: int = _train_option("seed", help="seed of the data order, group sampling and new heads"),
    device: str | None = _train_option("device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if "
                                       "available)"),
    save_steps: int = _train_option("save_steps", help="checkpoint every N steps (0: final model only)"),
    save_total_limit: int = _train_option("save_total_limit", help="checkpoints kept (0: all)"),
    resume_from: str | None = _train_option("resume_from", "--resume-from", "--resume",
                                            help="checkpoint-N dir, or 'auto' for the newest in --output-dir"),
    logging_steps: int = _train_option("logging_steps", help="a train_log.jsonl line every N steps"),
    progress: bool = _train_option("progress", help="progress bar"),
) -> None:
    """Fine-tune an M3 model (run under `torchrun --no-python --nproc_per_node N m3embed train ...` for DDP)."""
    options = dict(locals())  # the parameters above, before any other local name exists
    import json

    from m3embed.train.config import TrainConfig
    from m3embed.train.trainer import LOG_FILE, train

    config = TrainConfig(**options)
    result = train(config)
    from m3embed.train import distributed

    if distributed.is_main_process():
        lines = (result / LOG_FILE).read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        parts = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "dense", "sparse", "colbert", "inter") if k in last)
        console.print(f"trained {last.get('step', 0)} steps ({parts}); model saved to {result}", highlight=False)


def _unsup_option(field: str, *flags: str, help: str) -> typer.models.OptionInfo:
    return _train_option(field, *flags, help=help, config="UnsupervisedTrainConfig")


def _last_log_line(output_dir: Path) -> dict:
    import json

    from m3embed.train.trainer import LOG_FILE

    lines = (output_dir / LOG_FILE).read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


@app.command("train-unsupervised")
def train_unsupervised_command(  # every parameter is named as the UnsupervisedTrainConfig field it sets
    train_data: list[Path] = typer.Argument(..., metavar="DATA",
                                            help="jsonl files or directories of *.jsonl: {query, pos} pairs"),
    model: str = typer.Option(..., "--model", "-m", help="M3 checkpoint or plain encoder (e.g. after pretrain)"),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="final model, checkpoint-N/, train_log.jsonl"),
    query_field: str = _unsup_option("query_field", help="jsonl key of the query (e.g. title)"),
    pos_field: str = _unsup_option("pos_field", help="jsonl key of the positive, a text or a list (e.g. body)"),
    modes: str = _unsup_option("modes", help="losses to train (the paper's stage: dense)"),
    pooling: str | None = _unsup_option("pooling", help="override dense pooling: cls or mean"),
    query_max_length: int | None = _unsup_option("query_max_length", help="query truncation in tokens"),
    passage_max_length: int | None = _unsup_option("passage_max_length", help="passage truncation in tokens"),
    per_device_batch_size: int = _unsup_option("per_device_batch_size", "--per-device-batch-size", "--batch-size",
                                               help="pairs per process per step (all are each other's negatives)"),
    grad_cache_chunk_size: int | None = _unsup_option("grad_cache_chunk_size",
                                                      help="texts per GradCache chunk (memory of one chunk)"),
    group_by_length: bool = _unsup_option("group_by_length", help="batches of similar length"),
    temperature: float = _unsup_option("temperature", help="softmax temperature of every score"),
    negatives_cross_device: bool = _unsup_option(
        "negatives_cross_device", "--negatives-cross-device/--no-negatives-cross-device",
        help="dense negatives from every process"),
    learning_rate: float = _unsup_option("learning_rate", "--learning-rate", "--lr", help="peak learning rate"),
    weight_decay: float = _unsup_option("weight_decay", help="AdamW weight decay (not on biases and norms)"),
    lr_scheduler: str = _unsup_option("lr_scheduler", help="linear, cosine, constant_with_warmup, constant"),
    warmup_ratio: float = _unsup_option("warmup_ratio", help="share of the steps spent warming up"),
    warmup_steps: int = _unsup_option("warmup_steps", help="warm-up steps; overrides --warmup-ratio when > 0"),
    epochs: float = _unsup_option("epochs", help="passes over the data (fractions allowed)"),
    max_steps: int = _unsup_option("max_steps", help="> 0 overrides --epochs"),
    max_grad_norm: float = _unsup_option("max_grad_norm", help="gradient clipping norm (0: no clipping)"),
    bf16: bool = _unsup_option("bf16", help="bf16 autocast for the encoder"),
    gradient_checkpointing: bool = _unsup_option("gradient_checkpointing",
                                                 help="recompute encoder layers in the backward pass"),
    attention_dropout: float | None = _unsup_option("attention_dropout", help=ATTENTION_DROPOUT_HELP),
    seed: int = _unsup_option("seed", help="seed of the data order and new heads"),
    device: str | None = _unsup_option("device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if "
                                       "available)"),
    save_steps: int = _unsup_option("save_steps", help="checkpoint every N steps (0: final model only)"),
    save_total_limit: int = _unsup_option("save_total_limit", help="checkpoints kept (0: all)"),
    resume_from: str | None = _unsup_option("resume_from", "--resume-from", "--resume",
                                            help="checkpoint-N dir, or 'auto' for the newest in --output-dir"),
    logging_steps: int = _unsup_option("logging_steps", help="a train_log.jsonl line every N steps"),
    progress: bool = _unsup_option("progress", help="progress bar"),
) -> None:
    """The unsupervised contrastive stage: pairs, in-batch negatives only, large batches by GradCache."""
    options = dict(locals())  # the parameters above, before any other local name exists
    from m3embed.train import distributed
    from m3embed.train.config import UnsupervisedTrainConfig
    from m3embed.train.unsupervised import train_unsupervised

    result = train_unsupervised(UnsupervisedTrainConfig(**options))
    if distributed.is_main_process():
        last = _last_log_line(result)
        parts = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "dense", "sparse", "colbert") if k in last)
        console.print(f"trained {last.get('step', 0)} steps ({parts}); model saved to {result}", highlight=False)


def _pretrain_option(field: str, *flags: str, help: str) -> typer.models.OptionInfo:
    return _train_option(field, *flags, help=help, config="PretrainConfig")


@app.command("pretrain")
def pretrain_command(  # every parameter is named as the PretrainConfig field it sets
    train_data: list[Path] = typer.Argument(..., metavar="DATA", help="plain text: jsonl, txt (a text per line) or "
                                            "parquet files"),
    model: str = typer.Option(..., "--model", "-m", help="backbone or M3 checkpoint (dir, shipped name or hub id)"),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="final backbone, checkpoint-N/, train_log.jsonl"),
    text_field: str = _pretrain_option("text_field", help="jsonl key / parquet column of the text"),
    max_length: int | None = _pretrain_option("max_length", help="tokens per text (default 512, capped at the "
                                              "model's positions)"),
    encoder_mask_ratio: float = _pretrain_option("encoder_mask_ratio", help="share of tokens masked for the encoder"),
    whole_word_mask: bool = _pretrain_option("whole_word_mask", help="mask whole words for the encoder (all pieces "
                                             "of a word together; the ratio counts words)"),
    decoder_mask_ratio: float = _pretrain_option("decoder_mask_ratio", help="share of positions each decoder row "
                                                 "does not see"),
    bottleneck: str = _pretrain_option("bottleneck", help="the decoder's sentence embedding: pooling (the "
                                       "checkpoint's dense pooling) or cls (RetroMAE's [CLS])"),
    per_device_batch_size: int = _pretrain_option("per_device_batch_size", "--per-device-batch-size",
                                                  "--batch-size", help="texts per process per step"),
    group_by_length: bool = _pretrain_option("group_by_length", help="batches of similar length"),
    learning_rate: float = _pretrain_option("learning_rate", "--learning-rate", "--lr", help="peak learning rate"),
    weight_decay: float = _pretrain_option("weight_decay", help="AdamW weight decay (not on biases and norms)"),
    lr_scheduler: str = _pretrain_option("lr_scheduler", help="linear, cosine, constant_with_warmup, constant"),
    warmup_ratio: float = _pretrain_option("warmup_ratio", help="share of the steps spent warming up"),
    warmup_steps: int = _pretrain_option("warmup_steps", help="warm-up steps; overrides --warmup-ratio when > 0"),
    epochs: float = _pretrain_option("epochs", help="passes over the data (fractions allowed)"),
    max_steps: int = _pretrain_option("max_steps", help="> 0 overrides --epochs"),
    max_grad_norm: float = _pretrain_option("max_grad_norm", help="gradient clipping norm (0: no clipping)"),
    bf16: bool = _pretrain_option("bf16", help="bf16 autocast"),
    gradient_checkpointing: bool = _pretrain_option("gradient_checkpointing",
                                                    help="recompute encoder layers in the backward pass"),
    attention_dropout: float | None = _pretrain_option("attention_dropout", help=ATTENTION_DROPOUT_HELP),
    seed: int = _pretrain_option("seed", help="seed of the data order, masks and the new decoder"),
    device: str | None = _pretrain_option("device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if "
                                          "available)"),
    save_steps: int = _pretrain_option("save_steps", help="checkpoint every N steps (0: final model only)"),
    save_total_limit: int = _pretrain_option("save_total_limit", help="checkpoints kept (0: all)"),
    resume_from: str | None = _pretrain_option("resume_from", "--resume-from", "--resume",
                                               help="checkpoint-N dir, or 'auto' for the newest in --output-dir"),
    logging_steps: int = _pretrain_option("logging_steps", help="a train_log.jsonl line every N steps"),
    progress: bool = _pretrain_option("progress", help="progress bar"),
) -> None:
    """RetroMAE pre-training of a backbone on plain text (its output goes to `train` / `train-unsupervised`)."""
    options = dict(locals())  # the parameters above, before any other local name exists
    from m3embed.train import distributed
    from m3embed.train.config import PretrainConfig
    from m3embed.train.retromae import pretrain

    result = pretrain(PretrainConfig(**options))
    if distributed.is_main_process():
        last = _last_log_line(result)
        parts = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "encoder_mlm", "decoder") if k in last)
        console.print(f"trained {last.get('step', 0)} steps ({parts}); backbone saved to {result}", highlight=False)


@app.command("extend-positions")
def extend_positions_command(
    src: str = typer.Argument(..., help="checkpoint dir, shipped name or hub id (BERT or XLM-R)"),
    dst: Path = typer.Argument(..., help="new directory for the extended checkpoint"),
    max_length: int = typer.Option(8192, help="tokens the extended model takes (special tokens included)"),
    method: str = typer.Option("copy", help="copy (learned rows repeated, as BGE-M3; short inputs unchanged) or "
                               "interpolate"),
) -> None:
    """Extend a learned position table so the model reads longer inputs (train it on long texts afterwards)."""
    from m3embed.train.positions import extend_positions

    out = extend_positions(src, dst, max_length=max_length, method=method)
    console.print(f"{src} -> {out}: {max_length} tokens ({method})", highlight=False)


@app.command("train-reranker")
def train_reranker_command(  # every parameter is named as the RerankerTrainConfig field it sets
    train_data: list[Path] = typer.Argument(..., metavar="DATA",
                                            help="jsonl files or directories of *.jsonl: {query, pos, neg}"),
    model: str = typer.Option(..., "--model", "-m", help="reranker checkpoint, or a plain encoder that gets a new "
                              "classification head (dir, shipped name or hub id)"),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="final model, checkpoint-N/, train_log.jsonl"),
    train_layers: int | None = _reranker_option("train_layers", help="train only this many top encoder layers "
                                                "(and the head); default: the whole model"),
    train_group_size: int = _reranker_option("train_group_size", help="pairs per query: 1 positive + N-1 negatives"),
    query_max_length: int | None = _reranker_option(
        "query_max_length", help=f"query share of a pair in tokens (default "
        f"{_default_length('RerankerTrainConfig', 'query')}; a pair holds query + passage)"),
    passage_max_length: int | None = _reranker_option(
        "passage_max_length", help=f"passage share of a pair in tokens (default "
        f"{_default_length('RerankerTrainConfig', 'passage')})"),
    per_device_batch_size: int = _reranker_option("per_device_batch_size", "--per-device-batch-size",
                                                  "--batch-size", help="queries per process per step"),
    group_by_length: bool = _reranker_option("group_by_length", help="batches of similar length"),
    teacher_scores: str = _reranker_option("teacher_scores", help="distil from pos_scores/neg_scores: auto, on, off"),
    learning_rate: float = _reranker_option("learning_rate", "--learning-rate", "--lr", help="peak learning rate"),
    weight_decay: float = _reranker_option("weight_decay", help="AdamW weight decay (not on biases and norms)"),
    lr_scheduler: str = _reranker_option("lr_scheduler", help="linear, cosine, constant_with_warmup, constant"),
    warmup_ratio: float = _reranker_option("warmup_ratio", help="share of the steps spent warming up"),
    warmup_steps: int = _reranker_option("warmup_steps", help="warm-up steps; overrides --warmup-ratio when > 0"),
    epochs: float = _reranker_option("epochs", help="passes over the data (fractions allowed)"),
    max_steps: int = _reranker_option("max_steps", help="> 0 overrides --epochs"),
    max_grad_norm: float = _reranker_option("max_grad_norm", help="gradient clipping norm (0: no clipping)"),
    bf16: bool = _reranker_option("bf16", help="bf16 autocast"),
    gradient_checkpointing: bool = _reranker_option("gradient_checkpointing",
                                                    help="recompute encoder layers in the backward pass"),
    attention_dropout: float | None = _reranker_option("attention_dropout", help=ATTENTION_DROPOUT_HELP),
    sub_batch_size: int | None = _reranker_option("sub_batch_size", help="pairs per checkpointed chunk"),
    seed: int = _reranker_option("seed", help="seed of the data order, group sampling and a new head"),
    device: str | None = _reranker_option("device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if "
                                          "available)"),
    save_steps: int = _reranker_option("save_steps", help="checkpoint every N steps (0: final model only)"),
    save_total_limit: int = _reranker_option("save_total_limit", help="checkpoints kept (0: all)"),
    resume_from: str | None = _reranker_option("resume_from", "--resume-from", "--resume",
                                               help="checkpoint-N dir, or 'auto' for the newest in --output-dir"),
    logging_steps: int = _reranker_option("logging_steps", help="a train_log.jsonl line every N steps"),
    progress: bool = _reranker_option("progress", help="progress bar"),
) -> None:
    """Fine-tune a cross-encoder reranker (FlagEmbedding's recipe: cross-entropy over 1 positive + N-1 negatives)."""
    options = dict(locals())  # the parameters above, before any other local name exists
    import json

    from m3embed.train import distributed
    from m3embed.train.config import RerankerTrainConfig
    from m3embed.train.reranker import train_reranker
    from m3embed.train.trainer import LOG_FILE

    result = train_reranker(RerankerTrainConfig(**options))
    if distributed.is_main_process():
        lines = (result / LOG_FILE).read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        parts = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "ce", "distill") if k in last)
        console.print(f"trained {last.get('step', 0)} steps ({parts}); reranker saved to {result}", highlight=False)


@app.command()
def mine(
    input: Path = typer.Argument(..., help="jsonl training lines {query, pos[, neg]}"),
    output: Path = typer.Option(..., "--out", "-o", help="jsonl to write, with mined 'neg' lists"),
    model: str = ModelOpt,
    range_: str = typer.Option("2-200", "--range", help="rank range START-END to sample from (0-based, END "
                               "excluded, as FlagEmbedding's range_for_sampling)"),
    negatives: int = typer.Option(15, help="negatives per line"),
    modes: str = typer.Option("dense", help="dense, sparse, or dense,sparse (hybrid)"),
    weights: str = typer.Option("1,0.3", help="hybrid weights: dense,sparse"),
    pool: Path | None = typer.Option(None, help="candidate pool jsonl ('text' field); default: all pos+neg"),
    query_max_length: int | None = typer.Option(None, help="query truncation in tokens (default: the model's limit)"),
    passage_max_length: int | None = typer.Option(None, help="passage truncation in tokens (default: the model's "
                                                  "limit)"),
    seed: int = typer.Option(42, help="seed of the negative sampling"),
    dtype: str = DtypeOpt,
    device: str | None = DeviceOpt,
    progress: bool = typer.Option(True, help="progress bars on stderr while queries and candidates are encoded"),
) -> None:
    """Mine hard negatives: retrieve with the model, sample from a rank range, never a positive."""
    from m3embed.train.mine import mine_hard_negatives

    try:
        w = tuple(float(x) for x in weights.split(","))
    except ValueError:
        raise ValueError(f"--weights {weights!r} must be numbers like 1,0.3") from None
    m = _load(model, modes, dtype, device)
    stats = mine_hard_negatives(m, input, output, candidate_pool=pool, sample_range=range_,
                                negative_number=negatives, modes=modes, weights=w, query_max_length=query_max_length,
                                passage_max_length=passage_max_length, seed=seed, progress=progress)
    console.print(f"{stats.lines} lines, {stats.candidates} candidates, {stats.mean_negatives:.1f} negatives per "
                  f"line ({stats.topped_up} topped up at random) -> {output}", highlight=False)
    if stats.dropped_teacher_scores:
        console.print(f"[yellow]note:[/yellow] dropped pos/neg_scores on {stats.dropped_teacher_scores} lines "
                      "(the new negatives have no teacher scores)", highlight=False)
