#!/usr/bin/env bash
# Issue 19, domain adaptation: RetroMAE on a classic collection's documents only (corpus.jsonl, title + text;
# never its queries or qrels), then every mode of `m3embed eval` against minilm-m3 without it. The same step
# budget for every set (STEPS batches of 16 documents at 256 tokens, the passage length of minilm-m3's training
# and evaluation). The sparse and ColBERT heads are minilm-m3's, copied over unchanged (not retrained on the
# adapted encoder). BOTTLENECK=cls runs RetroMAE's [CLS] bottleneck instead of minilm-m3's mean pooling (the
# default, `m3embed pretrain --bottleneck pooling`). A step whose output exists is skipped, so a re-run resumes.
# Run from the repository root, venv active.
set -euo pipefail

DATA=../shared/data
RUN=${RUN:-runs/stages}
STEPS=${STEPS:-40}
SETS=${SETS:-adi time medline cranfield cacm lisa}
BOTTLENECK=${BOTTLENECK:-pooling}
NAME=retromae$([[ $BOTTLENECK == cls ]] && echo -cls || true)

for set in $SETS; do
  EVAL=(-d $DATA/classic/$set --qrels qrels.tsv --passage-max-length 256 --no-progress)
  [[ -f $RUN/eval/classic/base/$set/eval.json ]] ||
    m3embed eval "${EVAL[@]}" -m minilm-m3 -o $RUN/eval/classic/base/$set
  [[ -f $RUN/$NAME-$set/model.safetensors ]] ||
    m3embed pretrain $DATA/classic/$set/corpus.jsonl -m minilm-m3 -o $RUN/$NAME-$set --max-length 256 \
      --per-device-batch-size 16 --max-steps $STEPS --lr 5e-5 --attention-dropout 0 --bottleneck $BOTTLENECK \
      --no-progress --logging-steps 5
  [[ -f $RUN/eval/classic/$NAME/$set/eval.json ]] ||
    m3embed eval "${EVAL[@]}" -m $RUN/$NAME-$set --no-bm25 -o $RUN/eval/classic/$NAME/$set
done
