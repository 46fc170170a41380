#!/usr/bin/env bash
# The issue-21 studies of docs/results.md ("Training the top layers", "The sparse head alone"), on held-out
# *train* questions only (fit_weights.py): no dev question, dev paragraph or evaluation set is read.
#   recipes/e5-m3-small/studies.sh layers [N...]   # heads + top N encoder layers (0: heads only), same 150 steps
#   recipes/e5-m3-small/studies.sh sparse          # the sparse head alone, monolingual rows, 600 steps
#   BASE=4 recipes/e5-m3-small/studies.sh sparse   # the same on layers-4's trained encoder (default BASE 0)
# Both start from multilingual-e5-small and read $DATA (default runs/e5-m3-small/train.jsonl, from build_data.py);
# fp32 training. Other settings: PLEN (passage tokens, 128), STEPS (150: layers), SPARSE_STEPS (600), and TAG,
# appended to every output name (layers-0$TAG, sparse-mono$TAG, combo-0s$TAG, heldout-*$TAG.json).
set -euo pipefail

RUN=runs/e5-m3-small
DATA=${DATA:-$RUN/train.jsonl} TAG=${TAG:-}
TRAIN=(--train-group-size 4 --batch-size 16 --query-max-length 64
       --passage-max-length "${PLEN:-128}" --no-progress --logging-steps 20)

case ${1:?layers or sparse} in
  layers)
    shift
    for n in ${*:-0 2 4}; do
      if [[ $n == 0 ]]; then part=(--freeze encoder); else part=(--train-layers "$n"); fi
      uptime
      time m3embed train "$DATA" --model multilingual-e5-small "${TRAIN[@]}" "${part[@]}" --lr 2e-5 --head-lr 2e-3 \
        --max-steps "${STEPS:-150}" -o $RUN/layers-"$n$TAG"
      time python recipes/e5-m3-small/fit_weights.py --model $RUN/layers-"$n$TAG" --out $RUN/heldout-"$n$TAG".json
    done ;;
  sparse)
    # drop the cross-lingual rows (a non-English question whose positive is an English paragraph): they share no
    # token with their positive, so they only push the lexical weights down
    python - "$DATA" $RUN/train_mono$TAG.jsonl <<'EOF'
import json
import sys
en = lambda kind: {json.loads(line)["text"] for line in open(f"../shared/data/xquad/en/{kind}.jsonl")}
paragraphs, questions = en("corpus"), en("queries")
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        row = json.loads(line)
        if not (row["pos"][0] in paragraphs and row["query"] not in questions):
            out.write(line)
EOF
    # BASE 0: a new head on multilingual-e5-small's own states; BASE N: on layers-N's encoder, from its head
    base=${BASE:-0} model=multilingual-e5-small sparse=$RUN/sparse-mono$TAG
    [[ $base != 0 ]] && model=$RUN/layers-$base$TAG sparse=$RUN/sparse-mono-$base$TAG
    uptime
    time m3embed train $RUN/train_mono$TAG.jsonl --model "$model" "${TRAIN[@]}" --freeze encoder --modes sparse \
      --lr 2e-3 --max-steps "${SPARSE_STEPS:-600}" -o "$sparse"
    # layers-N's encoder and ColBERT head with this sparse head
    combo=$RUN/combo-${base}s$TAG
    rm -rf $combo && cp -r $RUN/layers-$base$TAG $combo && cp "$sparse"/sparse_linear.pt $combo/
    time python recipes/e5-m3-small/fit_weights.py --model $combo --out $RUN/heldout-${base}s$TAG.json
    uptime ;;
esac
