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

# Tools the tests of deploy/ run (tests/test_deploy.py, tests/test_prometheus.py): Debian's
# `prometheus` package (prometheus and promtool; the tests run the binary themselves, no service
# is needed) and `docker-compose` (validates deploy/docker-compose.yml without a Docker engine).
missing=()
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: the deploy tests need ${missing[*]} (Debian packages) and this machine has no apt-get: install them by hand" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  { command -v prometheus && command -v promtool && command -v docker-compose; } >/dev/null 2>&1 \
    || { echo "setup.sh: installing ${missing[*]} did not provide prometheus, promtool and docker-compose" >&2; exit 1; }
fi
# kubectl (with its built-in kustomize) renders deploy/k8s; it comes with the machine image.
command -v kubectl >/dev/null 2>&1 \
  || { echo "setup.sh: the deploy tests need kubectl (kustomize is built in): install it" >&2; exit 1; }
