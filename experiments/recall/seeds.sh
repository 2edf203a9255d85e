#!/usr/bin/env bash
# The recall result across seeds, with the token-shift recipe (variant "shift3" of sweep.py: the kNN memory in
# layer 1 of 2, its keys see the 3 tokens before, its queries the 2 before). Per seed: a 400-step copy warm-up,
# then 3,000 recall steps; exact-match recall at 16K memory and with the memory off (same weights). Then the
# XL-only and plain baselines on the same schedule (seed 0), and the table across seeds:
# OUT/seeds.json, OUT/seeds.png, and markdown on stdout.
# Usage: bash experiments/recall/seeds.sh        (about 35 minutes on 2 cores; two seeds train at once)
# Smoke run: WARMUP_STEPS=10 STEPS=10 EVAL_DOCS=2 OUT=/tmp/seeds bash experiments/recall/seeds.sh
# Finished phases are skipped, so a stopped run continues.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/recall_seeds}
SEEDS=${SEEDS:-"0 1 2 3"}
WARMUP_STEPS=${WARMUP_STEPS:-400}
STEPS=${STEPS:-3000}
EVAL_DOCS=${EVAL_DOCS:-64}
DISTANCES=${DISTANCES:-352,1408,2048,5632}
DATA=recall:query_rate=0.5,value_len=4
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
sweep() {
  $PY experiments/recall/sweep.py --data "$DATA" --warmup-steps "$WARMUP_STEPS" --steps "$STEPS" \
    --eval-docs "$EVAL_DOCS" --distances "$DISTANCES" "$@"
}
set -- $SEEDS
while [ $# -gt 0 ]; do  # two seeds at a time, one core each
  first=$1; shift
  sweep --variants shift3 --jobs 1 --seed "$first" --out "$OUT/seed$first" > "$OUT/seed$first.log" 2>&1 &
  pid=$!
  if [ $# -gt 0 ]; then
    second=$1; shift
    sweep --variants shift3 --jobs 1 --seed "$second" --out "$OUT/seed$second" > "$OUT/seed$second.log" 2>&1
  fi
  wait "$pid"
  echo "[seeds] done: seed $first${second:+ and $second}"; second=
done
sweep --variants xl_only,plain --jobs 2 --seed 0 --out "$OUT/baselines" > "$OUT/baselines.log" 2>&1
echo "[seeds] done: baselines"
$PY experiments/recall/seed_table.py "$OUT"
