#!/usr/bin/env bash
# Quick start, step 2: set up and run the test suite (no GPU, no network models needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh export,dev
venv="${TRANSPRUNE_VENV:-.venv}"
"$venv/bin/python" -m pytest "$@"
