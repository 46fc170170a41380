#!/usr/bin/env bash
# Issue 19, the unsupervised contrastive stage: e5-m3-small's encoder trained on weakly paired train-side text
# (recipes/stages/unsup_pairs.py: XQuAD train articles' translation pairs and first-sentence/rest pairs; Tatoeba
# and every dev question stay out) with in-batch negatives only (dense, GradCache), then every mode of
# `m3embed eval` on xquad dev and xquad_r dev against e5-m3-small without the stage. e5-m3-small's fine-tuning
# trains the heads on a frozen encoder, so its dense embedding is multilingual-e5-small's and the stage's effect on
# dense is this comparison's; the sparse and ColBERT heads are e5-m3-small's, copied over unchanged (not
# retrained on the new encoder). Run from the repository root, venv active.
set -euo pipefail

DATA=../shared/data
RUN=${RUN:-runs/stages}
STEPS=${STEPS:-40}  # batches of BATCH pairs; 41 make one epoch of the 5,271 pairs at 128
BATCH=${BATCH:-128}
python recipes/stages/unsup_pairs.py --out $RUN/unsup_pairs.jsonl

# lr 1e-5: the encoder is already contrastively trained (BGE-M3's fine-tuning rate, not its pre-training 5e-5)
m3embed train-unsupervised $RUN/unsup_pairs.jsonl -m e5-m3-small -o $RUN/unsup-e5 --per-device-batch-size $BATCH \
  --grad-cache-chunk-size 32 --query-max-length 128 --passage-max-length 128 --max-steps $STEPS --lr 1e-5 \
  --no-progress --logging-steps 5

EVAL=(--dtype float32 --passage-max-length 512 --no-progress)  # float32: bfloat16 is slower on AVX2 CPUs
for set in xquad/{en,de,es,zh,ar,ru} xquad_r/{en,de,es,zh,ar,ru}; do
  name=${set//\//_}
  m3embed eval -d $DATA/$set --qrels qrels.dev.tsv -m e5-m3-small "${EVAL[@]}" -o $RUN/eval/unsup/base/$name
  m3embed eval -d $DATA/$set --qrels qrels.dev.tsv -m $RUN/unsup-e5 --no-bm25 "${EVAL[@]}" \
    -o $RUN/eval/unsup/stage/$name
done
