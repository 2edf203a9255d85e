#!/usr/bin/env bash
# The token-level recipe (not in CI): train a byte-level BPE on the standard library's train split, tokenize the
# corpus once into shards, then train the demo-sized memorizing model and an XL-only baseline of the same size
# (no memorizing layer) for the same number of steps, side by side with one thread each, and evaluate both on
# the held-out test files: bits per byte and token perplexity, memory on / off / by size. On 2 CPU cores shared
# with other jobs the tokenizer and shards took about a minute, the two runs 30-36 minutes, the evaluation 26
# (docs/token_level.md; results in docs/results/token_level_*).
# VOCAB, STEPS, OUT and MODEL_ARGS (extra model flags for both runs) change it.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
VOCAB=${VOCAB:-4096}
STEPS=${STEPS:-600}
OUT=${OUT:-runs/token}
read -r -a MODEL <<< "${MODEL_ARGS:-}"
MT=".venv/bin/memorizing-transformers"
mkdir -p "$OUT"

# 1. the tokenizer (prints its training time and encoding throughput as JSON), 2. the shards
[ -f "$OUT/tokenizer.json" ] || $MT tokenizer --data stdlib --vocab-size "$VOCAB" --out "$OUT/tokenizer.json" | tee "$OUT/tokenizer_stats.json"
[ -f "$OUT/shards/meta.json" ] || $MT prepare --data stdlib --tokenizer "$OUT/tokenizer.json" --out "$OUT/shards" | tee "$OUT/prepare.log"

# 3. both runs at once; the tokenizer comes with the shards, and sets num_tokens and the special ids
COMMON=(--data "shards:$OUT/shards" --preset demo --steps "$STEPS" --warmup-steps 100 --lr 2e-3 --checkpoint-every 200
        --log-every 25 --threads 1 "${MODEL[@]}")
$MT train "${COMMON[@]}" --run-dir "$OUT/memory" > "$OUT/memory.log" 2>&1 &
$MT train "${COMMON[@]}" --memorizing-layers "" --run-dir "$OUT/baseline" > "$OUT/baseline.log" 2>&1 &
wait

# 4. held-out test files: the 16 longest, memory on / off / by size, and the baseline
$MT eval --checkpoint "$OUT/memory" --baseline-checkpoint "$OUT/baseline" --split test \
  --memory-sizes 0,1024,4096,16384,65536 --threads 2 --output "$OUT/eval"
