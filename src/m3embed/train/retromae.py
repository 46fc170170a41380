"""RetroMAE pre-training (Xiao et al. 2022, arXiv 2205.12035): a backbone whose sentence embedding holds the text.

Each text is read twice:

* the encoder reads it with `encoder_mask_ratio` (≈ 0.3) of its tokens masked (80 % [MASK], 10 % random, 10 %
  kept; with `whole_word_mask`, that share of its words, every piece of a chosen word masked) and learns by MLM;
  its sentence embedding h is the checkpoint's dense pooling of its last states (by default: [CLS] for BGE-M3 as
  in RetroMAE, the mean for minilm-m3 / e5-m3-small, so the vector dense retrieval uses is the one trained to
  hold the text; `bottleneck="cls"` takes [CLS] always);
* a one-layer decoder, built from the backbone's config, rebuilds every token from h under enhanced decoding:
  the query stream H1 = h + position embeddings, the content stream H2 = [h; token + position embeddings of the
  unmasked text], and a position-specific attention mask in which row i sees h and a random
  (1 − `decoder_mask_ratio`) share of the other positions, never i itself. Its predictions go through the
  encoder's MLM head.

Loss = encoder MLM cross-entropy + decoder reconstruction cross-entropy (every real token after [CLS]).
Batches (length-grouped), bf16, gradient checkpointing, DDP, checkpoints, resume and the log are
`m3embed.train.trainer.Trainer`'s. The final output is a plain backbone in the BGE-M3 layout (heads and
m3embed.json of the source copied when it had them): `m3embed train` and `M3Model.from_pretrained` take it as
is. Checkpoints also hold the MLM head and the decoder (DECODER_FILE), which resuming needs.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3embed import checkpoint
from m3embed.model import pool
from m3embed.train import distributed
from m3embed.train.config import PretrainConfig
from m3embed.train.data import epoch_batches
from m3embed.train.losses import M3LossOutput
from m3embed.train.trainer import Trainer

DECODER_FILE = "retromae_heads.pt"  # checkpoint-N/ only: the MLM head and the decoder, to resume


# ---- masking (pure, on the global torch RNG unless a generator is given) ----


def mask_tokens(ids: Tensor, maskable: Tensor, ratio: float, mask_id: int, vocab_size: int,
                generator: torch.Generator | None = None, words: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """BERT masking: (masked ids, labels) of (B, T) ids; `maskable` (B, T) marks real non-special tokens.

    `ratio` of the maskable tokens are chosen (at least one per row that has any); 80 % of them become
    `mask_id`, 10 % a random token, 10 % stay. Labels hold the chosen tokens' ids, -100 elsewhere.
    With `words` (B, T), each token's word index in its row (-1: never masked), whole words are chosen: `ratio`
    of the words, all their pieces together; the 80/10/10 replacement stays per token (as BERT's whole-word
    masking).
    """
    if words is None:
        rand = torch.rand(ids.shape, generator=generator, device=ids.device)
    else:  # one draw per word, shared by its pieces
        maskable = maskable & (words >= 0)
        rand = torch.rand((ids.shape[0], max(int(words.max()), 0) + 1), generator=generator, device=ids.device)
        rand = rand.gather(1, words.clamp(min=0))
    chosen = (rand < ratio) & maskable
    none = ~chosen.any(1) & maskable.any(1)  # a short text still gets one masked token
    pick = torch.where(maskable, rand, 2.0)[none].argmin(1)
    if words is None:
        chosen[none, pick] = True
    else:  # every piece of that word
        w = words[none]
        chosen[none] = maskable[none] & (w == w.gather(1, pick[:, None]))
    labels = torch.where(chosen, ids, -100)
    how = torch.rand(ids.shape, generator=generator, device=ids.device)
    masked = torch.where(chosen & (how < 0.8), mask_id, ids)
    noise = torch.randint(vocab_size, ids.shape, generator=generator, device=ids.device)
    return torch.where(chosen & (how >= 0.9), noise, masked), labels


def decoder_attention_mask(real: Tensor, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, T) real-token mask -> (B, T, T) bool: row i sees column 0 (the sentence embedding) and each other real
    position with probability 1 − `ratio`, never itself (row 0, unlabelled, sees only column 0)."""
    b, t = real.shape
    keep = torch.rand((b, t, t), generator=generator, device=real.device) >= ratio  # (B, T, T)
    keep &= real[:, None, :].bool()
    keep &= ~torch.eye(t, dtype=torch.bool, device=real.device)
    keep[:, :, 0] = True
    return keep


# ---- the model ----


class EnhancedDecoder(nn.Module):
    """One post-LN transformer layer whose queries come from H1 and keys/values from H2 (the backbone's sizes)."""

    def __init__(self, config) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        h = config.hidden_size
        self.n_heads = config.num_attention_heads
        self.query, self.key, self.value, self.out = (nn.Linear(h, h) for _ in range(4))
        self.norm1 = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.ffn_in, self.ffn_out = nn.Linear(h, config.intermediate_size), nn.Linear(config.intermediate_size, h)
        self.act = ACT2FN[config.hidden_act]
        self.norm2 = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)  # on the attention probabilities
        for module in self.modules():  # the backbone's initialisation
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=config.initializer_range)
                nn.init.zeros_(module.bias)

    def forward(self, h1: Tensor, h2: Tensor, mask: Tensor) -> Tensor:
        """h1 (B, T, H) query stream, h2 (B, T, H) content stream, mask (B, T, T) bool -> (B, T, H)."""
        b, t, h = h1.shape
        q, k, v = (proj(x).view(b, t, self.n_heads, -1).transpose(1, 2)  # (B, nh, T, hs)
                   for proj, x in ((self.query, h1), (self.key, h2), (self.value, h2)))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None],
                                           dropout_p=self.dropout.p if self.training else 0.0)
        x = self.norm1(h1 + self.hidden_dropout(self.out(a.transpose(1, 2).reshape(b, t, h))))
        return self.norm2(x + self.hidden_dropout(self.ffn_out(self.act(self.ffn_in(x)))))


class RetroMAEModel(nn.Module):
    """A masked-LM backbone (`*ForMaskedLM`) with its RetroMAE decoder; `save_pretrained` writes the backbone.

    Args:
        mlm: the Hugging Face masked-LM model (its MLM head is random when the checkpoint had none).
        tokenizer: its tokenizer (needs a mask token).
        source: the checkpoint directory it came from (heads and m3embed.json are copied from it on save).
        decoder: the decoder (default: a new one from mlm.config).
    """

    def __init__(self, mlm: nn.Module, tokenizer, source: Path | None = None,
                 decoder: EnhancedDecoder | None = None) -> None:
        super().__init__()
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{source}: the tokenizer has no mask token; RetroMAE needs one for the encoder's MLM")
        self.mlm = mlm
        self.tokenizer = tokenizer
        self.source = source
        self.decoder = EnhancedDecoder(mlm.config) if decoder is None else decoder
        self.pooling = checkpoint.read_config(source).pooling if source is not None else "cls"  # dense's
        self.max_length = checkpoint.position_limit(mlm.config)
        self.position_offset = mlm.config.max_position_embeddings - self.max_length  # XLM-R: 2 padding rows

    @property
    def backbone(self) -> nn.Module:
        return self.mlm.base_model

    @property
    def lm_head(self) -> nn.Module:
        """The full MLM head (transform + vocabulary projection): XLM-R's lm_head, BERT's cls."""
        return self.mlm.lm_head if hasattr(self.mlm, "lm_head") else self.mlm.cls

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: torch.device | str = "cpu") -> RetroMAEModel:
        """A backbone checkpoint (or a pretrain checkpoint-N, whose DECODER_FILE restores head and decoder)."""
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from m3embed.sources import resolve

        directory = resolve(name_or_path)
        with checkpoint.quiet_hf():  # a BGE-M3 checkpoint has no MLM head: a new one is expected
            mlm = AutoModelForMaskedLM.from_pretrained(directory)
        model = cls(mlm, AutoTokenizer.from_pretrained(directory), source=directory)
        if (directory / DECODER_FILE).is_file():
            state = torch.load(directory / DECODER_FILE, map_location="cpu", weights_only=True)
            model.lm_head.load_state_dict(state["lm_head"])
            model.decoder.load_state_dict(state["decoder"])
        return model.to(device)

    def save_pretrained(self, directory: str | Path, resumable: bool = False) -> Path:
        """The backbone in the BGE-M3 layout (+ DECODER_FILE when `resumable`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with checkpoint.quiet_hf():
            self.backbone.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        copied = [*checkpoint.HEAD_FILES.values(), checkpoint.CONFIG_FILE]
        for name in copied:
            if self.source is not None and (self.source / name).is_file():
                shutil.copyfile(self.source / name, directory / name)
        if not (directory / checkpoint.CONFIG_FILE).is_file():
            checkpoint.M3Config(pooling=self.pooling).save(directory)  # the embedding RetroMAE trained
        if resumable:
            torch.save({"lm_head": self.lm_head.state_dict(), "decoder": self.decoder.state_dict()},
                       directory / DECODER_FILE)
        return directory


class RetroMAELoss(nn.Module):
    """Holds a `RetroMAEModel`; `forward` returns encoder MLM + decoder reconstruction cross-entropy.

    Args:
        model: the model.
        bf16: run under bf16 autocast (the losses stay float32).
        bottleneck: the sentence embedding's pooling, "cls" or "mean" (default: the model's dense pooling).
    """

    def __init__(self, model: RetroMAEModel, bf16: bool = False, bottleneck: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.bf16 = bf16
        self.bottleneck = model.pooling if bottleneck is None else bottleneck

    def forward(self, input_ids: Tensor, attention_mask: Tensor, encoder_ids: Tensor, encoder_labels: Tensor,
                decoder_mask: Tensor, decoder_labels: Tensor) -> M3LossOutput:
        """(B, T) ids, mask, masked encoder ids, their labels and decoder labels; decoder_mask (B, T, T)."""
        m = self.model
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            h = m.backbone(input_ids=encoder_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
            enc_logits = m.lm_head(h[encoder_labels != -100])  # (n_masked, V)
            sentence = pool(h, attention_mask.to(h.dtype), self.bottleneck)[:, None]  # (B, 1, H) the sentence embedding
            emb = m.backbone.embeddings
            h2 = torch.cat([sentence, emb(input_ids=input_ids)[:, 1:]], dim=1)  # (B, T, H) content stream
            positions = torch.arange(input_ids.shape[1], device=input_ids.device) + m.position_offset
            h1 = sentence + emb.position_embeddings(positions)[None]  # (B, T, H) query stream
            dec_logits = m.lm_head(m.decoder(h1, h2, decoder_mask)[decoder_labels != -100])  # (n_labels, V)
        parts = {"encoder_mlm": F.cross_entropy(enc_logits.float(), encoder_labels[encoder_labels != -100]),
                 "decoder": F.cross_entropy(dec_logits.float(), decoder_labels[decoder_labels != -100])}
        return M3LossOutput(parts["encoder_mlm"] + parts["decoder"], {k: v.detach() for k, v in parts.items()})


# ---- data ----


def read_texts(paths: str | Path | Iterable[str | Path], text_field: str = "text") -> list[str]:
    """Non-empty texts of jsonl (`text_field`, a "title" prepended), txt (a line each) and parquet files."""
    from m3embed.corpus import read_records

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("no training data given; pass jsonl, txt or parquet files of plain text")
    texts = [r.text for p in paths for r in read_records(p, text_field=text_field, generate_ids=True)
             if r.text.strip()]
    if not texts:
        raise ValueError(f"no text in {', '.join(map(str, paths))}")
    return texts


class TextBatches:
    """This process's batches of texts: global batches of per_device_batch_size × world_size texts, length-grouped
    by characters, rank r taking slice r; the order depends only on (seed, epoch)."""

    def __init__(self, texts: list[str], per_device_batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 42, group_by_length: bool = True) -> None:
        self.texts = texts
        self.per_device_batch_size, self.world_size, self.rank = per_device_batch_size, world_size, rank
        self.seed, self.group_by_length = seed, group_by_length
        self.global_batch_size = per_device_batch_size * world_size
        if len(texts) < self.global_batch_size:
            raise ValueError(f"{len(texts)} texts cannot fill one global batch of {per_device_batch_size} texts x "
                             f"{world_size} processes; lower per_device_batch_size or add data")
        self._lengths = [len(t) for t in texts]
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.texts) // self.global_batch_size

    def batch(self, epoch: int, index: int) -> list[str]:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_batches(self._lengths, self.global_batch_size, self.seed, epoch,
                                                self.group_by_length))
        b = self.per_device_batch_size
        return [self.texts[int(i)] for i in self._epoch[1][index][self.rank * b : (self.rank + 1) * b]]


# ---- the trainer ----


class PretrainTrainer(Trainer):
    """`Trainer` for RetroMAE: plain texts, a `RetroMAEModel`, `RetroMAELoss`; saves the backbone."""

    config: PretrainConfig

    def __init__(self, config: PretrainConfig, model: RetroMAEModel | None = None,
                 texts: list[str] | None = None) -> None:
        super().__init__(config, model, texts)  # type: ignore[arg-type]

    def _setup_data(self, texts: list | None) -> None:
        config = self.config
        texts = read_texts(config.train_data, config.text_field) if texts is None else texts
        self.use_teacher_scores = False
        self.batches = TextBatches(texts, config.per_device_batch_size, self.world_size, self.rank, config.seed,
                                   config.group_by_length)
        self.steps_per_epoch = len(self.batches)
        self.total_steps = (config.max_steps if config.max_steps > 0
                            else math.ceil(config.epochs * self.steps_per_epoch))

    def load_model(self, path: str) -> nn.Module:
        return RetroMAEModel.from_pretrained(path, self.device)

    def configure_trainable(self, model: nn.Module) -> list[str]:
        model.requires_grad_(True)
        if self.config.gradient_checkpointing:
            model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        return ["encoder", "lm_head", "decoder"]

    def make_loss(self) -> nn.Module:
        return RetroMAELoss(self.model, self.config.bf16, "cls" if self.config.bottleneck == "cls" else None)

    def collate(self, batch: list[str]) -> dict[str, Tensor]:  # type: ignore[override]
        """Tokenise (cut at max_length), mask for the encoder, sample the decoder's attention, on the device."""
        from m3embed.tokenize import pad, tokenize, tokenize_words

        tok, config = self.model.tokenizer, self.config
        words = None
        if config.whole_word_mask:
            token_ids, word_ids = tokenize_words(tok, batch, self.passage_max_length)
            words = pad(word_ids, -1)[0].to(self.device)  # (B, T) word index of each token, -1: special / pad
        else:
            token_ids = tokenize(tok, batch, self.passage_max_length)
        ids, mask = pad(token_ids, tok.pad_token_id)  # (B, T), max_length
        ids, mask = ids.to(self.device), mask.to(self.device)
        special = torch.tensor(tok.all_special_ids, device=self.device)
        maskable = mask.bool() & ~torch.isin(ids, special)
        enc_ids, enc_labels = mask_tokens(ids, maskable, config.encoder_mask_ratio, tok.mask_token_id,
                                          self.model.mlm.config.vocab_size, words=words)
        dec_labels = torch.where(mask.bool(), ids, -100)
        dec_labels[:, 0] = -100  # position 0 holds the sentence embedding itself
        return {"input_ids": ids, "attention_mask": mask, "encoder_ids": enc_ids, "encoder_labels": enc_labels,
                "decoder_mask": decoder_attention_mask(mask, config.decoder_mask_ratio),
                "decoder_labels": dec_labels}

    def compute_loss(self, batch: list[str]) -> M3LossOutput:  # type: ignore[override]
        return self.engine(**self.collate(batch))

    def save_model(self, directory: Path, resumable: bool) -> None:
        self.model.save_pretrained(directory, resumable=resumable)


def pretrain(config: PretrainConfig, model: RetroMAEModel | None = None) -> Path:
    """RetroMAE pre-training per `config` (one process, or each torchrun process); returns output_dir."""
    owns_group = not distributed.is_initialized()
    try:
        return PretrainTrainer(config, model).train()
    finally:
        if owns_group:
            distributed.cleanup()
