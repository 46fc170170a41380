"""M3Model: a Hugging Face encoder with BGE-M3's dense pooling, sparse head and ColBERT head."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from m3embed import checkpoint, identity
from m3embed.encode import encode
from m3embed.modes import MODES, SCORE_WEIGHTS, SEARCH_WEIGHTS, check_modes
from m3embed.onednn import use_onednn
from m3embed.quantize import quantize_int8
from m3embed.scoring import compute_score, normalize_lexical
from m3embed.sources import resolve
from m3embed.tokenize import check_pairs, check_texts, fold_case, resolve_max_length
from m3embed.types import M3Output


def pool(h: torch.Tensor, mask: torch.Tensor, pooling: str, cls_positions: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H) sentence states of (B, T, H) `h`: the [CLS] state ("cls") or the mean over `mask` ("mean");
    with MCLS `cls_positions` (B, K; -1 = none), the mean of the states at those positions."""
    if cls_positions is not None:
        valid = (cls_positions >= 0).to(h.dtype)  # (B, K)
        states = torch.gather(h, 1, cls_positions.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1]))
        return (states * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
    if pooling == "cls":
        return h[:, 0]
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-style backbone (BERT, XLM-R: `backbone.encoder.layer`)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(backbone).__name__} has no encoder.layer list: training only its top layers "
                         "needs a BERT-style encoder")
    return layers


def run_layers(backbone: nn.Module, h: torch.Tensor, attention_mask: torch.Tensor, start: int,
               stop: int | None = None) -> torch.Tensor:
    """Encoder layers [start, stop) of `backbone` on hidden states h (B, T, H) under its own attention mask."""
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(config=backbone.config, inputs_embeds=h, attention_mask=attention_mask)
    for layer in encoder_layers(backbone)[start:stop]:
        h = layer(h, mask)
    return h


def backbone_states(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    stop: int | None = None) -> torch.Tensor:
    """Hidden states after the embeddings and the first `stop` encoder layers (None: all of them, i.e. the
    backbone's last_hidden_state)."""
    if stop is None:
        return backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return run_layers(backbone, backbone.embeddings(input_ids=input_ids), attention_mask, 0, stop)


class M3Model(nn.Module):
    """One encoder pass → dense, sparse (lexical) and ColBERT representations.

    Build it with `M3Model.from_pretrained(...)`. `forward` is the differentiable training view (torch);
    `encode`, `encode_queries`, `encode_corpus` and `compute_score` are the inference API (numpy).
    """

    fingerprint_version = identity.FINGERPRINT_VERSION

    def __init__(self, backbone: nn.Module, tokenizer, colbert_linear: nn.Linear | None,
                 sparse_linear: nn.Linear | None, pooling: str = "cls", name: str = "", query_prefix: str = "",
                 passage_prefix: str = "", query_max_length: int | None = None,
                 passage_max_length: int | None = None, search_weights: Sequence[float] | None = None,
                 case_fold: str = "none", query_sparse_norm: str = "none") -> None:
        super().__init__()
        if pooling not in checkpoint.POOLINGS:
            raise ValueError(f"pooling must be one of {checkpoint.POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.colbert_linear = colbert_linear
        self.sparse_linear = sparse_linear
        self.pooling = pooling
        self.name = name
        # prepended by encode_queries / encode_corpus (and so by index, search, eval, mine, train)
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        cfg = backbone.config
        self.hidden_size: int = cfg.hidden_size
        self.vocab_size: int = cfg.vocab_size
        self.max_length: int = checkpoint.position_limit(cfg)
        # default truncation of encode_queries / encode_corpus (m3embed.json; None: max_length); an explicit
        # max_length overrides them
        self.query_max_length: int = resolve_max_length(query_max_length, self.max_length, name="query_max_length")
        self.passage_max_length: int = resolve_max_length(passage_max_length, self.max_length,
                                                          name="passage_max_length")
        settings = checkpoint.M3Config(case_fold=case_fold, query_sparse_norm=query_sparse_norm)  # checks them
        self.case_fold = settings.case_fold  # applied by input_texts
        self.query_sparse_norm = settings.query_sparse_norm  # applied by encode_queries
        # the default weights of an index built with this model (m3embed.json's search_weights)
        self.search_weights: tuple[float, float, float] = tuple(search_weights or SEARCH_WEIGHTS)
        # FlagEmbedding's list (BGEM3FlagModel: cls, eos, pad, unk where the tokenizer has them); a BERT
        # tokenizer has no eos, so it misses [SEP] (kept in 36 % of minilm-m3's documents). Set
        # `special_ids = flag_special_ids` for FlagEmbedding's numbers exactly.
        self.flag_special_ids: tuple[int, ...] = tuple(sorted({
            i for i in (tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                        tokenizer.unk_token_id) if i is not None
        }))
        # dropped from lexical weights: every special token the tokenizer declares, and FlagEmbedding's list (on
        # XLM-R the two differ only by <mask>, which appears only where a text spells it out)
        self.special_ids: tuple[int, ...] = tuple(sorted(set(self.flag_special_ids) |
                                                         set(tokenizer.all_special_ids)))
        self.encoder_digest = identity.EncoderDigest()  # told by from_pretrained which files it loaded

    # ---- loading and saving ----

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | str = torch.float32, modes: Sequence[str] | str = MODES,
                        pooling: str | None = None, new_heads: bool = False, revision: str | None = None,
                        query_prefix: str | None = None, passage_prefix: str | None = None) -> M3Model:
        """Load a checkpoint in the BGE-M3 layout from a local directory or a hub id.

        Args:
            name_or_path: local directory, or a hub id such as "BAAI/bge-m3".
            device: "cpu", "cuda", "cuda:1"...; None picks cuda when available.
            dtype: float32 (exact), bfloat16 (CPU with AVX512-BF16, GPU), float16 (GPU only) or "int8" (CPU:
                int8 encoder linear layers, calibrated at load; `m3embed.quantize`).
            modes: the outputs this model must be able to produce; a head file they need must exist.
            pooling: override the dense pooling ("cls" or "mean") recorded beside the checkpoint.
            new_heads: create missing heads with random weights (to fine-tune a plain encoder into M3).
            query_prefix, passage_prefix: override the prompts recorded in m3embed.json (e.g. "query: " for
                an e5 checkpoint that has none).
        """
        from transformers import AutoTokenizer

        modes = check_modes(modes)
        directory = resolve(name_or_path, revision)
        checkpoint.check_layout(directory, () if new_heads else modes)
        int8 = dtype == checkpoint.INT8
        device, dtype = checkpoint.resolve_device_dtype(device, dtype)
        config = checkpoint.read_config(directory)
        options = {"query_prefix": config.query_prefix if query_prefix is None else query_prefix,
                   "passage_prefix": config.passage_prefix if passage_prefix is None else passage_prefix,
                   "query_max_length": config.query_max_length, "passage_max_length": config.passage_max_length,
                   "search_weights": config.search_weights, "case_fold": config.case_fold,
                   "query_sparse_norm": config.query_sparse_norm}
        checkpoint.M3Config(pooling=config.pooling, **options)  # checks the overrides
        tokenizer = AutoTokenizer.from_pretrained(directory)
        key = identity.weights_key(directory)  # the files as they are when read
        backbone = checkpoint.load_backbone(directory, dtype)
        hidden = backbone.config.hidden_size
        heads, created = {}, False
        for mode, out_features in (("colbert", hidden), ("sparse", 1)):
            path = directory / checkpoint.HEAD_FILES[mode]
            if path.is_file():
                heads[mode] = checkpoint.load_head(path, hidden, out_features)
            elif new_heads:
                heads[mode], created = nn.Linear(hidden, out_features), True
            else:
                heads[mode] = None
        try:
            model = cls(backbone, tokenizer, heads["colbert"], heads["sparse"], pooling=pooling or config.pooling,
                        name=str(name_or_path), **options)
        except ValueError as e:  # a truncation default of m3embed.json beyond this model's positions
            raise ValueError(f"{directory / checkpoint.CONFIG_FILE}: {e}") from e
        use_onednn(model)
        model = model.to(device).eval()
        if int8:
            quantize_int8(backbone, lambda texts: model.encode(texts, max_length=min(128, model.max_length)))
        model.encoder_digest.loaded(model.backbone, directory, key,
                                    None if created else (model.colbert_linear, model.sparse_linear))
        return model

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the official layout (weights, tokenizer, head .pt files) plus m3embed.json.

        Hugging Face's progress bars ("Writing model shards") stay off, as they do when loading.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with checkpoint.quiet_hf():
            self.backbone.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        for mode, head in (("colbert", self.colbert_linear), ("sparse", self.sparse_linear)):
            if head is not None:
                checkpoint.save_head(head, directory / checkpoint.HEAD_FILES[mode])
        # the truncation defaults are stored only where they differ from the model's limit (None there)
        lengths = {name: None if getattr(self, name) == self.max_length else getattr(self, name)
                   for name in ("query_max_length", "passage_max_length")}
        weights = None if self.search_weights == SEARCH_WEIGHTS else list(self.search_weights)
        checkpoint.M3Config(pooling=self.pooling, query_prefix=self.query_prefix, passage_prefix=self.passage_prefix,
                            search_weights=weights, case_fold=self.case_fold,
                            query_sparse_norm=self.query_sparse_norm, **lengths).save(directory)
        return directory

    @property
    def fingerprint(self) -> str:
        """Identity of what shapes the outputs: 16 hex digits of sha256 over the encoder config, the pooling,
        the prompts, every encoder weight and the head weights (`m3embed.identity`; the encoder's digest is
        cached per weight files, so loading the same checkpoint again costs a few stat calls)."""
        return identity.fingerprint(self)

    @property
    def legacy_fingerprint(self) -> str:
        """The fingerprint before FINGERPRINT_VERSION 2 (config, pooling and head weights only): indexes of
        format 1 recorded it, and are still checked with it."""
        return identity.legacy_fingerprint(self)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def available_modes(self) -> tuple[str, ...]:
        """The representations this model can produce: dense, and each mode whose head is loaded."""
        heads = {"colbert": self.colbert_linear, "sparse": self.sparse_linear}
        return tuple(m for m in MODES if m == "dense" or heads[m] is not None)

    def check_heads(self, modes: Sequence[str]) -> None:
        """Raise a ValueError naming the head file when a requested mode's head is not loaded."""
        have = self.available_modes()
        for mode in modes:
            if mode not in have:
                raise ValueError(f"this model has no {mode} head ({checkpoint.HEAD_FILES[mode]} was not loaded); "
                                 f"request modes={have!r}")

    # ---- the forward pass ----

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[str] = MODES,
                cls_positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Differentiable outputs for a padded batch.

        Args:
            input_ids, attention_mask: (B, T) right-padded.
            modes: any of "dense", "sparse", "colbert".
            cls_positions: (B, K) positions of CLS tokens to average for the dense output (MCLS), -1 = none.

        Returns:
            "dense": (B, h) L2-normalised; "token_weights": (B, T) relu(sparse_linear(H)), 0 on padding;
            "colbert": (B, T-1, h) L2-normalised colbert_linear(H[:, 1:]), zero rows on padding.
        """
        self.check_heads(modes)
        return self.infer(input_ids, attention_mask, modes, cls_positions)

    def infer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[str],
              cls_positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`forward` for modes already checked (`check_heads`): what `m3embed.encode` runs per batch."""
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return self._heads(h, attention_mask, modes, cls_positions)

    def heads_forward(self, h: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[str] = MODES,
                      cls_positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`forward` from the backbone's last hidden states h (B, T, H) on: pooling and heads (same outputs)."""
        self.check_heads(modes)
        return self._heads(h, attention_mask, modes, cls_positions)

    def _heads(self, h: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[str],
               cls_positions: torch.Tensor | None) -> dict[str, torch.Tensor]:
        h = h.float()  # heads and pooling run in float32 whatever the backbone dtype
        mask = attention_mask.to(h.dtype)  # (B, T)
        out: dict[str, torch.Tensor] = {}
        if "dense" in modes:
            out["dense"] = F.normalize(pool(h, mask, self.pooling, cls_positions), dim=-1)  # (B, H)
        if "sparse" in modes:
            out["token_weights"] = torch.relu(self.sparse_linear(h)).squeeze(-1) * mask  # (B, T)
        if "colbert" in modes:
            c = self.colbert_linear(h[:, 1:]) * mask[:, 1:, None]  # (B, T-1, H)
            out["colbert"] = F.normalize(c, dim=-1)
        return out

    def sparse_embedding(self, input_ids: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
        """(B, vocab) lexical vectors: max weight per token id, special ids zeroed (differentiable)."""
        emb = token_weights.new_zeros(input_ids.shape[0], self.vocab_size)
        emb = emb.scatter_reduce(1, input_ids, token_weights, reduce="amax", include_self=True)
        keep = torch.ones(self.vocab_size, dtype=emb.dtype, device=emb.device)
        keep[list(self.special_ids)] = 0
        return emb * keep

    # ---- inference API (numpy); the batching lives in encode.py ----

    def encode(self, texts: Sequence[str] | str, modes: Sequence[str] | str = ("dense",), *,
               max_length: int | None = None, batch_tokens: int | None = None, max_batch_size: int = 256,
               mcls: bool | int = False, progress: bool | None = None) -> M3Output:
        """Encode texts into an M3Output (input order kept), as they are (no prompt).

        Args:
            texts: a str or a sequence of str (anything else raises TypeError naming its index).
            modes: representations, any of "dense", "sparse", "colbert" (a sequence or "dense,sparse").
            max_length: truncation in tokens, specials included; default the model's position limit, and a
                larger value is an error (`m3embed.tokenize.resolve_max_length`).
            batch_tokens, max_batch_size, mcls, progress: see `m3embed.encode.encode`.
        """
        return self._encode(self.input_texts(texts), modes, max_length, None, batch_tokens, max_batch_size, mcls,
                            progress)

    def input_texts(self, texts: Sequence[str] | str, role: str | None = None) -> list[str]:
        """The texts as the encoder reads them, checked as `encode` does: the model's prefix for `role` ("query"
        or "passage"; None: none) prepended, and its `case_fold` applied (`m3embed.tokenize.fold_case`)."""
        if role not in (None, "query", "passage"):
            raise ValueError(f"role must be 'query', 'passage' or None, got {role!r}")
        prefix = {None: "", "query": self.query_prefix, "passage": self.passage_prefix}[role]
        return fold_case([prefix + t for t in check_texts(texts)], self.case_fold)

    def encode_queries(self, texts: Sequence[str] | str, modes: Sequence[str] | str = ("dense",), *,
                       max_length: int | None = None, batch_tokens: int | None = None, max_batch_size: int = 256,
                       mcls: bool | int = False, progress: bool | None = None) -> M3Output:
        """`encode` of `query_prefix + text`, truncating at `max_length`, by default `self.query_max_length`; the
        lexical weights divided by their norm where the model's `query_sparse_norm` says so."""
        out = self._encode(self.input_texts(texts, "query"), modes, max_length, self.query_max_length,
                           batch_tokens, max_batch_size, mcls, progress)
        if out.sparse is not None:
            out.sparse = normalize_lexical(out.sparse, self.query_sparse_norm)
        return out

    def encode_corpus(self, texts: Sequence[str] | str, modes: Sequence[str] | str = ("dense",), *,
                      max_length: int | None = None, batch_tokens: int | None = None, max_batch_size: int = 256,
                      mcls: bool | int = False, progress: bool | None = None) -> M3Output:
        """`encode` of `passage_prefix + text`, truncating at `max_length`, by default `self.passage_max_length`."""
        return self._encode(self.input_texts(texts, "passage"), modes, max_length, self.passage_max_length,
                            batch_tokens, max_batch_size, mcls, progress)

    def _encode(self, texts: list[str], modes: Sequence[str] | str, max_length: int | None, default: int | None,
                batch_tokens: int | None, max_batch_size: int, mcls: bool | int, progress: bool | None) -> M3Output:
        """Check the modes and heads and resolve the length once, then run `m3embed.encode.encode`."""
        modes = check_modes(modes)
        self.check_heads(modes)
        return encode(self, texts, modes, resolve_max_length(max_length, self.max_length, default),
                      batch_tokens=batch_tokens, max_batch_size=max_batch_size, mcls=mcls, progress=progress)

    def compute_score(self, pairs: Sequence[tuple[str, str]], weights: Sequence[float] = SCORE_WEIGHTS, *,
                      query_max_length: int | None = None, passage_max_length: int | None = None,
                      batch_tokens: int | None = None, progress: bool | None = None) -> dict[str, list[float]]:
        """FlagEmbedding's `compute_score`: per pair dense, sparse, colbert and the weighted hybrids.

        `weights` (dense, sparse, colbert) default to `m3embed.modes.SCORE_WEIGHTS` (1, 1, 1), as FlagEmbedding.
        A model without some head scores the modes it has (see `m3embed.scoring.compute_score`). The queries go
        through `encode_queries`, so a model's `query_sparse_norm` applies to its sparse scores (BGE-M3's layout
        has none: FlagEmbedding's numbers).
        """
        pairs = check_pairs(pairs)
        modes = self.available_modes()
        q = self.encode_queries([p[0] for p in pairs], modes=modes, max_length=query_max_length,
                                batch_tokens=batch_tokens, progress=progress)
        p = self.encode_corpus([p[1] for p in pairs], modes=modes, max_length=passage_max_length,
                               batch_tokens=batch_tokens, progress=progress)
        return compute_score(q, p, weights)

    def convert_id_to_token(self, weights: dict[str, float] | M3Output) -> list[dict[str, float]] | dict[str, float]:
        """Map lexical weights keyed by token id to the decoded token strings."""
        if isinstance(weights, M3Output):
            return [self.convert_id_to_token(w) for w in weights.lexical_weights]
        return {self.tokenizer.decode([int(k)]): v for k, v in weights.items()}
