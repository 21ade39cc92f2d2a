"""A short, bounded fuzzing run of every harness in fuzz/ (atheris): the checked-in seed corpus
first, then mutations for a few seconds. Each harness runs in its own process (libFuzzer exits
the process) and must exit 0: no exception other than the parser's documented error, no input
over the memory or time limit. The long run is `python -m fuzz.run --seconds N`
(scripts/fuzz.sh); what it finds becomes a test in test_fuzz_regressions.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fuzz.run import FUZZ, HARNESSES, command, environment

pytest.importorskip("atheris", reason="atheris (the dev extra) runs the fuzz harnesses")

# About 7 s per harness with its start (importing torchtide under instrumentation); the runs
# bound matters on a fast machine, the time bound on a loaded one.
RUNS = 20_000
SECONDS = 5


def test_every_harness_has_seeds() -> None:
    for harness in HARNESSES:
        seeds = list((FUZZ / "corpus" / harness).iterdir())
        assert len(seeds) >= 3, harness
        assert all(s.stat().st_size < 4096 for s in seeds)


@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzz_briefly(harness: str, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    cmd = command(
        harness,
        f"-runs={RUNS}",
        f"-max_total_time={SECONDS}",
        "-seed=1",
        "-len_control=0",
        f"-artifact_prefix={tmp_path}/",
        corpus=[work, FUZZ / "corpus" / harness],
    )
    proc = subprocess.run(
        cmd,
        cwd=FUZZ.parent,
        env=environment(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
    )
    crashes = [p for p in tmp_path.iterdir() if p.is_file()]
    detail = "".join(f"\n{p.name}: {p.read_bytes()!r}" for p in crashes)
    lines = proc.stderr.splitlines()
    log = "\n".join(line for line in lines if not line.startswith("INFO: Instrument"))
    assert proc.returncode == 0, f"{harness} crashed:{detail}\n{log[-6000:]}"
    assert "Done" in proc.stderr, log[-2000:]
