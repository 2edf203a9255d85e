#!/usr/bin/env bash
# The longer recipe (not in CI): train the demo-sized memorizing model and a baseline of the same size with the
# same XL cache but no memorizing layer, for the same number of steps, then evaluate both on held-out stdlib files.
# On a 2-core machine the two runs train side by side with one thread each (about an hour), then evaluation
# takes about 15 minutes. COPY_WARMUP=N first teaches both models to copy by content for N steps
# (--copy-warmup-steps, recall.copy_warmup), the same for both. MODEL_ARGS changes the model for both (e.g.
# "--dim 128 --depth 2 --dim-head 32 --memorizing-layers 2"); SEQ_LEN and BATCH the segments.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
STEPS=${STEPS:-2000}
OUT=${OUT:-runs/long}
COPY_WARMUP=${COPY_WARMUP:-0}
SEQ_LEN=${SEQ_LEN:-512}
BATCH=${BATCH:-2}
read -r -a MODEL <<< "${MODEL_ARGS:-}"
MT=".venv/bin/memorizing-transformers"
mkdir -p "$OUT"
COMMON=(--steps "$STEPS" --warmup-steps 100 --lr 2e-3 --checkpoint-every 250 --log-every 25 --threads 1
        --copy-warmup-steps "$COPY_WARMUP" --seq-len "$SEQ_LEN" --batch-size "$BATCH" "${MODEL[@]}")
$MT train "${COMMON[@]}" --run-dir "$OUT/memory" > "$OUT/train_memory.log" 2>&1 &
$MT train "${COMMON[@]}" --run-dir "$OUT/baseline" --memorizing-layers "" > "$OUT/train_baseline.log" 2>&1 &
wait
$MT eval --checkpoint "$OUT/memory" --baseline-checkpoint "$OUT/baseline" --max-docs 8 --max-doc-bytes 65536 \
    --memory-sizes 0,4096,16384,65536 --output "$OUT/eval"
