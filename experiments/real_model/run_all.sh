#!/usr/bin/env bash
# Every number of the real-model results (docs/results/real_model_*.json), in order. About 3 hours on 2 CPU cores
# when run one after another. Needs: bash scripts/setup.sh && bash scripts/install_smollm2.sh runs/real_model/smollm2
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
MODEL=runs/real_model/smollm2
[ -d "$MODEL" ] || bash scripts/install_smollm2.sh "$MODEL"
bash experiments/real_model/fetch_docs.sh
# (a) plain windows and (b) the untrained memory, by size on the code document
$PY -m experiments.real_model.longdoc --model $MODEL --label untrained --documents code --windows 512,2048,8192 --memory-sizes 16384,8192,4096
$PY -m experiments.real_model.longdoc --model $MODEL --label untrained --documents prose,tex --windows 512,2048,8192 --memory-sizes 16384
# (c) only the memory parameters fine-tuned, (d) every weight, 25 minutes each
$PY -m experiments.real_model.finetune --model $MODEL --train memory --minutes 25 --out runs/real_model/ft_memory
$PY -m experiments.real_model.finetune --model $MODEL --train all --minutes 25 --out runs/real_model/ft_all
$PY -m experiments.real_model.longdoc --model runs/real_model/ft_memory/model --label ft_memory --memory-sizes 16384
$PY -m experiments.real_model.longdoc --model runs/real_model/ft_all/model --label ft_all --windows 512,2048 --memory-sizes 16384
# passkey far beyond the trained context
$PY -m experiments.real_model.passkey --model $MODEL --label untrained --lengths 4096,16384,32768 --depths 0.1,0.5,0.9
$PY -m experiments.real_model.passkey --model $MODEL --label untrained --lengths 65536 --depths 0.5
$PY -m experiments.real_model.plot
# cost, alone on the machine
$PY benchmarks/bench_real_model.py --model $MODEL
