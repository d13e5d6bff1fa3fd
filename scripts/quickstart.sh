#!/usr/bin/env bash
# Quick start, step 1: set up and run the main job on the built-in tiny model: export it
# (validated against the PyTorch reference), then answer a question with the torch-free runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh export
venv="${TRANSPRUNE_VENV:-.venv}"
"$venv/bin/transprune-export" --model tiny --schedule paper --out exports/tiny-paper --force "$@"
"$venv/bin/python" -c "from transprune.sample_image import sample_image; sample_image().save('exports/sample.png')"
"$venv/bin/transprune-run" exports/tiny-paper --image exports/sample.png --prompt "What is shown in this picture?" \
  --max-new-tokens 16
