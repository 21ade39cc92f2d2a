"""What Triton-style tracing costs on W1 add_sub (WORKLOADS.md): tracing off, at rate 1000
(tritonserver's default rate: one request in 1000 traced) and at rate 1 (every request traced,
written to the trace file), in the same run.

Three `torchtide serve` processes run side by side, one per setting; `torchtide bench` measures
each in turn (c=1 p50 latency, c=32 throughput) in short slices whose order rotates every round,
so that drift on a shared machine hits all three alike. Ratios are taken per round against the
"off" slice of that round; the table shows medians. The server's own CPU time per request
(process CPU over the c=32 slice / requests it completed, from its statistics) is the steadier
figure on a loaded machine.

    python -m benchmarks.trace_overhead [--rounds 5] [--seconds 3] [--protocols http,grpc]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.models import write_add_sub  # noqa: E402

from benchmarks.suite import bench, free_port  # noqa: E402

BIN = Path(sys.executable).parent
SETTINGS = {
    "off": [],
    "rate 1000": ["--trace-config", "rate=1000", "--trace-config", "level=TIMESTAMPS"],
    "rate 1": ["--trace-config", "rate=1", "--trace-config", "level=TIMESTAMPS"],
}


def start(
    repo: Path, trace_file: Path, flags: list[str]
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    import time
    import urllib.request

    ports = {"http": free_port(), "grpc": free_port()}
    cmd = [
        str(BIN / "torchtide"), "serve", "--model-repository", str(repo),
        "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
        "--allow-metrics", "false", "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
        "--log-info", "false",
    ]  # fmt: skip
    if flags:
        cmd += ["--trace-config", f"triton,file={trace_file}", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            url = f"http://127.0.0.1:{ports['http']}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return proc, ports
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become ready")


def completed(port: int) -> int:
    """Successful inferences the server has counted for add_sub (statistics extension)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/add_sub/stats") as r:
        return int(json.load(r)["model_stats"][0]["inference_stats"]["success"]["count"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per slice")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--protocols", default="http,grpc")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tt-trace-bench-"))
    repo = tmp / "repo"
    write_add_sub(repo)
    servers = {
        name: start(repo, tmp / f"trace-{i}.json", flags)
        for i, (name, flags) in enumerate(SETTINGS.items())
    }
    names = list(SETTINGS)
    # results[protocol][metric][setting] = per-round values
    res: dict[str, dict[str, dict[str, list[float]]]] = {}
    try:
        for proto in args.protocols.split(","):
            r = res[proto] = {k: {n: [] for n in names} for k in ("p50", "tput", "cpu")}
            for rnd in range(args.rounds):
                order = names[rnd % 3 :] + names[: rnd % 3]
                for name in order:
                    port = servers[name][1][proto]
                    one: dict[str, Any] = bench(
                        "add_sub", port, proto, 1, args.seconds, args.warmup, None
                    )
                    proc = psutil.Process(servers[name][0].pid)
                    cpu0, n0 = sum(proc.cpu_times()[:2]), completed(servers[name][1]["http"])
                    many: dict[str, Any] = bench(
                        "add_sub", port, proto, 32, args.seconds, args.warmup, None
                    )
                    cpu1, n1 = sum(proc.cpu_times()[:2]), completed(servers[name][1]["http"])
                    r["cpu"][name].append((cpu1 - cpu0) / max(1, n1 - n0) * 1e6)
                    r["p50"][name].append(one["p50_ms"] * 1000)
                    r["tput"][name].append(many["throughput"])
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    med = statistics.median
    print(
        f"\nW1 add_sub, {args.rounds} rounds of {args.seconds:g} s slices per setting, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    print(
        "| protocol | tracing | c=1 p50 µs | ratio to off | c=32 infer/s | ratio to off "
        "| server CPU µs/request (c=32) | ratio to off |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for proto, r in res.items():
        for name in names:
            p50 = [a / b for a, b in zip(r["p50"][name], r["p50"]["off"], strict=True)]
            tput = [a / b for a, b in zip(r["tput"][name], r["tput"]["off"], strict=True)]
            cpu = [a / b for a, b in zip(r["cpu"][name], r["cpu"]["off"], strict=True)]
            print(
                f"| {proto} | {name} | {med(r['p50'][name]):.0f} | {med(p50):.3f} | "
                f"{med(r['tput'][name]):,.0f} | {med(tput):.3f} | "
                f"{med(r['cpu'][name]):.0f} | {med(cpu):.3f} |"
            )
    print(
        "\nRatios: median over rounds of (setting / off in the same round); p50 > 1 and "
        "throughput < 1 and CPU > 1 are costs."
    )


if __name__ == "__main__":
    main()
