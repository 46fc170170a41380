#!/usr/bin/env bash
# The issue-21 studies of docs/results.md ("Training the top layers", "The sparse head alone"), on held-out
# *train* questions only (fit_weights.py): no dev question, dev paragraph or evaluation set is read.
#   recipes/e5-m3-small/studies.sh layers [N...]   # heads + top N encoder layers (0: heads only), same 150 steps
#   recipes/e5-m3-small/studies.sh sparse          # the sparse head alone, monolingual rows, 600 steps
# Both start from multilingual-e5-small and read runs/e5-m3-small/train.jsonl (build_data.py). fp32 training.
set -euo pipefail

RUN=runs/e5-m3-small
TRAIN=(--model multilingual-e5-small --train-group-size 4 --batch-size 16 --query-max-length 64
       --passage-max-length 128 --no-progress --logging-steps 20)

case ${1:?layers or sparse} in
  layers)
    shift
    for n in ${*:-0 2 4}; do
      if [[ $n == 0 ]]; then part=(--freeze encoder); else part=(--train-layers "$n"); fi
      uptime
      time m3embed train $RUN/train.jsonl "${TRAIN[@]}" "${part[@]}" --lr 2e-5 --head-lr 2e-3 --max-steps 150 \
        -o $RUN/layers-"$n"
      time python recipes/e5-m3-small/fit_weights.py --model $RUN/layers-"$n" --out $RUN/heldout-"$n".json
    done ;;
  sparse)
    # drop the cross-lingual rows (a non-English question whose positive is an English paragraph): they share no
    # token with their positive, so they only push the lexical weights down
    python - <<'EOF'
import json
en = lambda kind: {json.loads(line)["text"] for line in open(f"../shared/data/xquad/en/{kind}.jsonl")}
paragraphs, questions = en("corpus"), en("queries")
with open("runs/e5-m3-small/train.jsonl") as f, open("runs/e5-m3-small/train_mono.jsonl", "w") as out:
    for line in f:
        row = json.loads(line)
        if not (row["pos"][0] in paragraphs and row["query"] not in questions):
            out.write(line)
EOF
    uptime
    time m3embed train $RUN/train_mono.jsonl "${TRAIN[@]}" --freeze encoder --modes sparse --lr 2e-3 --max-steps 600 \
      -o $RUN/sparse-mono
    # layers-0's dense and ColBERT heads with this sparse head
    rm -rf $RUN/combo-0s && cp -r $RUN/layers-0 $RUN/combo-0s && cp $RUN/sparse-mono/sparse_linear.pt $RUN/combo-0s/
    time python recipes/e5-m3-small/fit_weights.py --model $RUN/combo-0s --out $RUN/heldout-0s.json
    uptime ;;
esac
