#!/usr/bin/env bash
# The longer recipe (not in CI): train the demo-sized memorizing model and a baseline of the same size with the
# same XL cache but no memorizing layer, for the same number of steps, then evaluate both on held-out stdlib files.
# On this 2-core machine the two runs train side by side with one thread each (about 70 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-2500}
OUT=${OUT:-runs/long}
MT=".venv/bin/memorizing-transformers"
COMMON=(--steps "$STEPS" --warmup-steps 100 --lr 2e-3 --checkpoint-every 250 --log-every 25 --threads 1)
$MT train "${COMMON[@]}" --run-dir "$OUT/memory" > "$OUT.memory.log" 2>&1 &
$MT train "${COMMON[@]}" --run-dir "$OUT/baseline" --memorizing-layers "" > "$OUT.baseline.log" 2>&1 &
wait
$MT eval --checkpoint "$OUT/memory" --baseline-checkpoint "$OUT/baseline" --max-docs 16 --max-doc-bytes 131072 \
    --memory-sizes 0,1024,4096,16384,65536 --output "$OUT/eval"
