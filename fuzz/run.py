"""Run the fuzz harnesses one after the other: `python -m fuzz.run --seconds N [harness ...]`.

Each harness runs as its own process (libFuzzer exits the process when it is done), starting
from the checked-in seeds (fuzz/corpus/<harness>) plus what earlier runs found
(fuzz/work/<harness>, kept between runs and not checked in). An input that crashes is written
to fuzz/crashes/<harness>-crash-<sha1>; turn each into a regression test in
tests/test_fuzz_regressions.py and fix the decoder. Exit status: 0 when no harness crashed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
HARNESSES = ("http_infer", "bytes_elements", "http2_connection", "grpc_infer", "model_config")

# An input is at most 8 KiB, so more than 2 GiB of RSS is an amplification bug (the harnesses
# also cap their address space 2 GiB above their start: _harness.limit_address_space); more
# than 10 s for one input is a hang (the run is slower on a loaded machine, hence the margin).
LIMITS = ("-max_len=8192", "-rss_limit_mb=2048", "-timeout=10")


def command(harness: str, *flags: str, corpus: list[Path]) -> list[str]:
    """The harness's libFuzzer command line, with its dictionary of tokens when it has one."""
    tokens = FUZZ / "dicts" / f"{harness}.dict"
    dictionary = [f"-dict={tokens}"] if tokens.is_file() else []
    return [
        sys.executable,
        "-m",
        f"fuzz.{harness}",
        *LIMITS,
        *dictionary,
        *flags,
        *map(str, corpus),
    ]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def run(harness: str, seconds: int, work: Path, crashes: Path, jobs: int) -> int:
    corpus = work / harness
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-max_total_time={seconds}",
        f"-artifact_prefix={crashes}/{harness}-",
        "-print_final_stats=1",
    ]
    if jobs > 1:
        flags += [f"-fork={jobs}", "-ignore_crashes=1"]
    cmd = command(harness, *flags, corpus=[corpus, FUZZ / "corpus" / harness])
    started = time.monotonic()
    print(f"== {harness}: {seconds} s", flush=True)
    proc = subprocess.run(
        cmd, cwd=ROOT, env=environment(), capture_output=True, text=True, errors="replace"
    )
    log = crashes.parent / "logs" / f"{harness}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    stats = [line for line in proc.stderr.splitlines() if line.startswith("stat::")]
    found = sorted(p.name for p in crashes.glob(f"{harness}-*"))
    print(
        f"   exit {proc.returncode} after {time.monotonic() - started:.0f} s; "
        + "; ".join(s.removeprefix("stat::") for s in stats[:2])
        + f"; corpus {len(list(corpus.iterdir()))} inputs; log {log}",
        flush=True,
    )
    for name in found:
        print(f"   crash input: {crashes / name}")
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("harness", nargs="*", help=f"some of {', '.join(HARNESSES)} (all)")
    parser.add_argument("--seconds", type=int, default=600, help="per harness (default 600)")
    parser.add_argument("--jobs", type=int, default=1, help="libFuzzer -fork workers")
    parser.add_argument("--work", type=Path, default=FUZZ / "work", help="grown corpus")
    parser.add_argument("--crashes", type=Path, default=FUZZ / "crashes")
    args = parser.parse_args(argv)
    unknown = set(args.harness) - set(HARNESSES)
    if unknown:
        parser.error(f"no harness {', '.join(sorted(unknown))}; there are {', '.join(HARNESSES)}")
    failed = [
        h
        for h in args.harness or HARNESSES
        if run(h, args.seconds, args.work, args.crashes, args.jobs) != 0
    ]
    if failed:
        print(f"crashed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
