#!/usr/bin/env bash
# Issue 21 items 2-3: e5-m3-small with BGE-M3's hybrid weights, with the weights fitted on train-side data
# (fit_weights.py), and with those weights plus case folding (case_study.py), each on every shared set, in
# float32 (this CPU has no AVX512-BF16). The first two share their indexes (other weights re-encode only the
# queries); the folding model reads every text differently, so it builds its own.
#   recipes/e5-m3-small/calibrated.sh [VARIANT...]   (before weights fold; default all three)
set -euo pipefail
RUN=runs/e5-m3-small
export DTYPE=float32
CACHE=$(python -c "from m3embed.sources import resolve; print(resolve('e5-m3-small'))")
checkpoint() {  # checkpoint DIR JSON: the shipped model's files (hard links) with another m3embed.json
  rm -rf "$1" && cp -al "$CACHE" "$1" && rm "$1/m3embed.json" && printf '%s\n' "$2" > "$1/m3embed.json"
}
PROMPTS='"pooling": "mean", "query_prefix": "query: ", "passage_prefix": "passage: "'
checkpoint $RUN/ckpt-nofold "{$PROMPTS, \"search_weights\": [0.65, 0.15, 0.2]}"
checkpoint $RUN/ckpt-fold "{$PROMPTS, \"search_weights\": [0.65, 0.15, 0.2], \"case_fold\": \"capitals\"}"
for variant in ${*:-before weights fold}; do
  case $variant in
    before) args=(WEIGHTS=0.4,0.2,0.4 INDEX_NAME=f32 $RUN/ckpt-nofold f32-before) ;;
    weights) args=(INDEX_NAME=f32 $RUN/ckpt-nofold f32-weights) ;;
    fold) args=(INDEX_NAME=f32-fold $RUN/ckpt-fold f32-fold) ;;
  esac
  env "${args[@]:0:${#args[@]}-2}" recipes/e5-m3-small/eval.sh "${args[@]: -2}" xquad xling xquad_r tatoeba
  env "${args[@]:0:${#args[@]}-2}" PASSAGE_LEN=256 recipes/e5-m3-small/eval.sh "${args[@]: -2}" classic
done
