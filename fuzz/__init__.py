"""Coverage-guided fuzzing of the parsers that read untrusted bytes (atheris + libFuzzer).

Each harness is a module with `test_one_input(data)`; run one with
`PYTHONPATH=src python -m fuzz.<harness> [libFuzzer flags] fuzz/corpus/<harness>`, all of them
with `python -m fuzz.run --seconds N` (or `scripts/fuzz.sh N`). A crash is any exception other
than the parser's documented error type; libFuzzer writes the input that caused it to a
`crash-*` file, and each one found becomes a regression test in tests/test_fuzz_regressions.py.
"""
