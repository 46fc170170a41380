"""Reranker fine-tuning: the loss (by hand and against FlagEmbedding), pair cutting, trained layers, resume,
and a checkpoint FlagReranker loads."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from m3embed.cli import app
from m3embed.rerank import Reranker
from m3embed.tokenize import pad, tokenize_pairs
from m3embed.train.config import RerankerTrainConfig
from m3embed.train.reranker import RerankerTrainer, RerankerTrainingLoss, reranker_loss
from m3embed.train.trainer import LOG_FILE
from m3testkit.checkpoints import sample_texts

G = 3  # pairs per query in these tests


def config(ckpt: Path, data: Path, out: Path, **kw) -> RerankerTrainConfig:
    base = {"model": str(ckpt), "train_data": [str(data)], "output_dir": str(out), "train_group_size": G,
            "per_device_batch_size": 2, "query_max_length": 16, "passage_max_length": 48, "learning_rate": 1e-3,
            "progress": False, "device": "cpu"}
    return RerankerTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def nodrop_reranker(xlmr_reranker: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`xlmr_reranker` with dropout off, so that a forward pass is deterministic in train mode."""
    out = Path(shutil.copytree(xlmr_reranker, tmp_path_factory.mktemp("nodrop_rr") / "ckpt"))
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def test_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    ce = [-(2.0 - math.log(math.exp(2) + math.exp(1) + 1)), -(0.5 - math.log(2 * math.exp(0.5) + math.exp(3)))]
    out = reranker_loss(logits)
    assert out.loss.item() == pytest.approx(sum(ce) / 2, abs=1e-6) and set(out.parts) == {"ce"}
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    log_p = torch.log_softmax(logits, -1)
    soft = -(teacher * log_p).sum(-1).mean().item()
    out = reranker_loss(logits, teacher)
    assert out.loss.item() == pytest.approx(sum(ce) / 2 + soft, abs=1e-6)
    assert out.parts["distill"].item() == pytest.approx(soft, abs=1e-6)


def test_loss_and_pairs_equal_flagembedding(nodrop_reranker: Path) -> None:
    """FlagEmbedding's CrossEncoderModel (training mode) and its dataset's pair cutting, on the same batch."""
    pytest.importorskip("FlagEmbedding")
    from FlagEmbedding.abc.finetune.reranker.AbsDataset import AbsRerankerTrainDataset
    from FlagEmbedding.finetune.reranker.encoder_only.base.modeling import CrossEncoderModel

    texts = sample_texts(40)[11:]
    queries = [texts[0], " ".join(texts[1:4])]  # a long query: its cut matters
    passages = [" ".join(texts[i : i + 1 + i % 4]) for i in range(4, 4 + 2 * G)]
    pairs = [(queries[i // G], p) for i, p in enumerate(passages)]
    q, p = 16, 48
    ours_ids, _ = tokenize_pairs(Reranker.from_pretrained(nodrop_reranker).tokenizer, pairs, q + p, q + p // 4,
                                 p + q // 2)
    ours = Reranker.from_pretrained(nodrop_reranker, device="cpu")
    dataset = SimpleNamespace(tokenizer=ours.tokenizer, args=SimpleNamespace(query_max_len=q, passage_max_len=p))
    ref_ids = [AbsRerankerTrainDataset.create_one_example(dataset, a, b)["input_ids"] for a, b in pairs]
    assert ours_ids == ref_ids and max(map(len, ours_ids)) == q + p

    ids, mask = pad(ours_ids, ours.tokenizer.pad_token_id)
    teacher = [[0.9, 0.3, 0.1], [0.2, 0.8, 0.4]]
    ours.train()
    mine = RerankerTrainingLoss(ours, G)(ids, mask, teacher_scores=torch.tensor(teacher))
    flag = CrossEncoderModel(ours.model, ours.tokenizer, train_batch_size=2).train()
    ref = flag(pair={"input_ids": ids, "attention_mask": mask}, teacher_scores=sum(teacher, []))
    assert mine.loss.item() == pytest.approx(ref.loss.item(), abs=1e-6)
    mine = RerankerTrainingLoss(ours, G)(ids, mask)
    ref = flag(pair={"input_ids": ids, "attention_mask": mask})
    assert mine.loss.item() == pytest.approx(ref.loss.item(), abs=1e-6)


def test_sub_batches_give_the_full_batch_gradient(nodrop_reranker: Path, train_file: Path, tmp_path: Path) -> None:
    def grads(**kw) -> tuple[float, dict[str, torch.Tensor]]:
        trainer = RerankerTrainer(config(nodrop_reranker, train_file, tmp_path, **kw))
        out = trainer.compute_loss(trainer.batches.batch(0, 0))
        out.loss.backward()
        return out.loss.item(), {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}

    loss, full = grads()
    for kw in ({"sub_batch_size": 2}, {"sub_batch_size": 4, "gradient_checkpointing": True}):
        loss2, chunked = grads(**kw)
        assert loss2 == pytest.approx(loss, abs=1e-6) and chunked.keys() == full.keys()
        for name, g in full.items():
            torch.testing.assert_close(chunked[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_train_layers_train_only_the_top(xlmr_reranker: Path, train_file: Path, tmp_path: Path) -> None:
    before = Reranker.from_pretrained(xlmr_reranker).state_dict()
    trainer = RerankerTrainer(config(xlmr_reranker, train_file, tmp_path, train_layers=1, max_steps=2))
    assert trainer.trained_parts == ["layer.1", "head"]
    after = Reranker.from_pretrained(trainer.train()).state_dict()
    changed = {n for n, v in after.items() if not torch.equal(v, before[n])}
    assert changed and all(".layer.1." in n or "classifier" in n for n in changed)
    assert any("classifier" in n for n in changed) and any(".layer.1." in n for n in changed)
    with pytest.raises(ValueError, match="train_layers=5 but the encoder has 2 layers"):
        RerankerTrainer(config(xlmr_reranker, train_file, tmp_path / "x", train_layers=5))


def test_resume_continues_to_the_same_state(xlmr_reranker: Path, train_file: Path, tmp_path: Path) -> None:
    # dropout is on: equal results also need the restored RNG state
    full = RerankerTrainer(config(xlmr_reranker, train_file, tmp_path / "full", max_steps=4, save_steps=2,
                                  save_total_limit=0, sub_batch_size=4, train_layers=1))
    full.train()
    (tmp_path / "cut").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    resumed = RerankerTrainer(config(xlmr_reranker, train_file, tmp_path / "cut", max_steps=4, resume_from="auto",
                                     sub_batch_size=4, train_layers=1))
    assert resumed.step == 2
    resumed.train()
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    logs = [[json.loads(x) for x in (tmp_path / d / LOG_FILE).read_text().splitlines()] for d in ("full", "cut")]
    assert [r["step"] for r in logs[1]] == [3, 4]
    assert [r["loss"] for r in logs[0][2:]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-6)


def test_plain_encoder_gets_a_head_and_the_cli_model_loads_in_flag_reranker(xlmr_ckpt: Path, scored_file: Path,
                                                                           tmp_path: Path) -> None:
    FlagEmbedding = pytest.importorskip("FlagEmbedding")
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["train-reranker", str(scored_file), "-m", str(xlmr_ckpt), "-o", str(out),
                                 "--train-group-size", "3", "--batch-size", "2", "--query-max-length", "16",
                                 "--passage-max-length", "48", "--max-steps", "2", "--bf16", "--no-progress",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "trained 2 steps (loss" in r.output and "distill" in r.output  # teacher scores used (auto)
    pairs = [("the blue house", "Der Hund liest einen langen Brief."), ("猫", "a quiet garden"), ("x", "")]
    ours = Reranker.from_pretrained(out).compute_score(pairs, max_length=64)
    ref = FlagEmbedding.FlagReranker(str(out), use_fp16=False, devices="cpu").compute_score(pairs, max_length=64)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    assert json.loads((out / "train_config.json").read_text())["train_group_size"] == 3


def test_lengths_must_fit_a_pair() -> None:
    assert RerankerTrainConfig().max_lengths(512) == (32, 128)
    assert RerankerTrainConfig().max_lengths(128) == (32, 96)  # the default passage share shrinks to fit
    with pytest.raises(ValueError, match="16 \\+ 120 exceeds the model's position limit of 128"):
        RerankerTrainConfig(query_max_length=16, passage_max_length=120).max_lengths(128)
    with pytest.raises(ValueError, match="train_layers=-1"):
        RerankerTrainConfig(train_layers=-1)
