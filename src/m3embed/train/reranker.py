"""Fine-tuning a cross-encoder reranker with FlagEmbedding's recipe, on the M3 trainer's machinery.

The data are the same jsonl lines as `m3embed train` ({query, pos, neg[, pos_scores, neg_scores]}); each query
brings a group of 1 positive + G-1 negatives, and each group's G logits go through a cross-entropy with the
positive as target (`reranker_loss`), plus a soft cross-entropy against the teacher scores
when they are used. Pairs are cut as FlagEmbedding's training set cuts them: query at q + p/4 tokens, passage at
p + q/2, the pair at q + p (only the passage is shortened). Batches, length grouping, sub-batches with gradient
checkpointing, bf16, checkpoints and resume, DDP and the log are `m3embed.train.trainer.Trainer`'s.

The saved model is a Hugging Face `*ForSequenceClassification` directory: it loads in `Reranker` and in
FlagEmbedding's `FlagReranker`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3embed.model import encoder_layers
from m3embed.train import distributed
from m3embed.train.config import RerankerTrainConfig
from m3embed.train.data import TrainBatch
from m3embed.train.losses import M3LossOutput, run_sub_batches, soft_cross_entropy
from m3embed.train.trainer import Trainer, train_top_layers


def reranker_loss(logits: Tensor, teacher_probs: Tensor | None = None) -> M3LossOutput:
    """FlagEmbedding's reranker loss on (B, G) group logits, positive at column 0.

    "ce": cross-entropy against column 0; with teacher_probs (B, G) (softmax of the teacher scores), plus
    "distill": the soft cross-entropy -mean_b Σ_j teacher[b, j] · log_softmax(logits)[b, j]. No temperature.
    """
    parts = {"ce": F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long))}
    if teacher_probs is not None:
        parts["distill"] = soft_cross_entropy(logits, teacher_probs)
    return M3LossOutput(sum(parts.values()), {k: v.detach() for k, v in parts.items()})


class RerankerTrainingLoss(nn.Module):
    """Holds a cross-encoder (`m3embed.rerank.Reranker`); `forward` scores a batch of B·G tokenised pairs,
    group-major with each positive first, and returns `reranker_loss` of it.

    Args:
        model: the reranker (called as model(input_ids, attention_mask, token_type_ids) -> (n,) logits).
        group_size: G, pairs per query.
        sub_batch_size: pairs per checkpointed chunk (`run_sub_batches`); None = the whole batch at once.
        bf16: run the model under bf16 autocast.
    """

    def __init__(self, model: nn.Module, group_size: int, sub_batch_size: int | None = None, bf16: bool = False
                 ) -> None:
        super().__init__()
        self.model = model
        self.group_size = group_size
        self.sub_batch_size = sub_batch_size
        self.bf16 = bf16

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                teacher_scores: Tensor | None = None) -> M3LossOutput:
        """input_ids, attention_mask, token_type_ids (B·G, T); teacher_scores raw (B, G) or None."""
        logits = self.logits(input_ids, attention_mask, token_type_ids).view(-1, self.group_size)  # (B, G)
        teacher = None if teacher_scores is None else torch.softmax(teacher_scores.float(), dim=-1).detach()
        return reranker_loss(logits, teacher)

    def logits(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """(n,) float32 logits, sub-batched and checkpointed when configured."""
        tensors = (input_ids, attention_mask) + (() if token_type_ids is None else (token_type_ids,))
        size = self.sub_batch_size
        if size is None or input_ids.shape[0] <= size:
            return self._chunk(*tensors)
        recompute = torch.is_grad_enabled() and any(p.requires_grad for p in self.model.parameters())
        chunks, inverse = run_sub_batches(self._chunk, tensors, size, recompute)
        return torch.cat(chunks)[inverse]

    def _chunk(self, ids: Tensor, mask: Tensor, types: Tensor | None = None) -> Tensor:
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(ids, mask, types).float()


def configure_reranker_trainable(model: nn.Module, train_layers: int | None, gradient_checkpointing: bool
                                 ) -> list[str]:
    """Train the top `train_layers` encoder layers and everything above them (pooler, classifier); None: all.

    Returns the trained parts ("embeddings", "layer.N", "head").
    """
    base = model.model.base_model  # BertModel / XLMRobertaModel inside the classification model
    model.requires_grad_(True)
    if train_layers is None:
        trained = ["embeddings"] + [f"layer.{i}" for i in range(len(encoder_layers(base)))]
    else:
        trained = train_top_layers(base, train_layers)
    if gradient_checkpointing:
        model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return [*trained, "head"]


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
