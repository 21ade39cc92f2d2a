#!/usr/bin/env bash
# Fuzz every parser that reads untrusted bytes (fuzz/, atheris), one harness after the other.
#   scripts/fuzz.sh [seconds per harness, default 600] [harness ...]
# What the runs find stays in fuzz/work/ (the grown corpus) and fuzz/crashes/ (inputs that
# crashed); make each crash a test in tests/test_fuzz_regressions.py, then fix the decoder.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
seconds=${1:-600}
shift || true
PYTHONPATH=src exec "$PY" -m fuzz.run --seconds "$seconds" "$@"
