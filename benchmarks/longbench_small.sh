#!/usr/bin/env bash
# A small byte-level model of ours trained for the long-context suite (the passkey recipe, experiments/passkey):
# the small preset with its kNN memory in layer 1 and token_shift=8, a copy warm-up, then STEPS on the suite's own
# training documents (--data longbench:..., 384-2,048 bytes, seeds disjoint from evaluation's); beside it the same
# model trained with its memory off (XL-only). Then the suite at 1K-64K bytes: memory on / off, and XL-only.
#   bash benchmarks/longbench_small.sh [OUT]      (about 40 minutes on 2 cores when nothing else runs)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/longbench/small}
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-1500}
WARMUP_STEPS=${WARMUP_STEPS:-400}
LENGTHS=${LENGTHS:-1024,4096,16384,65536}
TASKS=passkey+niah_single+niah_multikey+niah_multivalue+niah_multiquery+variable_tracking+kv_retrieval
DATA="longbench:tasks=$TASKS,min_length=384,max_length=2048,documents=4000"
MODEL=(--preset small --memorizing-layers 1 --token-shift 8 --xl-max-memories 128 --max-knn-memories 4096)
COMMON=(--seq-len 128 --batch-size 8 --lr 2e-3 --warmup-steps 50 --checkpoint-every 500 --log-every 50)
MT=(.venv/bin/memorizing-transformers)
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
done_() { [ -e "$1/checkpoints/step-$(printf %07d "$2")/model.safetensors" ]; }
done_ "$OUT/warmup" "$WARMUP_STEPS" || "${MT[@]}" train --threads 2 "${MODEL[@]}" "${COMMON[@]}" --data copy \
  --steps "$WARMUP_STEPS" --min-lr-ratio 1 --overwrite --run-dir "$OUT/warmup" > "$OUT/warmup.log" 2>&1
train() {  # NAME, extra flags
  local name=$1; shift
  done_ "$OUT/$name" "$STEPS" && return 0
  OMP_NUM_THREADS=1 "${MT[@]}" train --threads 1 "${MODEL[@]}" "${COMMON[@]}" --data "$DATA" --steps "$STEPS" \
    --init-from "$OUT/warmup" --overwrite --run-dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
train memory & pid=$!
train xl_only --no-knn-memory
wait "$pid"
LB=(--tasks all --lengths "$LENGTHS" --depths 0.25,0.75 --samples 1)
"${MT[@]}" longbench --checkpoint "$OUT/memory" "${LB[@]}" --output "$OUT/bench_memory"
"${MT[@]}" longbench --checkpoint "$OUT/xl_only" "${LB[@]}" --settings no-memory --output "$OUT/bench_xl_only"
