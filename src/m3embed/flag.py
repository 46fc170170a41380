"""FlagEmbedding 1.4.2's `BGEM3FlagModel` and `FlagReranker`, as thin classes over M3Model / EncodePool / Reranker.

Code written for FlagEmbedding runs with only its import line changed::

    from m3embed import BGEM3FlagModel, FlagReranker

The constructors take FlagEmbedding's arguments with its defaults, and the methods return its keys and types:
`encode` gives `{"dense_vecs": ndarray (n, h), "lexical_weights": [defaultdict {str(token id): np.float32}],
"colbert_vecs": [ndarray (n_tokens - 1, h)]}` (a mode not asked for is None; one str in gives one row out).
Nothing here imports FlagEmbedding, and importing this module loads no torch: the model is built in `__init__`.

What is deliberately not copied (each named where it applies):
- lexical weights drop every special token the tokenizer declares; FlagEmbedding drops cls, eos, pad and unk
  only, so on a BERT tokenizer (no eos) it keeps [SEP] (`M3Model.flag_special_ids` is its list; on XLM-R the
  two agree but for <mask>).
- `compute_score` scores every pair as FlagEmbedding does with `batch_size=1`: its batched ColBERT score takes the
  max over zero padding rows of shorter passages (tests/test_parity.py); and it works on BERT tokenizers, where
  FlagEmbedding's crashes (`eos_token_id` is None).
- `use_fp16=True` on CPU runs in float32 from the float32 weights; FlagEmbedding loads the weights in float16 and
  casts them back to float32 on CPU, so its CPU numbers carry float16 rounding of every weight (about 3e-4 on
  the dense vectors of the test checkpoint).
- `lexical_weights` keys come in order of each token's first occurrence in the text; FlagEmbedding's in order of
  its first occurrence with a weight > 0 (the same dict, ordered differently when a repeated token's first
  occurrence has weight 0).
- batches are cut by a token budget (`batch_size` caps the texts per forward pass) with no probe pass.
- `normalize_embeddings=False` and `colbert_dim` other than -1 are refused (M3Model always normalises, and its
  ColBERT head has the checkpoint's width).
- `pooling_method=None` (the default here) takes the pooling recorded with the checkpoint (CLS for BGE-M3, as
  FlagEmbedding's "cls"); FlagEmbedding applies "cls" to every checkpoint.
- truncation defaults beyond the model's position limit are capped at it; FlagEmbedding passes 512 to a model
  with fewer positions and fails on long texts.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from m3embed.modes import SCORE_WEIGHTS

if TYPE_CHECKING:
    import torch

    from m3embed.types import M3Output

Devices = str | int | Sequence[str] | Sequence[int] | None  # FlagEmbedding's `devices`
FlagOutput = dict[str, Any]  # {"dense_vecs", "lexical_weights", "colbert_vecs"}
_IGNORED = {"convert_to_numpy"}  # FlagEmbedding keyword arguments with no effect here (numpy is always returned)


def target_devices(devices: Devices) -> list[str]:
    """FlagEmbedding's device list: None → every CUDA device, else ["cpu"]; an int n → "cuda:n"; lists kept."""
    if devices is None:
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    if isinstance(devices, str):
        return [devices]
    if isinstance(devices, int):
        return [f"cuda:{devices}"]
    if isinstance(devices, Sequence) and devices and all(isinstance(d, str) for d in devices):
        return list(devices)
    if isinstance(devices, Sequence) and devices and all(isinstance(d, int) for d in devices):
        return [f"cuda:{d}" for d in devices]
    raise ValueError(f"devices must be a str, an int, or a non-empty list of str or of int, got {devices!r}")


def _dtype(device: str, use_fp16: bool, use_bf16: bool) -> str:
    """FlagEmbedding's precision: half on an accelerator when asked, float32 on CPU whatever was asked."""
    if device == "cpu" or device.startswith("cpu:"):
        return "float32"
    return "bfloat16" if use_bf16 else "float16" if use_fp16 else "float32"


def _check_kwargs(kwargs: dict[str, Any], where: str) -> None:
    unknown = sorted(set(kwargs) - _IGNORED)
    if unknown:
        raise TypeError(f"{where} got unexpected keyword argument(s) {', '.join(unknown)} (FlagEmbedding passes "
                        "extra keywords to the tokenizer; m3embed tokenizes by its own length policy)")


def _instruct(texts: list[str], instruction: str | None, fmt: str) -> list[str]:
    """FlagEmbedding's `get_detailed_instruct` for each text (a literal "\\n" in the format is a newline)."""
    if not instruction:
        return texts
    fmt = fmt.replace("\\n", "\n")
    return [fmt.format(instruction, t) for t in texts]


class BGEM3FlagModel:
    """FlagEmbedding 1.4.2's `BGEM3FlagModel` over m3embed: same arguments, defaults, keys and types.

    Args:
        model_name_or_path: checkpoint directory, shipped name or hub id (as `M3Model.from_pretrained`).
        use_fp16, use_bf16: half precision on an accelerator (float32 on CPU, as FlagEmbedding).
        query_instruction_for_retrieval, query_instruction_format: prepended by `encode_queries` ("{}{}");
            None uses the checkpoint's own query prompt (m3embed.json; empty for BGE-M3).
        devices: "cpu", "cuda:0", 1, ["cuda:0", "cuda:1"]...; several devices encode in an `EncodePool`.
        pooling_method: None keeps the checkpoint's pooling; "cls" or "mean" overrides it.
        batch_size: texts per forward pass at most (batches are cut by a token budget below that).
        query_max_length, passage_max_length: default truncation of queries / passages and `encode`.
        return_dense, return_sparse, return_colbert_vecs: what `encode*` returns when not told.
        truncate_dim: keep the first dims of dense and ColBERT vectors (normalised again, as FlagEmbedding).
        passage_instruction_for_retrieval, passage_instruction_format (keywords): `encode_corpus`'s prompt.
    """

    def __init__(self, model_name_or_path: str | os.PathLike, normalize_embeddings: bool = True,
                 use_fp16: bool = True, use_bf16: bool = False, query_instruction_for_retrieval: str | None = None,
                 query_instruction_format: str = "{}{}", devices: Devices = None,
                 pooling_method: str | None = None, trust_remote_code: bool = False, cache_dir: str | None = None,
                 colbert_dim: int = -1, batch_size: int = 256, query_max_length: int = 512,
                 passage_max_length: int = 512, return_dense: bool = True, return_sparse: bool = False,
                 return_colbert_vecs: bool = False, truncate_dim: int | None = None,
                 passage_instruction_for_retrieval: str | None = None, passage_instruction_format: str = "{}{}",
                 **kwargs: Any) -> None:
        from m3embed import checkpoint
        from m3embed.sources import resolve

        if not normalize_embeddings:
            raise ValueError("normalize_embeddings=False is not supported: M3Model returns L2-normalised dense "
                             "and ColBERT vectors (BGE-M3's scores assume them)")
        if colbert_dim != -1:
            raise ValueError(f"colbert_dim={colbert_dim} is not supported: the ColBERT head keeps the width of "
                             "the checkpoint's colbert_linear.pt; pass -1")
        if cache_dir is not None:
            raise ValueError("cache_dir is not supported: hub downloads go to the Hugging Face cache "
                             "(set HF_HOME to move it)")
        _check_kwargs(kwargs, "BGEM3FlagModel()")
        del trust_remote_code  # nothing remote is run: the model classes are transformers' own
        self.model_name_or_path = str(model_name_or_path)
        self.target_devices = target_devices(devices)
        self.use_fp16, self.use_bf16 = use_fp16, use_bf16
        self.normalize_embeddings = True
        self.query_instruction_for_retrieval = query_instruction_for_retrieval
        self.query_instruction_format = query_instruction_format
        self.passage_instruction_for_retrieval = passage_instruction_for_retrieval
        self.passage_instruction_format = passage_instruction_format
        self.batch_size = batch_size
        self.return_dense, self.return_sparse, self.return_colbert_vecs = return_dense, return_sparse, \
            return_colbert_vecs
        self.truncate_dim = truncate_dim
        dtype = _dtype(self.target_devices[0], use_fp16, use_bf16)
        self.pool = None
        if len(self.target_devices) == 1:
            from m3embed.model import M3Model

            self.model = M3Model.from_pretrained(model_name_or_path, device=self.target_devices[0], dtype=dtype,
                                                 modes=("dense",), pooling=pooling_method)
            self.tokenizer = self.model.tokenizer
            self._encoder: Any = self.model
            prompts = (self.model.query_prefix, self.model.passage_prefix)
            limit, self.modes = self.model.max_length, self.model.available_modes()
        else:
            from m3embed.pool import EncodePool, _load_tokenizer

            if pooling_method is not None:
                raise ValueError("pooling_method cannot be overridden with several devices (each worker loads the "
                                 "checkpoint's own pooling); record it in the checkpoint's m3embed.json")
            self.model = None
            self.pool = self._encoder = EncodePool(model_name_or_path, self.target_devices, dtype=dtype)
            self.tokenizer = _load_tokenizer(self.model_name_or_path)
            config = checkpoint.read_config(resolve(model_name_or_path))
            prompts = (config.query_prefix, config.passage_prefix)
            limit, self.modes = self.pool.max_length, self.pool.modes
        self._prompts = prompts
        self._half = dtype == "float16"  # FlagEmbedding's arrays are float16 then
        self.query_max_length = min(query_max_length, limit)
        self.passage_max_length = min(passage_max_length, limit)

    # ---- encoding ----

    def encode_queries(self, queries: list[str] | str, batch_size: int | None = None, max_length: int | None = None,
                       return_dense: bool | None = None, return_sparse: bool | None = None,
                       return_colbert_vecs: bool | None = None, **kwargs: Any) -> FlagOutput:
        """`encode` of `query_instruction_format.format(instruction, query)`, truncated at `query_max_length`."""
        instruction = self.query_instruction_for_retrieval
        return self._encode(queries, batch_size, max_length or self.query_max_length, return_dense, return_sparse,
                            return_colbert_vecs, instruction if instruction is not None else self._prompts[0],
                            self.query_instruction_format, kwargs)

    def encode_corpus(self, corpus: list[str] | str, batch_size: int | None = None, max_length: int | None = None,
                      return_dense: bool | None = None, return_sparse: bool | None = None,
                      return_colbert_vecs: bool | None = None, **kwargs: Any) -> FlagOutput:
        """`encode` of the passages with `passage_instruction_for_retrieval` (else the checkpoint's passage prompt)."""
        instruction = self.passage_instruction_for_retrieval
        return self._encode(corpus, batch_size, max_length or self.passage_max_length, return_dense, return_sparse,
                            return_colbert_vecs, instruction if instruction is not None else self._prompts[1],
                            self.passage_instruction_format, kwargs)

    def encode(self, sentences: list[str] | str, batch_size: int | None = None, max_length: int | None = None,
               return_dense: bool | None = None, return_sparse: bool | None = None,
               return_colbert_vecs: bool | None = None, **kwargs: Any) -> FlagOutput:
        """Texts as given → `{"dense_vecs", "lexical_weights", "colbert_vecs"}` (None for a mode not asked for).

        dense_vecs: ndarray (n, h); lexical_weights: list of defaultdict {str(token id): np.float32} in order of
        first occurrence in the text; colbert_vecs: list of ndarray (n_tokens - 1, h). One str gives one row of each.
        """
        return self._encode(sentences, batch_size, max_length or self.passage_max_length, return_dense,
                            return_sparse, return_colbert_vecs, None, "{}{}", kwargs)

    def _encode(self, texts: list[str] | str, batch_size: int | None, max_length: int, dense: bool | None,
                sparse: bool | None, colbert: bool | None, instruction: str | None, fmt: str,
                kwargs: dict[str, Any]) -> FlagOutput:
        from m3embed.tokenize import check_texts, tokenize

        _check_kwargs(kwargs, "encode")
        one = isinstance(texts, str)
        texts = _instruct(check_texts(texts), instruction, fmt)
        want = {"dense": self.return_dense if dense is None else dense,
                "sparse": self.return_sparse if sparse is None else sparse,
                "colbert": self.return_colbert_vecs if colbert is None else colbert}
        modes = tuple(m for m, on in want.items() if on)
        if not modes:
            raise ValueError("nothing to return: set return_dense, return_sparse or return_colbert_vecs to True")
        out = self._run(texts, modes, max_length, batch_size)
        result: FlagOutput = {"dense_vecs": None, "lexical_weights": None, "colbert_vecs": None}
        if out.dense is not None:
            result["dense_vecs"] = self._cast(self._truncate(out.dense))
        if out.sparse is not None:
            ids = tokenize(self.tokenizer, texts, max_length)  # for FlagEmbedding's key order
            result["lexical_weights"] = [_flag_weights(out, i, ids[i]) for i in range(len(texts))]
        if out.colbert is not None:
            result["colbert_vecs"] = [self._cast(self._truncate(c)) for c in out.colbert]
        if one:
            result = {k: None if v is None else v[0] for k, v in result.items()}
        return result

    def _run(self, texts: list[str], modes: tuple[str, ...], max_length: int, batch_size: int | None) -> M3Output:
        """The encoder (the model, or the pool on several devices) for checked texts."""
        if self.model is not None:
            self.model.check_heads(modes)
        return self._encoder.encode(texts, modes=modes, max_length=max_length,
                                    max_batch_size=batch_size or self.batch_size)

    def _truncate(self, x: np.ndarray) -> np.ndarray:
        if self.truncate_dim is None:
            return x
        x = x[..., : self.truncate_dim]
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # F.normalize's eps

    def _cast(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float16) if self._half else x

    # ---- scores ----

    def compute_score(self, sentence_pairs: list[tuple[str, str]] | tuple[str, str], batch_size: int | None = None,
                      max_query_length: int | None = None, max_passage_length: int | None = None,
                      weights_for_different_modes: list[float] | None = None, **kwargs: Any
                      ) -> dict[str, list[float]] | dict[str, float] | list:
        """Per pair: "colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense" (lists of float).

        `weights_for_different_modes` (dense, sparse, colbert) default to [1, 1, 1]; the hybrids are divided by
        the sum of the weights they use. One pair gives floats; no pairs gives []. Like FlagEmbedding, no
        query instruction is added (the checkpoint's own prompts are, as `M3Model.compute_score`; none for
        BGE-M3). The ColBERT score ignores padding, as FlagEmbedding's with batch_size=1 (see the module doc).
        """
        from m3embed.scoring import compute_score
        from m3embed.tokenize import check_pairs

        _check_kwargs(kwargs, "compute_score")
        if isinstance(sentence_pairs, list) and not sentence_pairs:
            return []
        one = isinstance(sentence_pairs[0], str)
        pairs = check_pairs(sentence_pairs)
        q = self._run([self._prompts[0] + p[0] for p in pairs], self.modes,
                      max_query_length or self.query_max_length, batch_size)
        p = self._run([self._prompts[1] + p[1] for p in pairs], self.modes,
                      max_passage_length or self.passage_max_length, batch_size)
        scores = compute_score(q, p, SCORE_WEIGHTS if weights_for_different_modes is None
                               else weights_for_different_modes)
        return {k: v[0] for k, v in scores.items()} if one else scores

    def compute_lexical_matching_score(self, lexical_weights_1: dict[str, float] | list[dict[str, float]],
                                       lexical_weights_2: dict[str, float] | list[dict[str, float]]
                                       ) -> float | np.ndarray:
        """Σ over keys in both of w1 · w2: a number for two dicts, an (m, n) array for two lists of dicts.

        Any keys work (token ids, or the token strings of `convert_id_to_token`), as in FlagEmbedding.
        """
        def one(a: dict, b: dict) -> float:
            return sum((w * b[k] for k, w in a.items() if k in b), 0)

        if isinstance(lexical_weights_1, dict) and isinstance(lexical_weights_2, dict):
            return one(lexical_weights_1, lexical_weights_2)
        if isinstance(lexical_weights_1, list) and isinstance(lexical_weights_2, list):
            return np.array([[one(a, b) for b in lexical_weights_2] for a in lexical_weights_1])
        raise ValueError("lexical weights must be two dicts or two lists of dicts, got "
                         f"{type(lexical_weights_1).__name__} and {type(lexical_weights_2).__name__}")

    def colbert_score(self, q_reps: np.ndarray, p_reps: np.ndarray) -> torch.Tensor:
        """ColBERT score of one query's vectors (n_q, h) against one passage's (n_p, h): a 0-d float32 tensor,
        the type FlagEmbedding returns (`m3embed.scoring.colbert_score` computes it)."""
        import torch

        from m3embed.scoring import colbert_score

        return torch.tensor(colbert_score(np.asarray(q_reps, np.float32), np.asarray(p_reps, np.float32)),
                            dtype=torch.float32)

    def convert_id_to_token(self, lexical_weights: dict[str, float] | list[dict[str, float]]
                            ) -> dict[str, float] | list[dict[str, float]]:
        """Lexical weights keyed by token id → keyed by the decoded token.

        As in FlagEmbedding, a list of one dict gives a dict, and ids decoding to the same string keep the
        last one's weight.
        """
        items = [lexical_weights] if isinstance(lexical_weights, dict) else list(lexical_weights)
        out = [{self.tokenizer.decode([int(k)]): w for k, w in item.items()} for item in items]
        return out[0] if len(out) == 1 else out

    def stop_self_pool(self) -> None:
        """Stop the worker processes of several devices (FlagEmbedding's name for it)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __del__(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.stop_self_pool()


def _flag_weights(out: M3Output, i: int, token_ids: list[int]) -> defaultdict:
    """Row i of `out.sparse` as FlagEmbedding builds it: a defaultdict(int) {str(id): np.float32}, keys in
    order of first occurrence in the text."""
    row = out.sparse_vector(i)
    weight = dict(zip(row.ids.tolist(), row.weights))
    result: defaultdict = defaultdict(int)
    for t in token_ids:
        if t in weight and str(t) not in result:
            result[str(t)] = weight[t]
    return result


class FlagReranker:
    """FlagEmbedding 1.4.2's `FlagReranker` (encoder-only cross-encoders) over `m3embed.rerank.Reranker`.

    Args:
        model_name_or_path: a bge-reranker checkpoint (directory, shipped name or hub id).
        use_fp16: float16 on an accelerator (float32 on CPU, as FlagEmbedding).
        query_instruction_for_rerank, passage_instruction_for_rerank and their formats: prepended to each side.
        devices: as BGEM3FlagModel; the first device scores every pair (there is no reranker pool).
        batch_size: pairs per forward pass at most; max_length: pair tokens (512); query_max_length: query
            tokens (default 3/4 of max_length); normalize: sigmoid of the logits. Defaults above the model's
            position limit are capped at it.
    """

    def __init__(self, model_name_or_path: str | os.PathLike, use_fp16: bool = False,
                 query_instruction_for_rerank: str | None = None, query_instruction_format: str = "{}{}",
                 passage_instruction_for_rerank: str | None = None, passage_instruction_format: str = "{}{}",
                 trust_remote_code: bool = False, cache_dir: str | None = None,
                 devices: Devices = None, batch_size: int = 128,
                 query_max_length: int | None = None, max_length: int = 512, normalize: bool = False,
                 **kwargs: Any) -> None:
        from m3embed.rerank import Reranker

        if cache_dir is not None:
            raise ValueError("cache_dir is not supported: hub downloads go to the Hugging Face cache "
                             "(set HF_HOME to move it)")
        _check_kwargs(kwargs, "FlagReranker()")
        del trust_remote_code
        self.target_devices = target_devices(devices)
        self.use_fp16 = use_fp16
        self.query_instruction_for_rerank = query_instruction_for_rerank
        self.query_instruction_format = query_instruction_format
        self.passage_instruction_for_rerank = passage_instruction_for_rerank
        self.passage_instruction_format = passage_instruction_format
        self.batch_size = batch_size
        self.normalize = normalize
        self.model = Reranker.from_pretrained(model_name_or_path, device=self.target_devices[0],
                                              dtype=_dtype(self.target_devices[0], use_fp16, False))
        self.tokenizer = self.model.tokenizer
        self.max_length = min(max_length, self.model.max_length)
        self.query_max_length = query_max_length

    def compute_score(self, sentence_pairs: list[tuple[str, str]] | tuple[str, str], batch_size: int | None = None,
                      query_max_length: int | None = None, max_length: int | None = None,
                      normalize: bool | None = None, **kwargs: Any) -> list[float]:
        """Relevance of each (query, passage) pair: raw logits, or their sigmoid with `normalize=True`.

        One pair gives a list of one score, as FlagEmbedding 1.4.2.
        """
        from m3embed.tokenize import check_pairs

        _check_kwargs(kwargs, "compute_score")
        pairs = check_pairs(sentence_pairs)
        queries = _instruct([p[0] for p in pairs], self.query_instruction_for_rerank, self.query_instruction_format)
        passages = _instruct([p[1] for p in pairs], self.passage_instruction_for_rerank,
                             self.passage_instruction_format)
        return self.model.compute_score(list(zip(queries, passages)),
                                        normalize=self.normalize if normalize is None else normalize,
                                        max_length=max_length or self.max_length,
                                        query_max_length=query_max_length or self.query_max_length,
                                        max_batch_size=batch_size or self.batch_size)
