"""The BGE-M3 checkpoint directory: what it must hold, our small config file, and reading it into torch.

Layout (BAAI/bge-m3 and every checkpoint fine-tuned from it):
    config.json                         Hugging Face encoder config (XLM-R or BERT)
    model.safetensors | pytorch_model.bin (or a sharded index of either)
    tokenizer files                     tokenizer.json, sentencepiece.bpe.model or vocab.txt
    colbert_linear.pt                   state dict of nn.Linear(hidden, hidden)
    sparse_linear.pt                    state dict of nn.Linear(hidden, 1)
    m3embed.json                        ours, optional: `M3Config` (pooling, prompts, default truncation)

Where a checkpoint directory comes from (shipped names, package backbones, the hub) is `m3embed.sources`.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from m3embed.modes import check_weights

if TYPE_CHECKING:
    import torch
    from torch import nn

HEAD_FILES = {"colbert": "colbert_linear.pt", "sparse": "sparse_linear.pt"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "vocab.txt", "tokenizer.model")
CONFIG_FILE = "m3embed.json"
POOLINGS = ("cls", "mean")
CASE_FOLDS = ("none", "capitals", "lower")  # `m3embed.tokenize.fold_case`
SPARSE_NORMS = ("none", "l1")  # `m3embed.scoring.normalize_lexical`


@dataclass
class M3Config:
    """m3embed's own settings stored beside a checkpoint."""

    pooling: str = "cls"  # the paper's dense pooling; MiniLM-style backbones use "mean"
    # prepended to every query / passage by encode_queries / encode_corpus (sentence-transformers' prompts);
    # e5 models are trained with "query: " and "passage: "; BGE-M3 uses none
    query_prefix: str = ""
    passage_prefix: str = ""
    # default truncation (tokens, special tokens included) of encode_queries / encode_corpus; None: the model's
    # position limit (bge-m3: 8192; BERT-size models: 512, FlagEmbedding's default)
    query_max_length: int | None = None
    passage_max_length: int | None = None
    # the hybrid weights (dense, sparse, colbert) an index of this model searches with by default; None: BGE-M3's
    # (`m3embed.modes.SEARCH_WEIGHTS`). A model whose modes score on different scales stores weights fitted on
    # its train data here (e5-m3-small: recipes/e5-m3-small/fit_weights.py)
    search_weights: list[float] | None = None
    # letter case folded before tokenizing every input (`m3embed.tokenize.fold_case`): "none" (BGE-M3, and any
    # checkpoint without the key), "capitals" (words written in capitals) or "lower"
    case_fold: str = "none"
    # the queries' lexical weights divided by their norm by encode_queries (`m3embed.scoring.normalize_lexical`):
    # "none" (BGE-M3: FlagEmbedding's weights) or "l1" (they sum to 1, so a query's sparse score no longer grows
    # with its length, as its dense and ColBERT scores do not; e5-m3-small). Documents are never changed.
    query_sparse_norm: str = "none"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("query_prefix", "passage_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")
        for name in ("query_max_length", "passage_max_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
                raise ValueError(f"{name} must be an int of at least 2 or None, got {value!r}")
        if self.case_fold not in CASE_FOLDS:
            raise ValueError(f"case_fold must be one of {CASE_FOLDS}, got {self.case_fold!r}")
        if self.query_sparse_norm not in SPARSE_NORMS:
            raise ValueError(f"query_sparse_norm must be one of {SPARSE_NORMS}, got {self.query_sparse_norm!r}")
        if self.search_weights is not None:
            self.search_weights = list(check_weights(self.search_weights, name="search_weights"))

    def save(self, directory: Path) -> None:
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def check_layout(directory: Path, modes: Sequence[str]) -> None:
    """Raise FileNotFoundError naming every file the requested modes need but the directory lacks."""
    missing = []
    if not (directory / "config.json").is_file():
        missing.append("config.json")
    if not any((directory / f).is_file() for f in WEIGHT_FILES):
        missing.append("model weights (model.safetensors or pytorch_model.bin)")
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, sentencepiece.bpe.model or vocab.txt)")
    if missing:
        raise FileNotFoundError(f"{directory} is not a model checkpoint: missing {', '.join(missing)}")
    for mode in modes:
        if mode in HEAD_FILES and not (directory / HEAD_FILES[mode]).is_file():
            need = [m for m in modes if m != mode]
            hint = f"request only modes={tuple(need)!r}" if need else "request modes=('dense',)"
            raise FileNotFoundError(
                f"{directory / HEAD_FILES[mode]} is missing, so the {mode} output cannot be computed; {hint}"
            )


def position_limit(config) -> int:
    """Tokens a Hugging Face encoder config can take, special tokens included.

    XLM-R positions start after the padding index: 8194 embeddings leave 8192 usable tokens.
    """
    offset = config.pad_token_id + 1 if config.model_type in ("xlm-roberta", "roberta", "camembert") else 0
    return config.max_position_embeddings - offset


def read_config(directory: Path) -> M3Config:
    """m3embed.json if present; else the sentence-transformers pooling config; else CLS pooling."""
    ours = directory / CONFIG_FILE
    if ours.is_file():
        try:
            return M3Config(**json.loads(ours.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{ours} is not a valid m3embed config: {e}") from e
    st_pooling = directory / "1_Pooling" / "config.json"
    if st_pooling.is_file():
        cfg = json.loads(st_pooling.read_text())
        if cfg.get("pooling_mode_mean_tokens") and not cfg.get("pooling_mode_cls_token"):
            return M3Config(pooling="mean")
    return M3Config()


# safetensors dtype names; a checkpoint holding any other dtype is read by transformers instead
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_READ_CHUNK = 16 << 20  # bytes converted at a time: the only memory beyond the converted weights


def read_weights(directory: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The backbone's weights with floating tensors converted to `dtype`, read one chunk at a time.

    Loading through transformers memory-maps the float32 file and converts from the mapping, so every float32
    page is resident at once beside the converted copy (bge-m3 in bfloat16: 3.6 GB peak RSS). Reading
    safetensors with plain file reads into the converted tensors keeps the peak at the converted size plus one
    16 MB chunk. A `.bin` checkpoint is memory-mapped by torch and converted tensor by tensor (its float32 pages
    stay mapped until the end: convert it once with `save_pretrained` to get the lower peak).
    """
    import torch

    files = weight_files(directory)
    out: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            out.update(_read_safetensors(file, dtype))
        else:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            for name in list(state):
                t = state.pop(name)
                out[name] = t.to(dtype) if t.is_floating_point() else t.clone()
    return out


def weight_files(directory: Path) -> list[Path]:
    """The files the encoder's weights are read from: one file, or the shards a sharded index lists."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            shards = json.loads((directory / index).read_text())["weight_map"].values()
            return [directory / s for s in sorted(set(shards))]
    raise FileNotFoundError(f"{directory} holds no model weights (model.safetensors or pytorch_model.bin)")


def _read_safetensors(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    with open(path, "rb", buffering=0) as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        start = 8 + header_size
        chunk = torch.empty(_READ_CHUNK, dtype=torch.uint8)
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which m3embed cannot convert; "
                                 "load this checkpoint in float32")
            src = getattr(torch, _SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=dtype if src.is_floating_point else src)
            flat = tensor.view(-1)
            f.seek(start + begin)
            if tensor.dtype == src:  # read straight into place
                _read_into(f, flat.view(torch.uint8), path)
            else:
                step = _READ_CHUNK // src.itemsize * src.itemsize
                for offset in range(0, end - begin, step):
                    n = min(step, end - begin - offset)
                    _read_into(f, chunk[:n], path)
                    flat[offset // src.itemsize : (offset + n) // src.itemsize].copy_(chunk[:n].view(src))
            out[name] = tensor
    return out


def _read_into(f, buffer: torch.Tensor, path: Path) -> None:
    view = memoryview(buffer.numpy()).cast("B")
    while view:
        n = f.readinto(view)
        if not n:
            raise ValueError(f"{path} is truncated: a tensor runs past the end of the file")
        view = view[n:]


def load_head(path: Path, in_features: int, out_features: int) -> torch.nn.Linear:
    """Load an nn.Linear head saved as a state dict, checking keys and shapes."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable torch state dict: {e}") from e
    if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} must hold the keys 'weight' and 'bias' of nn.Linear, found {keys}")
    if tuple(state["weight"].shape) != (out_features, in_features):
        raise ValueError(
            f"{path}: weight shape {tuple(state['weight'].shape)} does not fit this backbone, "
            f"expected {(out_features, in_features)}"
        )
    head = torch.nn.Linear(in_features, out_features)
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head


def save_head(head: torch.nn.Linear, path: Path) -> None:
    import torch

    torch.save({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, path)


# ---- loading into torch ----

DTYPES = ("float32", "bfloat16", "float16")
INT8 = "int8"  # int8 encoder linear layers over a float32 model (CPU only); see m3embed.quantize


def resolve_device_dtype(device: str | torch.device | None, dtype: torch.dtype | str
                         ) -> tuple[torch.device, torch.dtype]:
    """The device (None: cuda when available) and a checked dtype for loading a model on it.

    float16 on CPU is an error; bfloat16 on a CPU without native bf16 matmul warns that it will be slow.
    "int8" loads float32 weights (quantized afterwards, CPU only).
    """
    import torch

    int8 = dtype == INT8
    if not isinstance(dtype, torch.dtype):
        if dtype not in DTYPES and not int8:
            raise ValueError(f"dtype must be one of {', '.join([*DTYPES, INT8])}, got {dtype!r}")
        dtype = torch.float32 if int8 else getattr(torch, dtype)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if int8 and device.type != "cpu":
        raise ValueError(f"dtype='int8' runs on CPU only, got device={str(device)!r}; on a GPU use bfloat16")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("float16 is for GPUs; on CPU use dtype='bfloat16' (or float32)")
    if dtype == torch.bfloat16 and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn("this CPU has no native bfloat16 matmul (AVX512-BF16/AMX): bfloat16 will be slower "
                      "than float32", stacklevel=3)
    return device, dtype


def load_backbone(directory: Path, dtype: torch.dtype) -> nn.Module:
    """The encoder without its pooler; float32 memory-maps the file, other dtypes convert while reading it."""
    import torch
    from transformers import MODEL_MAPPING, AutoConfig, AutoModel

    with quiet_hf():  # the unused pooler weights are expected; don't report them
        if dtype == torch.float32:
            return AutoModel.from_pretrained(directory, dtype=dtype, add_pooling_layer=False)
        config = AutoConfig.from_pretrained(directory)
        state = read_weights(directory, dtype)  # peak = the converted weights, not float32 + converted
        return MODEL_MAPPING[type(config)].from_pretrained(None, config=config, state_dict=state, dtype=dtype,
                                                           add_pooling_layer=False)


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Hugging Face's warnings and progress bars off (loading and saving report through m3embed instead)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
