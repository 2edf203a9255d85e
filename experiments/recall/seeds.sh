#!/usr/bin/env bash
# The recall result across seeds, with the token-shift recipe (variant "shift3" of sweep.py: the kNN memory in
# layer 1 of 2, its keys see the 3 tokens before, its queries the 2 before). Per seed: a 400-step copy warm-up,
# 3,000 recall steps at lr 2e-3, then 3,000 more at lr 1e-3 (a fresh optimizer and cosine schedule); exact-match
# recall at 16K memory and with the memory off (same weights). Then the XL-only and plain baselines on the same
# schedule (seed 0), and the table across seeds: OUT/seeds.json, OUT/seeds.png, and markdown on stdout.
# Usage: bash experiments/recall/seeds.sh        (about 75 minutes on 2 cores; two seeds train at once)
# Smoke run: WARMUP_STEPS=10 STEPS=10 MORE_STEPS=10 EVAL_DOCS=2 OUT=/tmp/seeds bash experiments/recall/seeds.sh
# MORE_STEPS=0 stops after the first 3,000 (the recipe of the first table in README.md).
# Finished phases are skipped, so a stopped run continues.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/recall_seeds}
SEEDS=${SEEDS:-"0 1 2 3"}
WARMUP_STEPS=${WARMUP_STEPS:-400}
STEPS=${STEPS:-3000}
MORE_STEPS=${MORE_STEPS:-3000}
EVAL_DOCS=${EVAL_DOCS:-64}
DISTANCES=${DISTANCES:-352,1408,2048,5632}
DATA=recall:query_rate=0.5,value_len=4
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
# more VARIANT SEED_DIR SEED: MORE_STEPS from the variant's weights at half the peak lr, into SEED_DIR/VARIANT_more,
# then its recall at the variant's memory size and with the memory off, into SEED_DIR/final/VARIANT/recall.json
more() {
  local variant=$1 dir=$2 seed=$3 sizes=0,16384
  [ "$variant" = shift3 ] || sizes=0
  local run="$dir/${variant}_more" start last
  printf -v start "%s/%s/checkpoints/step-%07d" "$dir" "$variant" "$STEPS"
  printf -v last "%s/checkpoints/step-%07d" "$run" "$MORE_STEPS"
  if [ ! -e "$last" ]; then  # (the data order of another seed: not the first phase's documents again)
    $PY -m experiments train --threads 1 --model-config "$start/config.json" \
      --init-from "$dir/$variant" --data "$DATA" --run-dir "$run" --seq-len 128 --batch-size 8 \
      --steps "$MORE_STEPS" --lr 1e-3 --warmup-steps 50 --seed "$((seed + 1000))" --checkpoint-every 500 --log-every 50 \
      $([ -e "$run/checkpoints/latest" ] && echo --resume)
  fi
  $PY -m experiments recall --checkpoint "$run" --distances "$DISTANCES" --memory-sizes "$sizes" \
    --documents "$EVAL_DOCS" --threads 1 --output "$dir/final/$variant"
}
sweep() {
  $PY experiments/recall/sweep.py --data "$DATA" --warmup-steps "$WARMUP_STEPS" --steps "$STEPS" \
    --eval-docs "$EVAL_DOCS" --distances "$DISTANCES" "$@"
}
seed_run() {  # (the first phase's evaluation is skipped when it is there)
  [ -f "$OUT/seed$1/recall.json" ] || sweep --variants shift3 --jobs 1 --seed "$1" --out "$OUT/seed$1"
  if [ "$MORE_STEPS" -gt 0 ]; then more shift3 "$OUT/seed$1" "$1"; fi
}
set -- $SEEDS
while [ $# -gt 0 ]; do  # two seeds at a time, one core each
  first=$1; shift
  seed_run "$first" >> "$OUT/seed$first.log" 2>&1 &
  pid=$!
  if [ $# -gt 0 ]; then
    second=$1; shift
    seed_run "$second" >> "$OUT/seed$second.log" 2>&1
  fi
  wait "$pid"
  echo "[seeds] done: seed $first${second:+ and $second}"; second=
done
{
  [ -f "$OUT/baselines/recall.json" ] || sweep --variants xl_only,plain --jobs 2 --seed 0 --out "$OUT/baselines"
  if [ "$MORE_STEPS" -gt 0 ]; then
    more xl_only "$OUT/baselines" 0 & pid=$!
    more plain "$OUT/baselines" 0
    wait "$pid"
  fi
} >> "$OUT/baselines.log" 2>&1
echo "[seeds] done: baselines"
$PY experiments/recall/seed_table.py "$OUT"
