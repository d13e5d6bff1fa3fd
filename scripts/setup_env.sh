#!/usr/bin/env bash
# Creates (or reuses) .venv and installs transprune editable with the given extras.
# torch is installed first, pinned: on the project machines 2.13.0 is a local CPU wheel, and
# letting a dependency pick torch would pull the newest CUDA build (gigabytes).
# Usage: scripts/setup_env.sh EXTRAS   (e.g. "export,dev")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export,dev}"
venv="${TRANSPRUNE_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
if [[ ",$extras," == *",export,"* ]]; then
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
fi
"$venv/bin/python" -m pip install -q -e ".[$extras]"
