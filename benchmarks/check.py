"""Performance regression check: the example repository served, then `torchtide bench --compare`
against each committed baseline in benchmarks/baselines/ (`make bench-check`).

    python -m benchmarks.check                # compare; exit 3 if a step regressed
    python -m benchmarks.check --record       # (re)write the baselines on this machine

A baseline holds what one machine measured: record it on the machine that checks (a quiet CI
runner, nothing else running), commit it, and re-record it when a change is meant to move the
figures. Each step runs `--repeat` times; a step fails when its median throughput falls, or its
p99 rises, beyond the threshold or the spread of its runs, whichever is larger (see
docs/bench.md, "Regression checks").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.suite import BIN, ROOT, free_port, start_server

BASELINES = Path(__file__).resolve().parent / "baselines"


@dataclass(frozen=True)
class Spec:
    """One baseline file: a model, a protocol and its steps."""

    name: str
    model: str
    protocol: str
    concurrency: str
    duration: float
    warmup: float
    repeat: int = 3


SPECS = [
    Spec("add_sub-http", "add_sub", "http", "1,8", 5, 1),
    Spec("add_sub-grpc", "add_sub", "grpc", "1,8", 5, 1),
    Spec("resnet18-grpc", "resnet18", "grpc", "8", 10, 2),
]


def bench(args: list[str]) -> int:
    print("$ torchtide bench " + " ".join(args), flush=True)
    return subprocess.run([str(BIN / "torchtide"), "bench", *args], check=False).returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--record", action="store_true", help="write the baselines instead")
    p.add_argument("--dir", type=Path, default=BASELINES, help="baseline directory")
    p.add_argument("--threshold", default="10", help="throughput fall accepted, percent")
    p.add_argument("--p99-threshold", default="25", help="p99 rise accepted, percent")
    args = p.parse_args()
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_examples.py")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    files = sorted(args.dir.glob("*.json"))
    if not args.record and not files:
        print(f"no baselines in {args.dir}: record them with --record", file=sys.stderr)
        return 2
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    server = start_server(ports["http"], ports["grpc"], ports["metrics"])
    codes: dict[str, int] = {}
    try:
        if args.record:
            args.dir.mkdir(parents=True, exist_ok=True)
            for s in SPECS:
                codes[s.name] = bench(
                    [s.model, "-i", s.protocol, "-u", f"127.0.0.1:{ports[s.protocol]}",
                     "--concurrency", s.concurrency, "--duration", str(s.duration),
                     "--warmup", str(s.warmup), "--repeat", str(s.repeat),
                     "--json", str(args.dir / f"{s.name}.json"), "-q"]
                )  # fmt: skip
        else:
            for f in files:
                protocol = json.loads(f.read_text()).get("protocol", "http")
                codes[f.stem] = bench(
                    ["-u", f"127.0.0.1:{ports[protocol]}", "--compare", str(f),
                     "--threshold", args.threshold, "--p99-threshold", args.p99_threshold, "-q"]
                )  # fmt: skip
    finally:
        server.terminate()
        server.wait(60)
    print()
    for name, rc in codes.items():
        verdict = {0: "ok", 1: "errors", 2: "could not run", 3: "REGRESSION"}.get(rc, f"exit {rc}")
        print(f"{name}: {verdict}")
    if any(rc == 3 for rc in codes.values()):
        return 3
    return max(codes.values(), default=0)


if __name__ == "__main__":
    sys.exit(main())
