"""Fine-tuning BGE-M3 models: `train(TrainConfig(...))`, losses, data and hard-negative mining.

Names are imported on first use, so `from m3embed.train.config import TrainConfig` does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "m3embed.train.config",
    "M3LossOutput": "m3embed.train.losses",
    "M3TrainingLoss": "m3embed.train.losses",
    "m3_loss": "m3embed.train.losses",
    "mine_hard_negatives": "m3embed.train.mine",
    "Trainer": "m3embed.train.trainer",
    "train": "m3embed.train.trainer",
}

__all__ = [
    "M3LossOutput",
    "M3TrainingLoss",
    "TrainConfig",
    "Trainer",
    "m3_loss",
    "mine_hard_negatives",
    "train",
]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'm3embed.train' has no attribute {name!r}")
