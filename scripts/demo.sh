#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, train a small Memorizing Transformer on the Python standard
# library for a fixed budget (~10 minutes on 2 CPU cores in all), then evaluate held-out bits per byte with the
# memory on, off, and at several sizes. Extra arguments go to `memorizing-transformers demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/memorizing-transformers demo "$@"
