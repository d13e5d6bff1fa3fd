#!/usr/bin/env bash
# Quick start, step 2: set up and run the test suite (no GPU, no network models needed).
set -euo pipefail
cd "$(dirname "$0")/.."
# rtx: TensorRT-RTX, whose parser and builder (no GPU needed) build every tiny graph in the tests;
# serve: the HTTP server's stack, which its tests start
bash scripts/setup_env.sh export,dev,rtx,serve
venv="${TRANSPRUNE_VENV:-.venv}"
"$venv/bin/python" -m pytest "$@"
