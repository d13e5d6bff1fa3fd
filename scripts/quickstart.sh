#!/usr/bin/env bash
# Quick start, step 1: set up and run the main job (export the built-in tiny model, validated).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh export
venv="${TRANSPRUNE_VENV:-.venv}"
"$venv/bin/transprune-export" --model tiny --schedule paper --out exports/tiny-paper --force "$@"
