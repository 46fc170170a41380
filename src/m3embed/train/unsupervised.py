"""The unsupervised contrastive stage: weakly paired texts, in-batch negatives only, large batches by GradCache.

Rows are the fine-tuning jsonl's with a positive and no negatives ({"query", "pos"}: title–body,
question–answer, translation pairs); `query_field` / `pos_field` name other keys ({"title", "body"}), and the
positive may be one string. Each step a batch of B pairs (one length range per batch: the trainer's
length grouping, seeded, so every process agrees on the order) gives each query the B positives as candidates
(and, under torchrun, every process's: cross-device negatives through `distributed.all_gather_with_grad`).
The loss is M3's InfoNCE of the trained modes (dense only by default, as the paper's stage), computed by
gradient caching (`m3embed.train.gradcache`), so the batch size is bounded by time rather than memory.
Data, optimiser, schedule, checkpoints, resume, DDP and the log are `m3embed.train.trainer.Trainer`'s.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch import nn

from m3embed.train import distributed
from m3embed.train.config import LossConfig, UnsupervisedTrainConfig
from m3embed.train.data import TrainBatch, load_examples, parse_pair
from m3embed.train.gradcache import GradCacheLoss
from m3embed.train.losses import M3LossOutput, M3TrainingLoss
from m3embed.train.trainer import Trainer


class UnsupervisedTrainer(Trainer):
    """`Trainer` for the unsupervised stage: M3's loss on in-batch negatives, run by GradCache.

    Args:
        config: the run's settings.
        model: an already loaded M3Model (default: loaded from config.model, or from the resumed checkpoint).
        examples: training pairs (default: read from config.train_data).
    """

    config: UnsupervisedTrainConfig

    def __init__(self, config: UnsupervisedTrainConfig, model: nn.Module | None = None,
                 examples: list | None = None) -> None:
        super().__init__(config, model, examples)

    def _setup_data(self, examples: list | None) -> None:
        """Read the pairs by `parse_pair` under the configured fields (unless given), then as `Trainer` does."""
        if examples is None:
            c = self.config
            examples = load_examples(c.train_data, partial(parse_pair, query_field=c.query_field,
                                                           pos_field=c.pos_field))
        super()._setup_data(examples)

    def make_loss(self) -> nn.Module:
        """GradCacheLoss over M3TrainingLoss; the plain loss when grad_cache_chunk_size is None."""
        loss = M3TrainingLoss(self.model, LossConfig.from_train_config(self.config))
        chunk = self.config.grad_cache_chunk_size
        return loss if chunk is None else GradCacheLoss(loss, chunk)

    def forward_backward(self, batch: TrainBatch) -> M3LossOutput:
        if not isinstance(self.loss_fn, GradCacheLoss):
            return super().forward_backward(batch)
        x = self.collate(batch)
        x.pop("teacher_scores")
        return self.loss_fn.forward_backward(**x, step=self.step, engine=self.engine)


def train_unsupervised(config: UnsupervisedTrainConfig, model: nn.Module | None = None) -> Path:
    """Run the unsupervised stage per `config` (one process, or each torchrun process); returns output_dir."""
    owns_group = not distributed.is_initialized()
    try:
        return UnsupervisedTrainer(config, model).train()
    finally:
        if owns_group:
            distributed.cleanup()
