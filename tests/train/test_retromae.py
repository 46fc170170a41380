"""RetroMAE: masks as specified, the loss falls on held-out text, the output is a backbone that loads and trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from m3embed.cli import app
from m3embed.model import M3Model
from m3embed.train.config import PretrainConfig
from m3embed.train.retromae import DECODER_FILE, PretrainTrainer, decoder_attention_mask, mask_tokens
from m3testkit.checkpoints import sample_texts


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\n".join(sample_texts(140, seed=1)[11:]) + "\n", encoding="utf-8")
    return path


def config(ckpt: Path, data: Path, out: Path, **kw) -> PretrainConfig:
    base = {"model": str(ckpt), "train_data": [str(data)], "output_dir": str(out), "per_device_batch_size": 8,
            "max_length": 48, "learning_rate": 2e-3, "warmup_steps": 2, "progress": False, "device": "cpu"}
    return PretrainConfig(**{**base, **kw})


def test_masks_follow_the_ratios():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (64, 40), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -1] = False
    masked, labels = mask_tokens(ids, maskable, 0.3, mask_id=3, vocab_size=100, generator=g)
    chosen = labels != -100
    assert not chosen[~maskable].any() and torch.equal(labels[chosen], ids[chosen])
    assert abs(chosen[maskable].float().mean().item() - 0.3) < 0.03
    assert abs((masked[chosen] == 3).float().mean().item() - 0.8) < 0.05
    assert torch.equal(masked[~chosen], ids[~chosen])
    real = torch.ones(64, 40, dtype=torch.bool)
    real[:8, 30:] = False
    seen = decoder_attention_mask(real, 0.6, generator=g)
    assert seen[:, :, 0].all() and not seen[:, 1:, 1:].diagonal(dim1=1, dim2=2).any()
    assert not seen[:8, :, 30:].any()
    assert abs(seen[8:, 1:, 1:].float().mean().item() - 0.4 * 38 / 39) < 0.02


def token_mask_before_whole_words(ids, maskable, ratio, mask_id, vocab_size, generator):
    """`mask_tokens` as it was before `words`: the draws its words=None path must keep."""
    rand = torch.rand(ids.shape, generator=generator)
    chosen = (rand < ratio) & maskable
    none = ~chosen.any(1) & maskable.any(1)
    chosen[none, torch.where(maskable, rand, 2.0)[none].argmin(1)] = True
    labels = torch.where(chosen, ids, -100)
    how = torch.rand(ids.shape, generator=generator)
    masked = torch.where(chosen & (how < 0.8), mask_id, ids)
    noise = torch.randint(vocab_size, ids.shape, generator=generator)
    return torch.where(chosen & (how >= 0.9), noise, masked), labels


@pytest.mark.parametrize("ratio", [0.05, 0.3])
def test_token_masking_draws_as_before_without_words(ratio):
    ids = torch.randint(5, 100, (16, 24), generator=torch.Generator().manual_seed(1))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = maskable[:8, 4:] = False  # short rows: the at-least-one rule picks their token
    got = mask_tokens(ids, maskable, ratio, 3, 100, generator=torch.Generator().manual_seed(7))
    ref = token_mask_before_whole_words(ids, maskable, ratio, 3, 100, torch.Generator().manual_seed(7))
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def assert_whole_words(labels: torch.Tensor, words: torch.Tensor) -> int:
    """Every word of every row is chosen in all its pieces or in none; returns how many words were chosen."""
    chosen_words = 0
    for row_labels, row_words in zip(labels, words):
        for w in row_words[row_words >= 0].unique():
            chosen = row_labels[row_words == w] != -100
            assert chosen.all() or not chosen.any(), (w, chosen)
            chosen_words += int(chosen.all())
    return chosen_words


def test_whole_word_masking_chooses_the_ratio_of_words_with_all_their_pieces():
    g = torch.Generator().manual_seed(0)
    words = torch.arange(60)[None].repeat(64, 1) // 3  # 20 words of 3 pieces each
    words[:, 0] = words[:, -1] = -1  # special tokens
    words[:8, 40:] = -1  # padding
    ids = torch.randint(5, 100, words.shape, generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)  # -1 is never masked, whatever maskable says
    masked, labels = mask_tokens(ids, maskable, 0.3, mask_id=3, vocab_size=100, generator=g, words=words)
    assert not (labels[words < 0] != -100).any() and torch.equal(masked[words < 0], ids[words < 0])
    n_words = sum(len(r[r >= 0].unique()) for r in words)
    assert abs(assert_whole_words(labels, words) / n_words - 0.3) < 0.03
    few = mask_tokens(ids, maskable, 0.01, 3, 100, generator=g, words=words)[1]
    assert assert_whole_words(few, words) >= len(words)  # at least one whole word per row


def test_pretrain_collate_masks_whole_words_of_the_tokenizer(xlmr_ckpt, text_file, tmp_path):
    from m3embed.tokenize import pad, tokenize_words

    trainer = PretrainTrainer(config(xlmr_ckpt, text_file, tmp_path / "out", whole_word_mask=True))
    texts = trainer.batches.batch(0, 0)
    words = pad(tokenize_words(trainer.model.tokenizer, texts, 48)[1], -1)[0]
    pieces = torch.stack([(words == w).sum(1) for w in range(int(words.max()) + 1)], 1)  # (B, words)
    assert (pieces > 1).sum() > 10  # the tokenizer splits many words into several pieces
    labels = trainer.collate(texts)["encoder_labels"]
    assert assert_whole_words(labels, words) > len(texts)
    assert labels.shape == words.shape and not (labels[words < 0] != -100).any()


def held_out_loss(trainer: PretrainTrainer, texts: list[str]) -> float:
    """The loss on fixed masks with dropout off."""
    trainer.model.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(123)
        loss = trainer.compute_loss(texts).loss.item()
    trainer.model.train()
    return loss


def test_loss_falls_on_held_out_text_and_the_output_loads(xlmr_ckpt, text_file, tmp_path):
    held_out = sample_texts(60, seed=2)[11:35]  # the same kind of text, other sentences
    trainer = PretrainTrainer(config(xlmr_ckpt, text_file, tmp_path / "out", max_steps=40, save_steps=20))
    before = held_out_loss(trainer, held_out)
    out = trainer.train()
    after = held_out_loss(trainer, held_out)
    assert after < before - 1.5, (before, after)  # measured: 14.3 -> 12.3 nats (encoder + decoder)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"encoder_mlm", "decoder"} <= log[-1].keys()
    assert not (out / DECODER_FILE).exists() and (out / "checkpoint-40" / DECODER_FILE).is_file()
    model = M3Model.from_pretrained(out)  # the source's heads came along: every mode loads
    assert model.max_length == 128 and model.pooling == "cls"
    trained = trainer.model.backbone.state_dict()
    for name, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, trained[name], msg=name)


def test_resume_restores_the_decoder(xlmr_ckpt, text_file, tmp_path):
    a = PretrainTrainer(config(xlmr_ckpt, text_file, tmp_path / "a", max_steps=4, save_steps=2))
    a.train()
    b = PretrainTrainer(config(xlmr_ckpt, text_file, tmp_path / "a", max_steps=4, resume_from="auto"))
    assert b.step == 4
    for name, value in a.model.decoder.state_dict().items():
        torch.testing.assert_close(b.model.decoder.state_dict()[name], value)


def test_cli_pretrains_then_train_takes_the_output(xlmr_ckpt, text_file, tmp_path, train_file):
    runner = CliRunner()
    out = tmp_path / "pre"
    result = runner.invoke(app, ["pretrain", str(text_file), "-m", str(xlmr_ckpt), "-o", str(out), "--max-steps", "2",
                                 "--batch-size", "4", "--max-length", "32", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", str(train_file), "-m", str(out), "-o", str(tmp_path / "ft"), "--max-steps",
                                 "1", "--batch-size", "2", "--train-group-size", "2", "--device", "cpu",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output


def test_cli_pretrains_with_whole_word_masking_and_the_flag_round_trips(xlmr_ckpt, text_file, tmp_path):
    out = tmp_path / "pre"
    result = CliRunner().invoke(app, ["pretrain", str(text_file), "-m", str(xlmr_ckpt), "-o", str(out), "--max-steps",
                                      "1", "--batch-size", "4", "--max-length", "32", "--whole-word-mask",
                                      "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["step"] == 1
    saved = PretrainConfig.load(out / "train_config.json")
    assert saved.whole_word_mask and not PretrainConfig().whole_word_mask
    saved.save(tmp_path / "again.json")
    assert PretrainConfig.load(tmp_path / "again.json") == saved


def test_bert_backbone_pretrains(tmp_path, text_file):
    """BERT's MLM head is `cls` (XLM-R's `lm_head`), its positions have no padding offset."""
    from m3testkit.checkpoints import TINY_XLMR_SHAPE, write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path / "bert", arch="bert", random_backbone=True, seed=0, **TINY_XLMR_SHAPE)
    trainer = PretrainTrainer(config(ckpt, text_file, tmp_path / "out", max_steps=2))
    assert trainer.model.position_offset == 0
    M3Model.from_pretrained(trainer.train())


@pytest.mark.parametrize(("pooling", "bottleneck", "read"), [("cls", "pooling", "cls"), ("mean", "pooling", "mean"),
                                                           ("mean", "cls", "cls")])
def test_the_decoder_reads_the_embedding_dense_retrieval_uses(xlmr_ckpt, text_file, tmp_path, pooling, bottleneck,
                                                             read):
    """By default the bottleneck is the checkpoint's own pooling (m3embed.json): [CLS] for BGE-M3, the mean for e5 /
    MiniLM; bottleneck="cls" is RetroMAE's [CLS] whatever the pooling. The output keeps the checkpoint's pooling."""
    import shutil

    from m3embed.checkpoint import M3Config
    from m3embed.model import pool

    ckpt = shutil.copytree(xlmr_ckpt, tmp_path / "ckpt")
    M3Config(pooling=pooling).save(ckpt)
    trainer = PretrainTrainer(config(ckpt, text_file, tmp_path / "out", max_steps=1, bottleneck=bottleneck))
    model = trainer.model.eval()
    seen = []
    model.decoder.register_forward_hook(lambda module, args, out: seen.append(args[1][:, 0]))  # h2[:, 0]
    x = trainer.collate(sample_texts(20, seed=3)[11:])
    with torch.no_grad():
        trainer.loss_fn(**x)
        h = model.backbone(input_ids=x["encoder_ids"], attention_mask=x["attention_mask"]).last_hidden_state
    torch.testing.assert_close(seen[0], pool(h, x["attention_mask"].float(), read))
    assert M3Model.from_pretrained(trainer.train()).pooling == pooling
