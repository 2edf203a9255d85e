#!/usr/bin/env bash
# Generation with memory on real code (not in CI; 60-90 minutes on 2 CPU cores, most of it training).
#  1. Train a small memorizing model on the standard library: the copy warm-up (COPY_WARMUP steps of
#     `memorizing-transformers train --data copy`, memorizing_transformers_pytorch/copy_warmup.py, into RUN.warmup), then STEPS steps from
#     those weights (--init-from). Each is skipped when its folder already holds a finished run.
#  2. Read a held-out stdlib file into memory up to a later use of a name defined far earlier (the first use of a
#     name of 10+ bytes in the longest test file: a rule, not a chosen example), give the name's first two bytes,
#     and decode greedily, with the memory on and then off.
#  3. Measure the same over every such use in the 12 longest test files (first 128 KiB of each):
#     `python -m experiments names`.
# Usage: bash experiments/names/demo.sh    (RUN, STEPS and COPY_WARMUP override the defaults below)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_WAIT_POLICY=PASSIVE
RUN=${RUN:-runs/names/memory}
STEPS=${STEPS:-5000}
COPY_WARMUP=${COPY_WARMUP:-6000}
PY=".venv/bin/python"
MT=".venv/bin/memorizing-transformers"
MODEL=(--dim 128 --depth 2 --heads 4 --dim-head 32 --memorizing-layers 2 --knn-index flat)
bash scripts/setup.sh
printf -v FINAL "%s/checkpoints/step-%07d" "$RUN" "$STEPS"
if [ ! -e "$FINAL" ]; then
  INIT=()
  if [ "$COPY_WARMUP" -gt 0 ] && [ ! -e "$RUN/checkpoints/latest" ]; then  # (a resumed run has its weights)
    WARMUP="$RUN.warmup"
    printf -v WARMUP_FINAL "%s/checkpoints/step-%07d" "$WARMUP" "$COPY_WARMUP"
    if [ ! -e "$WARMUP_FINAL" ]; then
      $PY -m experiments train --data copy --seq-len 128 --batch-size 8 --steps "$COPY_WARMUP" --lr 2e-3 \
        --warmup-steps 100 --min-lr-ratio 1 --weight-decay 0.01 --adam-beta2 0.999 --checkpoint-every 500 \
        --log-every 50 --run-dir "$WARMUP" "${MODEL[@]}" $([ -e "$WARMUP/checkpoints/latest" ] && echo --resume)
    fi
    INIT=(--init-from "$WARMUP")
  fi
  $MT train --run-dir "$RUN" --steps "$STEPS" --warmup-steps 100 --lr 2e-3 "${INIT[@]}" \
    --checkpoint-every 250 --log-every 25 --seq-len 512 --batch-size 2 "${MODEL[@]}" \
    $([ -e "$RUN/checkpoints/latest" ] && echo --resume)
fi

read -r NAME PREFIX < <($PY - "$RUN" <<'PY'
import sys
from pathlib import Path

from experiments.names import find_long_range_names, name_mentions
from memorizing_transformers_pytorch.data import load_documents
from memorizing_transformers_pytorch.evaluate import select_documents

text = select_documents(load_documents("stdlib", "test"), max_docs=1, max_doc_bytes=None)[0].tobytes()
name, offset = next(case for case in find_long_range_names(text, min_distance=4096) if len(case[0]) >= 10)
previous = name_mentions(text[:offset], name.encode())[-1]
Path(sys.argv[1], "context.py").write_bytes(text[:offset])
print(f"[names demo] {len(text[:offset]):,} bytes read; `{name}` was last seen {offset - previous:,} bytes back",
      file=sys.stderr)
print(name, name[:2])
PY
)
for SIZE in 16384 0; do
  echo "[names demo] memory size $SIZE: the name is $NAME; greedy continuation after '$PREFIX':"
  $MT generate --checkpoint "$RUN" --context-file "$RUN/context.py" --prompt "$PREFIX" --max-new-tokens 24 \
    --temperature 0 --memory-size "$SIZE"
done
$PY -m experiments names --checkpoint "$RUN" --memory-sizes 0,16384 --max-docs 12 --max-doc-bytes 131072 \
  --min-distance 4096 --output "$RUN/names.json"
