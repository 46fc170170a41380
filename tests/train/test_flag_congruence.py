"""Our unified loss against FlagEmbedding 1.4.2's own M3 training model, on the same weights and batch."""

from __future__ import annotations

import pytest
import torch

from m3embed.model import M3Model
from m3embed.tokenize import pad, tokenize
from m3embed.train.config import LossConfig
from m3embed.train.losses import M3TrainingLoss, colbert_score_matrix, dense_scores, m3_loss, sparse_scores

pytest.importorskip("FlagEmbedding")

QUERIES = ["the blue house", "a long letter before noon"]
PASSAGES = [  # group-major, G = 3, positive first
    "My neighbour paints the blue house every Sunday.",
    "The river carries a map.",
    "Our team reads.",
    "A young doctor reads a long letter before noon.",
    "The cat watches the evening news in the rain.",
    "A small robot builds the train station near the harbour with great care.",
]


@pytest.fixture(scope="module")
def setup(nodrop_ckpt):
    from FlagEmbedding.finetune.embedder.encoder_only.m3.modeling import EncoderOnlyEmbedderM3Model

    model = M3Model.from_pretrained(nodrop_ckpt, device="cpu")
    tok = model.tokenizer

    def flag_model(kd_loss_type: str) -> torch.nn.Module:
        flag = EncoderOnlyEmbedderM3Model(
            {
                "model": model.backbone,
                "colbert_linear": model.colbert_linear,
                "sparse_linear": model.sparse_linear,
            },
            tokenizer=tok,
            temperature=0.02,
            kd_loss_type=kd_loss_type,
            sentence_pooling_method="cls",
            normalize_embeddings=True,
            unified_finetuning=True,
            use_self_distill=True,
            self_distill_start_step=-1,
        )
        return flag.train()  # training mode computes the loss; dropout is off in this checkpoint

    q_ids, q_mask = pad(tokenize(tok, QUERIES, 64), tok.pad_token_id)
    p_ids, p_mask = pad(tokenize(tok, PASSAGES, 64), tok.pad_token_id)
    batch = ({"input_ids": q_ids, "attention_mask": q_mask}, {"input_ids": p_ids, "attention_mask": p_mask})
    return model, flag_model, batch


def ours(model, batch, teacher=None, kd_loss="m3_kd_loss"):
    (q_in, p_in) = batch
    loss_fn = M3TrainingLoss(model.train(), LossConfig(train_group_size=3, temperature=0.02))
    q = loss_fn.encode(q_in["input_ids"], q_in["attention_mask"])
    p = loss_fn.encode(p_in["input_ids"], p_in["attention_mask"])
    scores = {
        "dense": dense_scores(q["dense"], p["dense"]),
        "sparse": sparse_scores(
            model.sparse_embedding(q_in["input_ids"], q["token_weights"]),
            model.sparse_embedding(p_in["input_ids"], p["token_weights"]),
        ),
        # FlagEmbedding keeps zero pad rows in the max: compare without the passage mask
        "colbert": colbert_score_matrix(q["colbert"], p["colbert"], q_in["attention_mask"][:, 1:]),
    }
    probs = None if teacher is None else torch.softmax(torch.tensor(teacher), -1)
    return m3_loss(scores, 3, 0.02, teacher_probs=probs, self_distill=True, kd_loss=kd_loss).loss


def test_unified_self_distill_loss_equals_flagembedding(setup):
    model, flag_model, batch = setup
    ref = flag_model("m3_kd_loss")(*batch).loss
    assert ours(model, batch).item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("kd_loss", ["m3_kd_loss", "kl_div"])
def test_teacher_score_loss_equals_flagembedding(setup, kd_loss):
    model, flag_model, batch = setup
    teacher = [[0.9, 0.2, 0.1], [0.8, 0.5, 0.3]]
    ref = flag_model(kd_loss)(*batch, teacher_scores=[s for row in teacher for s in row]).loss
    assert ours(model, batch, teacher, kd_loss).item() == pytest.approx(ref.item(), rel=1e-5)
