"""Fine-tuning a cross-encoder reranker with FlagEmbedding's recipe, on the M3 trainer's machinery.

The data are the same jsonl lines as `m3embed train` ({query, pos, neg[, pos_scores, neg_scores]}); each query
brings a group of 1 positive + G-1 negatives, and each group's G logits go through a cross-entropy with the
positive as target (`m3embed.train.losses.reranker_loss`), plus a soft cross-entropy against the teacher scores
when they are used. Pairs are cut as FlagEmbedding's training set cuts them: query at q + p/4 tokens, passage at
p + q/2, the pair at q + p (only the passage is shortened). Batches, length grouping, sub-batches with gradient
checkpointing, bf16, checkpoints and resume, DDP and the log are `m3embed.train.trainer.Trainer`'s.

The saved model is a Hugging Face `*ForSequenceClassification` directory: it loads in `Reranker` and in
FlagEmbedding's `FlagReranker`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from m3embed.train import distributed
from m3embed.train.config import RerankerTrainConfig
from m3embed.train.data import TrainBatch
from m3embed.train.losses import M3LossOutput, RerankerTrainingLoss
from m3embed.train.trainer import Trainer


def configure_reranker_trainable(model: nn.Module, train_layers: int | None, gradient_checkpointing: bool
                                 ) -> list[str]:
    """Train the top `train_layers` encoder layers and everything above them (pooler, classifier); None: all.

    Returns the trained parts ("embeddings", "layer.N", "head").
    """
    base = model.model.base_model  # BertModel / XLMRobertaModel inside the classification model
    layers = base.encoder.layer
    if train_layers is not None and train_layers > len(layers):
        raise ValueError(f"train_layers={train_layers} but the encoder has {len(layers)} layers; pass at most "
                         f"{len(layers)} (or None for the whole model)")
    model.requires_grad_(True)
    frozen = len(layers) - train_layers if train_layers is not None else 0
    if train_layers is not None:
        base.embeddings.requires_grad_(False)
        for layer in layers[:frozen]:
            layer.requires_grad_(False)
    if gradient_checkpointing:
        model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return (["embeddings"] if train_layers is None else []) + [f"layer.{i}" for i in range(frozen, len(layers))] + [
        "head"]


class RerankerTrainer(Trainer):
    """`Trainer` for a cross-encoder: a `Reranker`, its top layers trainable, `RerankerTrainingLoss`.

    Args:
        config: the run's settings.
        model: an already loaded `Reranker` (default: loaded from config.model, a plain encoder getting a new
            classification head, or from the resumed checkpoint).
        examples: training examples (default: read from config.train_data).
    """

    config: RerankerTrainConfig

    def __init__(self, config: RerankerTrainConfig, model: nn.Module | None = None,
                 examples: list | None = None) -> None:
        super().__init__(config, model, examples)  # type: ignore[arg-type]

    def load_model(self, path: str) -> nn.Module:
        from m3embed.rerank import Reranker

        return Reranker.from_pretrained(path, device=self.device, new_head=True)

    def configure_trainable(self, model: nn.Module) -> list[str]:
        return configure_reranker_trainable(model, self.config.train_layers, self.config.gradient_checkpointing)

    def make_loss(self) -> nn.Module:
        config = self.config
        return RerankerTrainingLoss(self.model, config.train_group_size, config.sub_batch_size, config.bf16)

    def collate(self, batch: TrainBatch) -> dict[str, torch.Tensor | None]:
        """Tokenise the batch's B·G (query, passage) pairs, group-major, into padded tensors on the device."""
        from m3embed.tokenize import pad, tokenize_pairs

        q, p, tok = self.query_max_length, self.passage_max_length, self.model.tokenizer
        group = len(batch.passages) // len(batch.queries)
        pairs = [(batch.queries[i // group], passage) for i, passage in enumerate(batch.passages)]
        ids, types = tokenize_pairs(tok, pairs, q + p, q + p // 4, p + q // 2)
        input_ids, mask = pad(ids, tok.pad_token_id)
        teacher = None if batch.teacher_scores is None else torch.tensor(batch.teacher_scores, dtype=torch.float32)
        out = {"input_ids": input_ids, "attention_mask": mask,
               "token_type_ids": None if types is None else pad(types, 0)[0], "teacher_scores": teacher}
        return {k: None if v is None else v.to(self.device) for k, v in out.items()}

    def compute_loss(self, batch: TrainBatch) -> M3LossOutput:
        return self.engine(**self.collate(batch))


def train_reranker(config: RerankerTrainConfig, model: nn.Module | None = None) -> Path:
    """Fine-tune a cross-encoder per `config` (one process, or each torchrun process); returns output_dir."""
    owns_group = not distributed.is_initialized()
    try:
        return RerankerTrainer(config, model).train()
    finally:
        if owns_group:
            distributed.cleanup()
