#!/usr/bin/env bash
# Passkey retrieval: trains a small memorizing model and its baselines on passkey documents of 384-2,048 bytes,
# then measures exact-match accuracy at 1K-64K bytes (up to 32x the longest training document).
#   1. one copy warm-up (as the demo's), shared by the memory and XL-only variants (the same architecture)
#   2. from it, on --data passkey: memory (kNN memory in layer 1, token_shift=8), xl_only (the same model trained
#      with the memory off: local + XL context 256 bytes), plain (no memory, no XL cache); one core each
#   3. evaluation: memory at 64K, the same weights with memory off, xl_only, plain -> OUT/passkey.{json,png}
# Usage: bash experiments/passkey/run.sh   (about 20 minutes on 2 cores)
# Smoke run: WARMUP_STEPS=10 STEPS=10 TRIALS=1 LENGTHS=512,1024 OUT=/tmp/pk bash experiments/passkey/run.sh
# Finished runs are skipped, so a stopped run continues.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/passkey}
SEED=${SEED:-0}
SHIFT=${SHIFT:-8}
WARMUP_STEPS=${WARMUP_STEPS:-400}
STEPS=${STEPS:-2500}
TRIALS=${TRIALS:-3}
LENGTHS=${LENGTHS:-1024,2048,4096,8192,16384,32768,65536}
DATA=passkey:min_length=384,max_length=2048
export OMP_WAIT_POLICY=PASSIVE
MODEL=(--preset small --memorizing-layers 1 --token-shift "$SHIFT" --xl-max-memories 128 --max-knn-memories 4096)
COMMON=(--seq-len 128 --batch-size 8 --lr 2e-3 --warmup-steps 50 --seed "$SEED" --checkpoint-every 500 --log-every 50)
done_() { [ -f "$1/metrics.jsonl" ] && ls "$1"/checkpoints/step-"$(printf %07d "$2")" >/dev/null 2>&1; }
mkdir -p "$OUT"
warmup() {  # NAME, extra flags: the copy warm-up (the plain model has its own: its config has no XL cache)
  local name=$1; shift
  done_ "$OUT/$name" "$WARMUP_STEPS" && return 0
  echo "[passkey] copy warm-up $name: $WARMUP_STEPS steps"
  $PY -m experiments train --threads 2 "${MODEL[@]}" "${COMMON[@]}" --data copy --steps "$WARMUP_STEPS" \
    --min-lr-ratio 1 --overwrite --run-dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
train() {  # NAME, WARM-UP, extra flags
  local name=$1 from=$2; shift 2
  done_ "$OUT/$name" "$STEPS" && return 0
  echo "[passkey] training $name ($STEPS steps; log $OUT/$name.log)"
  OMP_NUM_THREADS=1 $PY -m experiments train --threads 1 "${MODEL[@]}" "${COMMON[@]}" --data "$DATA" \
    --steps "$STEPS" --init-from "$OUT/$from" --overwrite --run-dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
warmup warmup
warmup warmup_plain --xl-max-memories 0
train memory warmup & pid=$!
train xl_only warmup --no-knn-memory
wait "$pid"
train plain warmup_plain --no-knn-memory --xl-max-memories 0
$PY -m experiments passkey --threads 2 --checkpoint "memory=$OUT/memory" --checkpoint "xl_only=$OUT/xl_only" \
  --checkpoint "plain=$OUT/plain" --memory-sizes 0,65536 --lengths "$LENGTHS" --trials "$TRIALS" --output "$OUT"
