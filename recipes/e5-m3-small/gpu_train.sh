#!/usr/bin/env bash
# One device call that trains e5-m3-small's encoder and heads (issue 21 item 1); see gpu.py for why and how.
# Here first: python recipes/e5-m3-small/gpu.py pack runs/e5-m3-small/train.jsonl --out runs/e5-m3-small/gpu
# On the device (carry .whl, which holds the transformers 5.23.0 wheel, and runs/e5-m3-small/gpu):
#   bash recipes/e5-m3-small/gpu_train.sh
# It trains the unified recipe with self-distillation on the top LAYERS layers (all 12 by default; the word
# embeddings stay frozen) and the three heads, saves every SAVE steps up to STEPS, and writes into $OUT, per
# checkpoint, ship-N.tar (gpu.py ship: trained matrices as quantised deltas, heads, configs), plus train.log and
# card.txt. Back here: tar -xf ship-N.tar -C DIR; gpu.py merge DIR/ship-N --out MODEL; fit_weights.py --model MODEL
# chooses the step on held-out train questions. DEVICE=cpu and small STEPS/BATCH/PLEN run it on a CPU (a dry run).
set -euo pipefail

OUT=${OUT:?the device tool sets OUT} WORK=${WORK:-/tmp/e5gpu} PACKED=runs/e5-m3-small/gpu
LAYERS=${LAYERS:-12} STEPS=${STEPS:-1200} SAVE=${SAVE:-400} BATCH=${BATCH:-32} GROUP=${GROUP:-8} PLEN=${PLEN:-256}
if compgen -G ".whl/transformers-*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/transformers-*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
mkdir -p "$WORK"
(nvidia-smi -L || echo "no GPU (DEVICE=${DEVICE:-cuda})") > "$OUT/card.txt"
xz -dc $PACKED/e5-small-q4-pruned.bin.xz > "$WORK/e5-small-q4.bin"
xz -dc $PACKED/train.jsonl.xz > "$WORK/train.jsonl"
python3 -c "import sys; from m3embed.e5q4 import convert; convert(*sys.argv[1:])" "$WORK/e5-small-q4.bin" \
  src/m3embed/backbones/multilingual-e5-small/tokenizer.json.xz "$WORK/e5"
bf16=--bf16; [[ ${DEVICE:-cuda} == cpu ]] && bf16=--no-bf16
time python3 -m m3embed train "$WORK/train.jsonl" --model "$WORK/e5" --train-layers "$LAYERS" \
  --train-group-size "$GROUP" --batch-size "$BATCH" --query-max-length 64 --passage-max-length "$PLEN" \
  --lr 2e-5 --head-lr 2e-3 --max-steps "$STEPS" --save-steps "$SAVE" --save-total-limit 100 $bf16 \
  --device "${DEVICE:-cuda}" --no-progress --logging-steps 20 -o "$WORK/run" 2>&1 | tee "$OUT/train.log"
for ckpt in "$WORK"/run/checkpoint-*; do
  n=${ckpt##*-}
  python3 recipes/e5-m3-small/gpu.py ship "$ckpt" --backbone "$WORK/e5" --out "$WORK/ship/ship-$n"
  tar -cf "$OUT/ship-$n.tar" -C "$WORK/ship" "ship-$n"
done
cp "$WORK/run/train_log.jsonl" "$OUT/"
ls -la "$OUT"
