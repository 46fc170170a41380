#!/usr/bin/env bash
# Issue 19, long documents: minilm-m3 extended to 8,192 positions (copy and interpolate), RetroMAE on long
# train-side texts (XQuAD train articles joined, recipes/stages/long_texts.py), then longdoc_leval against the
# model cut at its old 512 positions. Training and evaluation read 4,096 tokens (a 2-core CPU's budget: an
# 8,192-token step costs ~4x the attention of a 4,096 one). Run from the repository root, venv active.
set -euo pipefail

DATA=../shared/data
RUN=${RUN:-runs/stages}
LEN=${LEN:-4096}
python recipes/stages/long_texts.py --out $RUN/long_texts.jsonl

EVAL=(-d $DATA/longdoc_leval --qrels qrels.tsv --no-bm25 --no-progress)
mcls() {  # mcls MODEL LENGTH NAME: dense and all with MCLS off / on (a CLS every 256 tokens)
  python recipes/minilm-m3/eval_mcls.py --model "$1" --dataset $DATA/longdoc_leval --max-length "$2" \
    --modes dense,all --out $RUN/eval/longdoc-mcls/"$3"
}
m3embed eval "${EVAL[@]}" -m minilm-m3 --passage-max-length 512 -o $RUN/eval/longdoc/base-512
mcls minilm-m3 512 base-512

for method in copy interpolate; do
  m3embed extend-positions minilm-m3 $RUN/ext-$method --max-length 8192 --method $method
  m3embed info -m $RUN/ext-$method  # the new limit: 8192 tokens
  m3embed eval "${EVAL[@]}" -m $RUN/ext-$method --passage-max-length $LEN -o $RUN/eval/longdoc/ext-$method-$LEN
  mcls $RUN/ext-$method $LEN ext-$method-$LEN
  m3embed pretrain $RUN/long_texts.jsonl -m $RUN/ext-$method -o $RUN/retromae-$method --max-length $LEN \
    --per-device-batch-size 2 --epochs 2 --lr 5e-5 --attention-dropout 0 --gradient-checkpointing \
    --no-progress --logging-steps 1
  m3embed eval "${EVAL[@]}" -m $RUN/retromae-$method --passage-max-length $LEN \
    -o $RUN/eval/longdoc/retromae-$method-$LEN
  mcls $RUN/retromae-$method $LEN retromae-$method-$LEN
done
