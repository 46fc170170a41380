"""The training loop: data → M3TrainingLoss (optionally DDP) → AdamW, checkpoints, resume, JSON-lines log.

`train(config)` is the one-call API (and what `m3embed train` runs). Launched by torchrun it joins the
process group, wraps the loss module in DistributedDataParallel and gathers dense negatives across
processes; on one process the same code runs without any of that.

Output directory:
    <output_dir>/                the final model, official BGE-M3 layout, + train_config.json
    <output_dir>/checkpoint-N/   the model at step N + trainer_state.pt + rng_state_rank*.pt, and last
                                 checkpoint_complete.json listing them all
    <output_dir>/train_log.jsonl one JSON object per logged step: loss, per-mode losses, lr, grad norm

A checkpoint is written into checkpoint-N.partial/ and renamed to checkpoint-N/ once every process has
written its files, so a run killed while saving leaves no checkpoint-N/ that looks complete; the files, their
completeness and the choice of checkpoint to resume from are `m3embed.train.checkpoints`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from m3embed._progress import Progress
from m3embed.model import encoder_layers
from m3embed.train import distributed
from m3embed.train.cache import EncoderStateCache
from m3embed.train.checkpoints import (
    MANIFEST_FILE,
    STATE_FILE,
    checkpoint_step,
    resume_checkpoint,
    rng_file,
    rng_state,
    set_rng_state,
    trim_log,
)
from m3embed.train.config import LossConfig, TrainConfig
from m3embed.train.data import GroupedBatches, TrainBatch, load_examples, resolve_teacher_use
from m3embed.train.losses import M3LossOutput, M3TrainingLoss

LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "train_config.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(path: str, config: TrainConfig, device: torch.device) -> nn.Module:
    """An M3Model ready to train `config.modes`: heads it lacks are created, untrained heads are not kept.

    A plain encoder trained dense-only therefore saves no random head files (FlagEmbedding's trap).
    """
    from m3embed import checkpoint
    from m3embed.model import M3Model
    from m3embed.sources import resolve

    model = M3Model.from_pretrained(
        path, device=device, modes=config.modes, pooling=config.pooling, new_heads=True
    )
    directory = resolve(path)
    for mode in ("sparse", "colbert"):
        if mode not in config.modes and not (directory / checkpoint.HEAD_FILES[mode]).is_file():
            setattr(model, f"{mode}_linear", None)
    return model


def train_top_layers(backbone: nn.Module, train_layers: int) -> list[str]:
    """Hold the embeddings and every encoder layer below the top `train_layers` fixed, train those; return the
    trained layers' names ("layer.N")."""
    layers = encoder_layers(backbone)
    if train_layers > len(layers):
        raise ValueError(f"train_layers={train_layers} but the encoder has {len(layers)} layers; pass at most "
                         f"{len(layers)}")
    frozen = len(layers) - train_layers
    backbone.requires_grad_(True)
    backbone.embeddings.requires_grad_(False)
    for layer in layers[:frozen]:
        layer.requires_grad_(False)
    return [f"layer.{i}" for i in range(frozen, len(layers))]


def configure_trainable(model: nn.Module, config: TrainConfig) -> list[str]:
    """Set requires_grad from `modes`, `freeze` and `train_layers`, switch on gradient checkpointing; return
    the trained parts."""
    model.requires_grad_(False)
    trained = []
    if "encoder" not in config.freeze:
        if config.train_layers is None:
            model.backbone.requires_grad_(True)
            trained.append("encoder")
        else:
            trained += [f"encoder.{name}" for name in train_top_layers(model.backbone, config.train_layers)]
        if config.gradient_checkpointing:
            model.backbone.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    for mode in ("sparse", "colbert"):
        head = getattr(model, f"{mode}_linear")
        if mode in config.modes and mode not in config.freeze and head is not None:
            head.requires_grad_(True)
            trained.append(f"{mode}_linear")
    model.train()
    return trained


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Set the attention-probability dropout of every attention layer in `model` to `p`; return how many.

    An attention layer is a module with `query`, `key`, `value` projections and an `nn.Dropout` named `dropout`
    (BERT's and XLM-R's self-attention in transformers, the RetroMAE decoder), whose attention reads that
    dropout's `p` in training. The saved config is left as it was. Raises ValueError when there is none.
    """
    layers = [m for m in model.modules()
              if all(hasattr(m, a) for a in ("query", "key", "value")) and isinstance(getattr(m, "dropout", None),
                                                                                      nn.Dropout)]
    if not layers:
        raise ValueError(f"attention_dropout={p}: no attention layer with query/key/value projections and a "
                         f"dropout found in {type(model).__name__}")
    for layer in layers:
        layer.dropout.p = p
    return len(layers)


HEADS = ("sparse_linear", "colbert_linear")  # the M3 heads' module names (`head_learning_rate` applies to them)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases and LayerNorm weights (1-D tensors); the M3
    heads at `head_learning_rate` when a run sets one."""
    head_lr = getattr(config, "head_learning_rate", None)  # RunConfigs without M3 heads have none
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            lr = head_lr if head_lr is not None and name.split(".")[0] in HEADS else config.learning_rate
            groups.setdefault((lr, config.weight_decay if p.ndim >= 2 else 0.0), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": decay} for (lr, decay), ps in groups.items()],
                             lr=config.learning_rate)


class Trainer:
    """One fine-tuning run. Build it, then `train()`; `training_step` is exposed for tests and custom loops.

    A subclass trains another kind of model (`m3embed.train.reranker.RerankerTrainer`) by overriding the model
    loading, its trainable parts, the loss module and the batch tensors: `load_model`, `configure_trainable`,
    `make_loss`, `collate` and `compute_loss`. Data, optimiser, schedule, checkpoints, resume, DDP are shared.

    Args:
        config: the run's settings.
        model: an already loaded M3Model (default: loaded from config.model, or from the resumed checkpoint).
        examples: training examples (default: read from config.train_data).
    """

    def __init__(
        self, config: TrainConfig, model: nn.Module | None = None, examples: list | None = None
    ) -> None:
        self.config = config
        self._setup_process()
        self.resume_dir = resume_checkpoint(self.config.resume_from, self.output_dir, self.world_size,
                                            warn=self.is_main)
        self._setup_data(examples)
        self._setup_model(model)
        self._setup_loss()
        self._setup_optimizer()
        self._setup_scheduler()
        self.step = 0
        if self.resume_dir is not None:
            self.load_state(self.resume_dir)

    # ---- set-up steps, in order ----

    def _setup_process(self) -> None:
        """Join the process group (under torchrun), pick the device, seed every RNG."""
        self.device, self._owns_group = distributed.init_distributed(self.config.device)
        self.rank, self.world_size = distributed.get_rank(), distributed.get_world_size()
        self.is_main = self.rank == 0
        self.output_dir = Path(self.config.output_dir)
        seed_everything(self.config.seed)

    def _setup_data(self, examples: list | None) -> None:
        """Read and check the examples (unless given) and cut this process's batches."""
        config = self.config
        examples = load_examples(config.train_data) if examples is None else examples
        self.use_teacher_scores = resolve_teacher_use(examples, config.teacher_scores)
        self.batches = GroupedBatches(
            examples,
            group_size=config.train_group_size,
            per_device_batch_size=config.per_device_batch_size,
            world_size=self.world_size,
            rank=self.rank,
            seed=config.seed,
            group_by_length=config.group_by_length,
            use_teacher_scores=self.use_teacher_scores,
        )
        self.steps_per_epoch = len(self.batches)
        self.total_steps = (
            config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * self.steps_per_epoch)
        )

    def _setup_model(self, model: nn.Module | None) -> None:
        """Load the model (from the resumed checkpoint, if any), resolve token limits, set what trains."""
        config = self.config
        if model is not None and self.resume_dir is not None:
            raise ValueError(
                f"resuming from {self.resume_dir} loads the model saved there; do not pass a model"
            )
        if model is None:
            if not config.model and self.resume_dir is None:
                raise ValueError(f"no model given: set {type(config).__name__}.model to a checkpoint directory "
                                 "or hub id")
            model = self.load_model(str(self.resume_dir or config.model))
        self.model = model.to(self.device)
        # token limits: defaults capped at the model's positions, an explicit value above them is an error
        self.query_max_length, self.passage_max_length = config.max_lengths(self.model.max_length)
        self.trained_parts = self.configure_trainable(self.model)
        if config.attention_dropout is not None:
            set_attention_dropout(self.model, config.attention_dropout)

    def load_model(self, path: str) -> nn.Module:
        """The model to train, from a checkpoint (or the resumed one)."""
        return load_model(path, self.config, self.device)

    def configure_trainable(self, model: nn.Module) -> list[str]:
        """Set which weights train; return the names of the trained parts."""
        return configure_trainable(model, self.config)

    def _setup_loss(self) -> None:
        """The loss module, wrapped in DDP when distributed."""
        self.state_cache: EncoderStateCache | None = None
        self.loss_fn = self.make_loss()
        self.engine: nn.Module = self.loss_fn
        if self.world_size > 1:
            self.engine = nn.parallel.DistributedDataParallel(
                self.loss_fn, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def make_loss(self) -> nn.Module:
        """M3TrainingLoss over the model (on cached encoder states when configured)."""
        config = self.config
        if config.use_state_cache:
            layers = config.train_layers
            self.state_cache = EncoderStateCache(
                self.model.backbone,
                self.model.tokenizer.pad_token_id,
                autocast_dtype=torch.bfloat16 if config.bf16 else None,
                stop_layer=len(encoder_layers(self.model.backbone)) - layers if layers else None,
            )
        return M3TrainingLoss(self.model, LossConfig.from_train_config(config), self.state_cache)

    def _setup_optimizer(self) -> None:
        self.optimizer = make_optimizer(self.model, self.config)

    def _setup_scheduler(self) -> None:
        """The learning-rate schedule over total_steps, warming up for warmup_steps (else warmup_ratio)."""
        from transformers import get_scheduler

        config = self.config
        warmup = config.warmup_steps or math.ceil(config.warmup_ratio * self.total_steps)
        self.scheduler = get_scheduler(
            config.lr_scheduler, self.optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps
        )

    # ---- one step ----

    def collate(self, batch: TrainBatch) -> dict[str, torch.Tensor | None]:
        """Tokenise a batch (with the model's query/passage prefixes, truncated at the max lengths) on the device."""
        from m3embed.tokenize import pad, tokenize

        tok, model = self.model.tokenizer, self.model
        queries, passages = model.input_texts(batch.queries, "query"), model.input_texts(batch.passages, "passage")
        q_ids, q_mask = pad(tokenize(tok, queries, self.query_max_length), tok.pad_token_id)
        p_ids, p_mask = pad(tokenize(tok, passages, self.passage_max_length), tok.pad_token_id)
        teacher = (
            None if batch.teacher_scores is None else torch.tensor(batch.teacher_scores, dtype=torch.float32)
        )
        out = {"q_ids": q_ids, "q_mask": q_mask, "p_ids": p_ids, "p_mask": p_mask, "teacher_scores": teacher}
        return {k: None if v is None else v.to(self.device) for k, v in out.items()}

    def compute_loss(self, batch: TrainBatch) -> M3LossOutput:
        """Forward this process's part of a batch (through DDP when distributed)."""
        return self.engine(**self.collate(batch), step=self.step)

    def forward_backward(self, batch: TrainBatch) -> M3LossOutput:
        """The batch's loss, its gradients accumulated into the weights (`UnsupervisedTrainer`: by GradCache)."""
        out = self.compute_loss(batch)
        out.loss.backward()
        return out

    def training_step(self, batch: TrainBatch) -> dict[str, float]:
        """Forward, backward, clip, optimizer and scheduler step; return logged values (mean over ranks)."""
        out = self.forward_backward(batch)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm or float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        values = distributed.all_reduce_mean({"loss": out.loss.detach(), **out.parts}, self.device)
        values["grad_norm"] = float(grad_norm)  # of the averaged gradients: the same on every process
        values["lr"] = lr
        if self.state_cache is not None:
            values.update(self.state_cache.stats())
        return values

    # ---- the loop ----

    def train(self) -> Path:
        """Run to `total_steps`, logging, checkpointing and saving the final model; returns output_dir."""
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.resume_dir is not None:
                trim_log(self.output_dir / LOG_FILE, self.step)
        start, t0 = self.step, time.perf_counter()
        show = self.is_main and self.config.progress
        with Progress(show, "train", self.total_steps, done=self.step, status="loss -") as bar:
            while self.step < self.total_steps:
                epoch, index = divmod(self.step, self.steps_per_epoch)
                values = self.training_step(self.batches.batch(epoch, index))
                self.step += 1
                bar.advance(1, status=f"loss {values['loss']:.4f}")
                if self.step % self.config.logging_steps == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - t0
                    self._log(
                        {
                            "step": self.step,
                            "epoch": round(epoch + (index + 1) / self.steps_per_epoch, 4),
                            **values,
                            "steps_per_s": (self.step - start) / elapsed,
                        }
                    )
                if self.config.save_steps and self.step % self.config.save_steps == 0:
                    self.save_checkpoint()
        if self.is_main:
            self.save_model(self.output_dir, resumable=False)
            self.config.save(self.output_dir / CONFIG_FILE)
        distributed.barrier()
        return self.output_dir

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        if self._owns_group:
            distributed.cleanup()
            self._owns_group = False

    def _log(self, record: dict) -> None:
        if self.is_main:
            with open(self.output_dir / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    # ---- checkpoints ----

    def save_checkpoint(self) -> Path:
        """Write checkpoint-<step>: model (official layout), optimizer, scheduler, step, every rank's RNG.

        Everything goes to checkpoint-<step>.partial/, the manifest last; the directory is then renamed into
        place, so checkpoint-<step>/ appears only complete.
        """
        directory = self.output_dir / f"checkpoint-{self.step}"
        partial = directory.with_name(directory.name + ".partial")
        if self.is_main:
            shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving this step
            self.save_model(partial, resumable=True)
            torch.save(
                {
                    "step": self.step,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "world_size": self.world_size,
                    "config": self.config.to_dict(),
                },
                partial / STATE_FILE,
            )
        distributed.barrier()
        torch.save(rng_state(), partial / rng_file(self.rank))
        distributed.barrier()
        if self.is_main:
            files = sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*") if p.is_file())
            manifest = {"step": self.step, "world_size": self.world_size, "files": files}
            (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            if directory.exists():  # a checkpoint of this step from an earlier run
                shutil.rmtree(directory)
            partial.rename(directory)
            if self.config.save_total_limit:
                done = sorted(
                    (n, p) for p in self.output_dir.glob("checkpoint-*") if (n := checkpoint_step(p)) is not None
                )
                for _, old in done[: -self.config.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()
        return directory

    def save_model(self, directory: Path, resumable: bool) -> None:
        """Write the model: the final one (`resumable=False`) or a checkpoint's, which may need more to resume."""
        self.model.save_pretrained(directory)

    def load_state(self, directory: Path) -> None:
        """Restore step, optimizer, scheduler and RNG from a checkpoint (the weights came with the model)."""
        state = torch.load(directory / STATE_FILE, map_location=self.device, weights_only=False)
        if state["world_size"] != self.world_size:
            warnings.warn(
                f"{directory} was written by {state['world_size']} processes, resuming on "
                f"{self.world_size}: batches after step {state['step']} differ from the original run",
                stacklevel=2,
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        if self.rank < state["world_size"]:  # a process the checkpoint did not have starts from its seed
            path = directory / rng_file(self.rank)
            if not path.is_file():
                raise FileNotFoundError(f"{directory} is incomplete: {path.name} missing")
            set_rng_state(torch.load(path, weights_only=False))

def train(config: TrainConfig, model: nn.Module | None = None) -> Path:
    """Fine-tune per `config` (one process, or each torchrun process); returns the output directory."""
    owns_group = not distributed.is_initialized()  # torchrun: the group this call creates, it also ends
    try:
        return Trainer(config, model).train()
    finally:
        if owns_group:
            distributed.cleanup()
