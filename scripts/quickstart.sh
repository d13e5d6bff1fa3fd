#!/usr/bin/env bash
# Quick start, step 1: set up and run the main job on the built-in tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh export
venv="${TRANSPRUNE_VENV:-.venv}"
"$venv/bin/transprune-flops" --model llava-1.5-7b --schedule paper
"$venv/bin/transprune-reference" --model tiny --schedule paper "$@"
