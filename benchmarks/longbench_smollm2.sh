#!/usr/bin/env bash
# The long-context suite on SmolLM2-135M-Instruct (its GGUF, as a plain folder) with the untrained kNN memory
# (the adapter's defaults: every layer, joint read, first 4 pairs kept), memory on / off / the plain model, in
# phases from cheap to expensive; each phase continues the same results.json (interrupt and rerun at will).
#   bash benchmarks/longbench_smollm2.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/longbench/smollm2}
MODEL=runs/real_model/smollm2
[ -d "$MODEL" ] || bash scripts/install_smollm2.sh "$MODEL"
LB=(.venv/bin/memorizing-transformers longbench --checkpoint "$MODEL" --output "$OUT" --seq-len 512)
"${LB[@]}" --lengths 4096 --depths 0.1,0.5,0.9
"${LB[@]}" --lengths 16384 --depths 0.5
# beyond 16K, one sample per task, most informative first (about 40 minutes for 64K, 12 for 32K on 2 cores);
# tasks the model fails at 4K with full attention (variable tracking, key-value retrieval) are left out
"${LB[@]}" --lengths 65536 --depths 0.5 --tasks passkey
"${LB[@]}" --lengths 32768 --depths 0.5 --tasks passkey,niah_multikey,niah_single
"${LB[@]}" --lengths 65536 --depths 0.5 --tasks niah_single,niah_multikey
