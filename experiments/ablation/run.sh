#!/usr/bin/env bash
# What the demo's gain depends on (issue 29, part 2): the demo's recipe (byte level, the `small` preset, 1,500
# steps on the standard library, evaluated on the same 4 held-out documents) with each of its three additions
# to the paper switched on or off:
#   paper     the memorizing layer in the upper half (layer 2 of 2), no token shift, no copy warm-up
#   first     the memorizing layer first (layer 1 of 2) only
#   shift     token_shift=3 only
#   warmup    the 400-step copy warm-up only
#   all       all three (the demo)
#   no-first, no-shift, no-warmup    all but one (the memorizing layer in the upper half; no shift; no warm-up)
# Each run is the normal `demo` command: the memory model and a baseline of the same architecture trained with
# its kNN memory off (XL cache only), then memory on / off / baseline on the held-out documents.
# The evaluation skips the demo's extra memory sizes (1K, 16K), which do not change on / off / baseline.
# Usage: bash experiments/ablation/run.sh            (about 11-13 minutes per run on 2 cores; 15 runs)
#        SEEDS="0" SETTINGS="no-first no-shift no-warmup" bash experiments/ablation/run.sh   (all but one)
# Finished runs (OUT/SETTING_seedN/eval.json) are skipped, so a stopped sweep continues where it stopped.
# Then: python experiments/ablation/summarize.py OUT  -> OUT/ablation.json and a table.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/ablation}
SEEDS=${SEEDS:-0 1 2}
SETTINGS=${SETTINGS:-all paper first shift warmup}
export OMP_WAIT_POLICY=PASSIVE
flags() {  # the demo's flags for one setting
  case $1 in
    paper)  echo "--memorizing-layers 2 --token-shift 0 --copy-warmup-steps 0" ;;
    first)  echo "--memorizing-layers 1 --token-shift 0 --copy-warmup-steps 0" ;;
    shift)  echo "--memorizing-layers 2 --token-shift 3 --copy-warmup-steps 0" ;;
    warmup) echo "--memorizing-layers 2 --token-shift 0 --copy-warmup-steps 400" ;;
    all)    echo "--memorizing-layers 1 --token-shift 3 --copy-warmup-steps 400" ;;
    no-first)  echo "--memorizing-layers 2 --token-shift 3 --copy-warmup-steps 400" ;;
    no-shift)  echo "--memorizing-layers 1 --token-shift 0 --copy-warmup-steps 400" ;;
    no-warmup) echo "--memorizing-layers 1 --token-shift 3 --copy-warmup-steps 0" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for setting in $SETTINGS; do
    run="$OUT/${setting}_seed$seed"
    [ -f "$run/eval.json" ] && continue
    read -r -a extra <<< "$(flags "$setting")"
    echo "[ablation] $(date +%H:%M) $setting seed $seed -> $run (log $run.log)"
    $PY -m memorizing_transformers_pytorch demo --run-dir "$run" --seed "$seed" --memory-sizes 0,4096 \
      "${extra[@]}" > "$run.log" 2>&1 || { echo "[ablation] $setting seed $seed failed; see $run.log"; exit 1; }
    grep -A8 "bits per byte\|with memory" "$run.log" | tail -8 || true
  done
done
echo "[ablation] done; python experiments/ablation/summarize.py $OUT"
