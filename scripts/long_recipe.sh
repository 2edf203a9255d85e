#!/usr/bin/env bash
# The longer recipe (not in CI): train the demo-sized memorizing model and a baseline of the same size with the
# same XL cache but no memorizing layer, for the same number of steps, then evaluate both on held-out stdlib files.
# On a 2-core machine the two runs train side by side with one thread each (about an hour), then evaluation
# takes about 15 minutes. COPY_WARMUP=N first teaches both models to copy by content for N steps, the same for
# both: the copy warm-up (memorizing_transformers_pytorch/copy_warmup.py), a run of `memorizing-transformers train --data copy` into
# OUT/memory.warmup and OUT/baseline.warmup that the real runs continue with --init-from. MODEL_ARGS changes the
# model for both (e.g. "--dim 128 --depth 2 --dim-head 32 --memorizing-layers 2"); SEQ_LEN and BATCH the segments;
# SEED the seed of both models' weights and data order, warm-up included (default 0).
# A warm-up is skipped when its folder already holds a finished one (and resumed when it holds an unfinished one).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
STEPS=${STEPS:-2000}
OUT=${OUT:-runs/long}
COPY_WARMUP=${COPY_WARMUP:-0}
SEQ_LEN=${SEQ_LEN:-512}
BATCH=${BATCH:-2}
SEED=${SEED:-0}
read -r -a MODEL <<< "${MODEL_ARGS:-}"
PY=".venv/bin/python"
MT=".venv/bin/memorizing-transformers"
mkdir -p "$OUT"
COMMON=(--steps "$STEPS" --warmup-steps 100 --lr 2e-3 --checkpoint-every 250 --log-every 25 --threads 1 --seed "$SEED"
        --seq-len "$SEQ_LEN" --batch-size "$BATCH" "${MODEL[@]}")

# train NAME [MODEL FLAGS...]: the copy warm-up (if COPY_WARMUP > 0), then STEPS on the standard library
train() {
  local run="$OUT/$1" init=()
  shift
  if [ "$COPY_WARMUP" -gt 0 ]; then
    local warmup="$run.warmup" warmup_final
    printf -v warmup_final "%s/checkpoints/step-%07d" "$warmup" "$COPY_WARMUP"
    if [ ! -e "$warmup_final" ]; then
      $PY -m experiments train --data copy --seq-len 128 --batch-size 8 --steps "$COPY_WARMUP" --lr 2e-3 \
        --warmup-steps 100 --min-lr-ratio 1 --weight-decay 0.01 --adam-beta2 0.999 --checkpoint-every 500 \
        --log-every 50 --threads 1 --seed "$SEED" --run-dir "$warmup" "${MODEL[@]}" "$@" \
        $([ -e "$warmup/checkpoints/latest" ] && echo --resume)
    fi
    init=(--init-from "$warmup")
  fi
  $MT train "${COMMON[@]}" "$@" --run-dir "$run" "${init[@]}"
}
train memory > "$OUT/train_memory.log" 2>&1 &
train baseline --memorizing-layers "" > "$OUT/train_baseline.log" 2>&1 &
wait
$MT eval --checkpoint "$OUT/memory" --baseline-checkpoint "$OUT/baseline" --max-docs 8 --max-doc-bytes 65536 \
    --memory-sizes 0,4096,16384,65536 --output "$OUT/eval"
