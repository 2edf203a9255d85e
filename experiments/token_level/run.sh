#!/usr/bin/env bash
# Memory at token level on the paper's kinds of long documents (issue 29, part 4). For each kind fetched by
# scripts/fetch_documents.py (code, proofs, tex, prose) and each seed:
#   1. a 4,096-token byte-level BPE trained on the kind's train split (`tokenizer`), and its shards (`prepare`);
#   2. the demo's recipe on those shards (`demo`): the `small` model with its memorizing layer first and
#      token_shift=3, an 800-step copy warm-up on random token ids (copy:vocab=4096; the
#      circuit forms later than on bytes: the loss fell from 8.3 only after ~330 steps, to 4.4 at 400), then the memory model and an
#      XL-only baseline of the same architecture (its kNN memory off) trained side by side, 1,500 steps of
#      2 x 512 tokens each, one thread each;
#   3. held-out bits per byte: the 4 longest test documents (tex has none: its valid split), cut to 32,768 tokens,
#      memory on / off / by size, and the baseline.
# Usage: python3 scripts/fetch_documents.py runs/documents      (once, about 30 s)
#        bash experiments/token_level/run.sh                    (about 30 minutes per kind and seed on 2 cores)
#        KINDS="code proofs" SEEDS="0 1 2" STEPS=3000 bash experiments/token_level/run.sh
#        KINDS=proofs STEPS=6000 CHECKPOINT_EVERY=1500 TAG=_long bash experiments/token_level/run.sh
#            (runs/token_level/proofs_long_seed0, with checkpoints to evaluate along the way: curve.py)
# Finished runs (OUT/KIND_seedN/eval.json) are skipped. Then: python experiments/token_level/summarize.py OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DOCS=${DOCS:-runs/documents}
OUT=${OUT:-runs/token_level}
KINDS=${KINDS:-code proofs tex prose}
SEEDS=${SEEDS:-0}
STEPS=${STEPS:-1500}
WARMUP=${WARMUP:-800}
VOCAB=${VOCAB:-4096}
SIZES=${SIZES:-0,1024,4096,16384}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-0}  # 0: only the last step's checkpoint
TAG=${TAG:-}                             # in the run folders' names: OUT/KIND${TAG}_seedN
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
for kind in $KINDS; do
  [ -d "$DOCS/$kind" ] || { echo "[token_level] $DOCS/$kind is missing: python3 scripts/fetch_documents.py $DOCS"; exit 1; }
  tok="$OUT/$kind/tokenizer.json" shards="$OUT/$kind/shards"
  mkdir -p "$OUT/$kind"
  [ -f "$tok" ] || $PY -m memorizing_transformers_pytorch tokenizer --data "$DOCS/$kind" --vocab-size "$VOCAB" --out "$tok" \
    > "$OUT/$kind/tokenizer_stats.json"
  [ -f "$shards/meta.json" ] || $PY -m memorizing_transformers_pytorch prepare --data "$DOCS/$kind" --tokenizer "$tok" \
    --out "$shards" > "$OUT/$kind/prepare.log"
  split=test; [ "$kind" = tex ] && split=valid  # pari-doc's test split holds no file of 32 KB or more
  for seed in $SEEDS; do
    run="$OUT/${kind}${TAG}_seed$seed"
    [ -f "$run/eval.json" ] && continue
    echo "[token_level] $(date +%H:%M) $kind seed $seed -> $run (log $run.log)"
    $PY -m memorizing_transformers_pytorch demo --data "shards:$shards" --run-dir "$run" --seed "$seed" \
      --steps "$STEPS" --copy-warmup-steps "$WARMUP" \
      --checkpoint-every "$CHECKPOINT_EVERY" --keep-checkpoints 100 --split "$split" --max-docs 4 --max-doc-bytes 32768 --memory-sizes "$SIZES" \
      > "$run.log" 2>&1 || { echo "[token_level] $kind seed $seed failed; see $run.log"; exit 1; }
    grep -A3 "^memory on" "$run.log" || true
  done
done
echo "[token_level] done; python experiments/token_level/summarize.py $OUT"
