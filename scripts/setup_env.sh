#!/usr/bin/env bash
# Creates (or reuses) .venv and installs transprune editable with the given extras.
# torch is installed first, pinned: on the project machines 2.13.0 is a local CPU wheel, and
# letting a dependency pick torch would pull the newest CUDA build (gigabytes).
# pip's and setuptools' own chatter (e.g. setuptools' note on editable installs, which a user
# cannot act on) goes to $venv/setup.log: one line per step here, the log's tail if a step fails.
# Usage: scripts/setup_env.sh EXTRAS   (e.g. "export,dev")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export,dev}"
venv="${TRANSPRUNE_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
log="$venv/setup.log"
: > "$log"

step() {  # step DESCRIPTION pip-arguments...
  local what="$1"; shift
  echo "setup: $what" >&2
  if ! "$venv/bin/python" -m pip install -q "$@" >>"$log" 2>&1; then
    echo "setup: failed: $what; the last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}

step "pip" --upgrade pip
if [[ ",$extras," == *",export,"* ]]; then
  step "torch 2.13.0 (CPU)" "torch==2.13.0"
fi
step "transprune[$extras] (editable)" -e ".[$extras]"
