#!/usr/bin/env bash
# Every GPU check in one call (a lent GPU machine gives ~15 minutes in all; the parts' time limits add up to
# 10 minutes; PARTS="2b 3" runs only those parts, e.g. to finish a cut-off call):
#   1. the CUDA tests (-m gpu: search, model, autocast, flex attention and compiled layers on CUDA), and the
#      kernel tests (flex and compiled against the references) on the same machine
#   2. the kernel benchmark, before against after, in one process per variant (benchmarks/bench_kernels.py):
#      float32 and bf16 autocast, no memory / 16K / 65K, the code of BEFORE (if present) against this
#      checkout eager, then compiled layers, flex attention and both (bf16)
#   3. the search at 16K-1M against the card's dense bf16 matmul rate, and model steps, with the exact and the
#      fused search (benchmarks/gpu_quick.py)
#  3b. the search three ways side by side, 16K-1M: one topk per block, chunked top-k, and the fused Triton
#      search (benchmarks/bench_topk.py)
#   4. generation tokens/s with a 64K memory against none (benchmarks/bench_generate.py)
#   5. with two or more GPUs: a 2-process nccl training run under torchrun
#   6. with RECIPE=1: the long recipe on the GPU (a memorizing model and an XL-only baseline, then evaluated)
# Usage (repo root, on a CUDA machine whose python3 has torch, numpy, safetensors, tqdm, matplotlib):
#   git archive 1642ac8 memorizing_transformers_pytorch | (mkdir -p runs/before && tar -x -C runs/before)
#   OUT=/some/folder BEFORE=runs/before bash scripts/gpu_checks.sh
# Dry run on CPU (the same commands, tiny sizes; checks the script, not the GPU):
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu_dry BEFORE=runs/before bash scripts/gpu_checks.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" OMP_WAIT_POLICY=PASSIVE
OUT=${OUT:-runs/gpu_out}
DEVICE=${DEVICE:-cuda}
BEFORE=${BEFORE:-runs/before}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
PARTS=" ${PARTS:-1 2a 2b 3 3b 4 5} "
if [ "${QUICK:-0}" = 1 ]; then
  SIZES=0,1024; STEPS=(--steps 1 --warmup 2); GEN=(--sizes 0,1024 --tokens 4 --reps 1); SLOW=4
  TOPK=(--sizes 8192 --queries 1,64 --reps 1)
else
  SIZES=0,16384,65536; STEPS=(--steps 8 --warmup 2); GEN=(--sizes 0,65536 --tokens 64 --reps 3); SLOW=1
  TOPK=(--sizes 16384,65536,262144,1048576 --queries 1,4096 --heads 1 --reps 5)
fi
limit() { echo $(( $1 * SLOW )); }  # seconds for a part (x4 on a CPU dry run)
part() { [[ "$PARTS" == *" $1 "* ]]; }
variants=eager; [ -d "$BEFORE/memorizing_transformers_pytorch" ] && variants=before,eager
step() { echo; echo "== $* ($(date +%T))"; }
{
step "machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

if part 1; then
step "1. CUDA tests and kernel tests"
timeout "$(limit 120)" $PY -m pytest -q -p no:cacheprovider -m "gpu or not gpu" tests/test_gpu.py tests/test_kernels.py 2>&1 | tail -15
fi

if part 2a; then
step "2a. kernels, before ($BEFORE) and after, eager: float32 and bf16"
timeout "$(limit 150)" $PY benchmarks/bench_kernels.py --device "$DEVICE" --variants "$variants" --before "$BEFORE" \
  --amp none,bf16 --sizes "$SIZES" "${STEPS[@]}" --out "$OUT" --json-name kernels_eager.json 2>&1 | grep -v "^\[\|^  \["
fi

if part 2b; then
step "2b. kernels at the largest memory, bf16: compiled layers, flex attention, both"
timeout "$(limit 135)" $PY benchmarks/bench_kernels.py --device "$DEVICE" --variants compiled,flex,compiled-flex \
  --amp bf16 --sizes "${SIZES##*,}" "${STEPS[@]}" --out "$OUT" --json-name kernels_compiled.json 2>&1 \
  | grep -v "^\[\|^  \["
fi

if part 3; then
step "3. search against the card's matmul rate; model steps"
if [ "$DEVICE" = cuda ]; then timeout 90 $PY benchmarks/gpu_quick.py --out "$OUT" 2>&1 | tail -30
else echo "(skipped on $DEVICE: gpu_quick.py needs CUDA)"; fi
fi

if part 3b; then
step "3b. the search: one topk, chunked top-k, fused (Triton)"
timeout "$(limit 60)" $PY benchmarks/bench_topk.py --device "$DEVICE" "${TOPK[@]}" --out "$OUT" 2>&1 | tail -12
fi

if part 4; then
step "4. generation with a 64K memory against none"
timeout "$(limit 45)" $PY benchmarks/bench_generate.py --device "$DEVICE" --knn-index exact "${GEN[@]}" \
  --out "$OUT/generate.json" 2>&1 | tail -8
fi

gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
if ! part 5; then :
elif [ "$gpus" -ge 2 ]; then
  step "5. nccl: 2 processes under torchrun"
  timeout 180 $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m memorizing_transformers_pytorch train \
    --device cuda --bf16 --steps 50 --log-every 10 --checkpoint-every 0 --batch-size 4 --run-dir "$OUT/nccl" \
    --overwrite 2>&1 | tr '\r' '\n' | grep -v "it/s" | tail -8
else
  step "5. nccl: skipped ($gpus GPU)"
fi
} > "$LOG" 2>&1

if [ "${RECIPE:-0}" = 1 ]; then
  TRAIN_MINUTES=${TRAIN_MINUTES:-3.5}
  echo "== 6. long recipe on the GPU ($TRAIN_MINUTES minutes per model, side by side)" >> "$LOG"
  MT="$PY -m memorizing_transformers_pytorch"
  COMMON=(--device cuda --bf16 --batch-size 8 --steps 4000 --warmup-steps 200 --lr 2e-3 --checkpoint-every 0
          --log-every 50 --max-minutes "$TRAIN_MINUTES")
  $MT train "${COMMON[@]}" --run-dir runs/gpu/memory > runs/gpu_memory.log 2>&1 &
  $MT train "${COMMON[@]}" --run-dir runs/gpu/baseline --memorizing-layers "" > runs/gpu_baseline.log 2>&1 &
  wait
  timeout 240 $MT eval --checkpoint runs/gpu/memory --baseline-checkpoint runs/gpu/baseline --device cuda \
    --max-docs 32 --max-doc-bytes 262144 --eval-batch-size 8 --memory-sizes 0,1024,4096,16384,65536 \
    --output "$OUT" 2>&1 | tr '\r' '\n' | grep -v "it/s\|B/s" | tail -20 >> "$LOG"
fi
cat "$LOG"
