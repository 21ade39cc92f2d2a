# The two commands of the README: `make serve` and `make test`. Both set everything up first.
PY := .venv/bin/python
REPO ?= examples/model_repository

.PHONY: setup examples serve test lint bench bench-check bench-baseline help

help:
	@echo "make serve   set up, build the example models, serve $(REPO) (HTTP 8000, gRPC 8001, metrics 8002)"
	@echo "make test    set up, then run the whole test suite (ruff, mypy, pytest)"
	@echo "make bench   run the benchmark suite (minutes; not part of the tests)"
	@echo "make bench-check     compare against benchmarks/baselines (exit 3 on a regression)"
	@echo "make bench-baseline  re-record benchmarks/baselines on this machine"

setup:
	@bash scripts/setup.sh

examples: setup
	@HF_HUB_OFFLINE=1 $(PY) scripts/build_examples.py

serve: examples
	HF_HUB_OFFLINE=1 .venv/bin/torchtide serve --model-repository $(REPO)

lint: setup
	.venv/bin/ruff check src tests benchmarks fuzz
	.venv/bin/mypy

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider

bench: examples
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.suite

# Performance regression check for CI on a quiet runner: serve the examples, re-run each
# committed baseline's steps (3 runs each), fail when throughput or p99 moved beyond the
# threshold and the runs' spread. Record the baselines on the runner that checks.
bench-check: examples
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.check

bench-baseline: examples
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.check --record
