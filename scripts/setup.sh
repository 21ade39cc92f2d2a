#!/usr/bin/env bash
# Creates .venv and installs torchtide with every extra, at the exact versions of constraints.txt.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.torchtide-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, alone (the pinned CPU wheel where the machine has one), so that nothing installed
  # later pulls a CUDA build through pyproject.toml's range.
  .venv/bin/python -m pip install -q -c constraints.txt torch
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[all,dev]"
  touch "$stamp"
fi
