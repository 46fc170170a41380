"""Training BGE-M3 models: RetroMAE `pretrain`, `extend_positions`, the unsupervised stage (`train_unsupervised`,
GradCache), fine-tuning (`train(TrainConfig(...))`), losses, data and hard-negative mining.

Names are imported on first use, so `from m3embed.train.config import TrainConfig` does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "m3embed.train.config",
    "PretrainConfig": "m3embed.train.config",
    "UnsupervisedTrainConfig": "m3embed.train.config",
    "GradCacheLoss": "m3embed.train.gradcache",
    "extend_positions": "m3embed.train.positions",
    "pretrain": "m3embed.train.retromae",
    "train_unsupervised": "m3embed.train.unsupervised",
    "M3LossOutput": "m3embed.train.losses",
    "M3TrainingLoss": "m3embed.train.losses",
    "m3_loss": "m3embed.train.losses",
    "mine_hard_negatives": "m3embed.train.mine",
    "Trainer": "m3embed.train.trainer",
    "train": "m3embed.train.trainer",
}

__all__ = [
    "GradCacheLoss",
    "M3LossOutput",
    "M3TrainingLoss",
    "PretrainConfig",
    "TrainConfig",
    "Trainer",
    "UnsupervisedTrainConfig",
    "extend_positions",
    "m3_loss",
    "mine_hard_negatives",
    "pretrain",
    "train",
    "train_unsupervised",
]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'm3embed.train' has no attribute {name!r}")
