"""Longer inputs for learned absolute position tables: `extend_positions(src, dst, max_length)`.

BERT and XLM-R learn one embedding row per position; XLM-R's rows start after its padding index (rows 0 and 1
are the padding ones, so 514 rows leave 512 tokens). A table is extended by one of two stated methods:

* "copy": the learned rows repeated until the new length (position p takes row p mod n_old), the method BGE-M3
  used to take XLM-R from 512 to 8,192 positions; short inputs keep their exact outputs.
* "interpolate": the learned rows linearly interpolated over the new length (the first and last rows kept); every
  input moves, the relative order of positions is kept.

The result needs training on long texts (RetroMAE, `m3embed pretrain`) before it reads them well.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from m3embed import checkpoint
from m3embed.sources import resolve

METHODS = ("copy", "interpolate")
TABLE_KEY = "embeddings.position_embeddings.weight"  # under a "roberta." / "bert." prefix in task checkpoints
IDS_KEY = "embeddings.position_ids"  # a buffer some older checkpoints saved


def extend_table(table: Tensor, offset: int, n_positions: int, method: str = "copy") -> Tensor:
    """(offset + n_old, H) position table -> (offset + n_positions, H); the first `offset` rows kept as they are."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    head, old = table[:offset], table[offset:]  # (offset, H), (n_old, H)
    if method == "copy":
        new = old.repeat(math.ceil(n_positions / len(old)), 1)[:n_positions]
    else:
        new = F.interpolate(old.T[None].float(), size=n_positions, mode="linear", align_corners=True)[0].T
    return torch.cat([head, new.to(table.dtype)])  # (offset + n_positions, H)


def extend_positions(src: str | Path, dst: str | Path, max_length: int = 8192, method: str = "copy") -> Path:
    """Write a copy of checkpoint `src` at `dst` whose position table takes `max_length` tokens.

    config.json (max_position_embeddings) and the tokenizer's model_max_length are updated, so
    `M3Model.max_length`, every length check and `m3embed info` see the new limit; heads, m3embed.json and the
    tokenizer are copied. Returns `dst`.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    directory, dst = resolve(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} is not empty; choose a new directory for the extended checkpoint")
    config = json.loads((directory / "config.json").read_text())
    kind = config.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ValueError(f"{directory}: position_embedding_type={kind!r}; only learned absolute tables extend")
    from transformers import AutoConfig

    old_limit = checkpoint.position_limit(AutoConfig.from_pretrained(directory))  # the one offset rule
    offset = config["max_position_embeddings"] - old_limit  # XLM-R: its padding rows (2); BERT: 0
    if max_length <= old_limit:
        raise ValueError(f"max_length={max_length} must exceed the model's position limit of {old_limit} tokens")
    shutil.copytree(directory, dst, dirs_exist_ok=True)  # links (assembled shipped models) become files
    found = False
    for file in checkpoint.weight_files(dst):
        state = _load(file)
        keys = [k for k in state if k == TABLE_KEY or k.endswith("." + TABLE_KEY)]
        if not keys:
            continue
        for key in keys:
            state[key] = extend_table(state[key], offset, max_length, method)
        for key in [k for k in state if k == IDS_KEY or k.endswith("." + IDS_KEY)]:
            state[key] = torch.arange(offset + max_length, dtype=state[key].dtype)[None]
        _save(state, file)
        found = True
    if not found:
        raise ValueError(f"{directory}: no {TABLE_KEY} in the weights; is this a BERT or XLM-R checkpoint?")
    config["max_position_embeddings"] = offset + max_length
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _set_tokenizer_limit(dst, max_length)
    return dst


def _set_tokenizer_limit(directory: Path, max_length: int) -> None:
    """model_max_length in tokenizer_config.json, and a truncation length in tokenizer.json if it has one."""
    path = directory / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    cfg["model_max_length"] = max_length
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    path = directory / "tokenizer.json"
    if path.is_file():
        tok = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(tok.get("truncation"), dict) and "max_length" in tok["truncation"]:
            tok["truncation"]["max_length"] = max_length
            path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")


def _load(file: Path) -> dict[str, Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)


def _save(state: dict[str, Tensor], file: Path) -> None:
    tmp = file.with_name(file.name + ".tmp")
    if file.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
    else:
        torch.save(state, tmp)
    tmp.replace(file)
