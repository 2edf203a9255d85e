#!/usr/bin/env bash
# Gate ablation on the standard library at a fixed budget: sigmoid / joint / mlp, same model, data and steps.
# Usage: bash experiments/recall/ablate_gates.sh [STEPS] [THREADS]    (defaults: 300 steps, 1 thread; ~6 min per gate here)
# Writes runs/gates/<gate>/ (run folders with eval.json; OUT=DIR writes elsewhere) and prints one table.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-300}
THREADS=${2:-1}
OUT=${OUT:-runs/gates}
PY=${PYTHON:-.venv/bin/python}
for gate in sigmoid joint mlp; do
  if [ ! -f "$OUT/$gate/eval.json" ]; then
    $PY -m memorizing_transformers_pytorch train --run-dir "$OUT/$gate" --knn-gate "$gate" --steps "$STEPS" \
      --warmup-steps 50 --lr 2e-3 --checkpoint-every 0 --log-every 25 --threads "$THREADS" --seed 0
    $PY -m memorizing_transformers_pytorch eval --checkpoint "$OUT/$gate" --memory-sizes 0,16384 --max-docs 4 \
      --max-doc-bytes 32768 --split test --output "$OUT/$gate" --threads "$THREADS"
  fi
done
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| gate | bpb, memory 16K | bpb, memory off | on vs off |")
print("|---|---|---|---|")
for gate in ("sigmoid", "joint", "mlp"):
    r = json.loads((out / gate / "eval.json").read_text())
    on, off = r["by_memory_size"]["16384"], r["by_memory_size"]["0"]
    print(f"| {gate} | {on:.4f} | {off:.4f} | {100 * (off - on) / off:+.2f}% |")
PY
