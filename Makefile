# The two commands of the README: `make serve` and `make test`. Both set everything up first.
PY := .venv/bin/python
REPO ?= examples/model_repository

.PHONY: setup examples serve test lint bench help

help:
	@echo "make serve   set up, build the example models, serve $(REPO) (HTTP 8000, gRPC 8001, metrics 8002)"
	@echo "make test    set up, then run the whole test suite (ruff, mypy, pytest)"
	@echo "make bench   run the benchmark suite (minutes; not part of the tests)"

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
