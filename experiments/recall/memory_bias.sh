#!/usr/bin/env bash
# The recipe behind experiments/recall/README.md's 95% result: 4-byte values, memories with the far position bias
# (memory_rel_pos_bias), 6,000 copy warm-up steps, 3,000 recall steps at lr 2e-3, then 3,000 more at lr 1e-3.
# Usage: bash experiments/recall/memory_bias.sh [SEED] [OUT]    (defaults: seed 1, runs/recall_bias_s1)
# About 12 + 12 + 12 minutes of one core here, then 5-8 minutes of evaluation. Each step is skipped when its
# output exists, so a stopped run continues. Writes OUT/memory_bias_6000/recall.json and recall.png.
# A quick smoke run: WARMUP_STEPS=20 STEPS=20 EVAL_DOCS=2 bash experiments/recall/memory_bias.sh 1 /tmp/smoke
set -euo pipefail
cd "$(dirname "$0")/../.."
SEED=${1:-1}
OUT=${2:-runs/recall_bias_s$SEED}
PY=${PYTHON:-.venv/bin/python}
DATA=recall:query_rate=0.5,value_len=4
WARMUP_STEPS=${WARMUP_STEPS:-6000}
STEPS=${STEPS:-3000}   # per recall phase
EVAL_DOCS=${EVAL_DOCS:-64}
LAST=$(printf "step-%07d" "$STEPS")
export OMP_WAIT_POLICY=PASSIVE
# 1. copy warm-up + 3,000 recall steps (and the evaluation of that model, with k = 32 as trained)
$PY experiments/recall/sweep.py --variants memory_bias --data "$DATA" --seed "$SEED" --jobs 1 --out "$OUT" \
  --warmup-steps "$WARMUP_STEPS" --steps "$STEPS" --eval-docs "$EVAL_DOCS"
# 2. 3,000 more recall steps from those weights (a fresh optimizer and cosine schedule at half the peak lr)
if [ ! -f "$OUT/memory_bias_6000/checkpoints/$LAST/model.safetensors" ]; then
  $PY -m experiments train --threads 1 \
    --model-config "$OUT/memory_bias/checkpoints/$LAST/config.json" --init-from "$OUT/memory_bias" \
    --data "$DATA" --run-dir "$OUT/memory_bias_6000" --seq-len 128 --batch-size 8 --steps "$STEPS" --lr 1e-3 \
    --warmup-steps 50 --seed "$SEED" --checkpoint-every 500 --log-every 50
fi
# 3. exact-match recall by distance, memory 16K and memory off (same weights), on the reported documents
if [ ! -f "$OUT/memory_bias_6000/recall.json" ]; then
  $PY -m experiments recall --checkpoint "$OUT/memory_bias_6000" --memory-sizes 0,16384 \
    --documents "$EVAL_DOCS" --threads 2 --output "$OUT/memory_bias_6000"
fi
