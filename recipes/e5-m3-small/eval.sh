#!/usr/bin/env bash
# The evaluations of docs/results.md (section "e5-m3-small"), one model at a time:
#   recipes/e5-m3-small/eval.sh MODEL NAME [PART...]
# MODEL is a shipped name or a checkpoint dir, NAME the folder under runs/e5-m3-small/eval/. PARTs (default all):
# xquad xling xquad_r tatoeba classic longdoc (classic:adi,time picks collections). Every mode + BM25 per set,
# bf16 encoding (DTYPE), queries and passages cut at 512 tokens (the model's limit; 256 for minilm-m3, its training
# length); hybrid weights: WEIGHTS, else the model's search_weights (BGE-M3's 0.4, 0.2, 0.4 when it has none).
# XQuAD-family sets are scored with their dev qrels (dev articles, never trained on). The index directories are
# kept: the xling sets reuse the English xquad index (same 240 English paragraphs), so they only encode queries.
set -euo pipefail

MODEL=$1 NAME=$2
shift 2
PARTS=${*:-xquad xling xquad_r tatoeba classic longdoc}
DATA=../shared/data
RUN=runs/e5-m3-small
LEN=${PASSAGE_LEN:-512}  # PASSAGE_LEN=256: the classic sets, as minilm-m3 was evaluated (and half the encoder time)
[[ $MODEL == minilm-m3 ]] && LEN=256
DTYPE=${DTYPE:-bfloat16}  # DTYPE=float32 on CPUs without AVX512-BF16, where bfloat16 is slower
INDEX_NAME=${INDEX_NAME:-$NAME}  # INDEX_NAME: search the indexes of an earlier NAME again (other weights: queries only)
EVAL=(-m "$MODEL" --dtype "$DTYPE" --passage-max-length $LEN)
[[ -n ${WEIGHTS:-} ]] && EVAL+=(--weights "$WEIGHTS")  # default: the index's (its model's search_weights)

run() {  # run SET QRELS INDEX_NAME [extra eval options]
  local set=$1 qrels=$2 index=$3
  shift 3
  m3embed eval -d $DATA/$set --qrels "$qrels" "${EVAL[@]}" --index $RUN/index/$INDEX_NAME/$index \
    -o $RUN/eval/$NAME/${set//\//_} "$@"
}

for part in $PARTS; do
  case $part in
    xquad) for l in en de es zh ar ru; do run xquad/$l qrels.dev.tsv xquad_$l; done ;;
    xling) for l in de es zh ar ru; do run xquad_xling/$l-en qrels.dev.tsv xquad_en; done ;;
    xquad_r) for l in en de es zh ar ru; do run xquad_r/$l qrels.dev.tsv xquad_r_$l; done ;;
    tatoeba) python recipes/e5-m3-small/eval_tatoeba.py --model "$MODEL" --dtype "$DTYPE" \
               ${WEIGHTS:+--weights ${WEIGHTS//,/ }} --out $RUN/eval/$NAME/tatoeba ;;
    classic) for s in adi time medline cranfield cacm lisa; do run classic/$s qrels.tsv classic_$s; done ;;
    classic:*) sets=${part#classic:}; for s in ${sets//,/ }; do run classic/$s qrels.tsv classic_$s; done ;;
    longdoc)
      run longdoc_leval qrels.tsv longdoc
      python recipes/minilm-m3/eval_mcls.py --model "$MODEL" --dataset $DATA/longdoc_leval --max-length $LEN \
        --dtype bfloat16 --out $RUN/eval/$NAME/mcls ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
