#!/usr/bin/env bash
# Every GPU check in one call (a lent GPU machine gives ~15 minutes): CUDA tests, the long recipe on the GPU
# (memorizing model and XL-only baseline trained side by side, then evaluated), and the GPU benchmarks.
# Usage (repo root, on a CUDA machine whose python3 has torch, safetensors, tqdm, matplotlib):
#   OUT=/some/folder bash scripts/gpu_checks.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" OMP_WAIT_POLICY=PASSIVE
OUT=${OUT:-runs/gpu_out}
TRAIN_MINUTES=${TRAIN_MINUTES:-3.5}
mkdir -p "$OUT" runs
LOG="$OUT/gpu_checks.log"
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
echo "== CUDA tests"
timeout 180 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tail -15
echo "== long recipe on the GPU ($TRAIN_MINUTES minutes per model, side by side)"
} > "$LOG" 2>&1
MT="python3 -m memorizing_transformers_pytorch"
COMMON=(--device cuda --bf16 --batch-size 8 --steps 4000 --warmup-steps 200 --lr 2e-3 --checkpoint-every 0
        --log-every 50 --max-minutes "$TRAIN_MINUTES")
$MT train "${COMMON[@]}" --run-dir runs/gpu/memory > runs/gpu_memory.log 2>&1 &
$MT train "${COMMON[@]}" --run-dir runs/gpu/baseline --memorizing-layers "" > runs/gpu_baseline.log 2>&1 &
wait
{
for run in memory baseline; do
  echo "-- $run: last log lines"; tail -c 600 "runs/gpu_$run.log" | tr '\r' '\n' | tail -4
  cp "runs/gpu/$run/metrics.jsonl" "$OUT/metrics_$run.jsonl"
done
# keep the trained weights (small): at most 8 files come back from the machine
for run in memory baseline; do
  ckpt=$(cat runs/gpu/$run/checkpoints/latest 2>/dev/null) && tar -C "runs/gpu/$run/checkpoints/$ckpt" -czf "$OUT/weights_$run.tgz" model.safetensors config.json
done
echo "== evaluation on held-out stdlib files"
timeout 240 $MT eval --checkpoint runs/gpu/memory --baseline-checkpoint runs/gpu/baseline --device cuda \
  --max-docs 32 --max-doc-bytes 262144 --eval-batch-size 8 --memory-sizes 0,1024,4096,16384,65536 \
  --output "$OUT" 2>&1 | tr '\r' '\n' | grep -v "it/s\|B/s" | tail -20
if [ -f benchmarks/gpu_quick.py ]; then
  echo "== GPU benchmarks"
  timeout 150 python3 benchmarks/gpu_quick.py --out "$OUT" 2>&1 | tail -40
fi
} >> "$LOG" 2>&1
cat "$LOG"
