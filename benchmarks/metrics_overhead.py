"""What torchtide's latency histograms cost on W1 add_sub (WORKLOADS.md), in-process.

Closed-loop requests/s through InferenceServer at concurrency 64 with the histograms on
(`ServerOptions.latency_histograms`, the default) and off: two servers side by side, measured in
short alternating slices so that drift on a shared machine hits both alike; the ratio is taken
per pair of slices and its median reported. Also: the cost of one histogram observation, and
of rendering the metrics page.
Triton's own counters cost nothing extra: they are the statistics counters, read at scrape time.

Run: `python benchmarks/metrics_overhead.py [--seconds 0.5] [--pairs 30]`. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402
from tests.models import write_add_sub  # noqa: E402

from benchmarks.engine import engine_rate  # noqa: E402
from torchtide.metrics import ServerCollector, exposition  # noqa: E402
from torchtide.server import InferenceServer, ServerOptions  # noqa: E402
from torchtide.stats import Duration, Histogram  # noqa: E402

CONCURRENCY = 64


async def rate(server: InferenceServer, seconds: float) -> tuple[float, float, float]:
    """requests/s, mean batch size and CPU µs per request at CONCURRENCY."""
    return await engine_rate(server, CONCURRENCY, seconds)


async def run(seconds: float, pairs: int) -> dict[str, list[float]]:
    """Two servers live side by side, histograms on and off; slices of `seconds` alternate
    between them (ABBA order) so that load from elsewhere on the machine hits both alike."""
    repo = Path(tempfile.mkdtemp(prefix="tt-metrics-bench-"))
    write_add_sub(repo)
    servers = {
        h: InferenceServer(ServerOptions([repo], latency_histograms=h)) for h in (True, False)
    }
    for server in servers.values():
        await server.start()
        await rate(server, 0.5)  # warm-up
    keys = ("on", "off", "ratio", "batch", "cpu_on", "cpu_off", "cpu_ratio")
    out: dict[str, list[float]] = {k: [] for k in keys}
    try:
        for i in range(pairs):
            got = {}
            for h in (True, False) if i % 2 == 0 else (False, True):
                got[h] = await rate(servers[h], seconds)
            out["on"].append(got[True][0])
            out["off"].append(got[False][0])
            out["ratio"].append(got[True][0] / got[False][0])
            out["batch"].append((got[True][1] + got[False][1]) / 2)
            out["cpu_on"].append(got[True][2])
            out["cpu_off"].append(got[False][2])
            out["cpu_ratio"].append(got[False][2] / got[True][2])  # as a throughput ratio
        registry = CollectorRegistry()
        registry.register(ServerCollector(servers[True], cpu=False, gpu=False))
        n = 200
        out["render"] = [timeit.timeit(lambda: exposition(registry), number=n) / n * 1e6]
    finally:
        for server in servers.values():
            await server.stop()
    return out


def observe_cost_ns() -> tuple[float, float]:
    """ns per Duration.add with and without a histogram (the hot-path cost per stage)."""
    n = 100_000  # short repeats, best of many: the quiet moments of a shared machine
    plain, hist = Duration(), Duration(hist=Histogram())
    t_plain = min(timeit.repeat(lambda: plain.add(1_234_567), number=n, repeat=40))
    t_hist = min(timeit.repeat(lambda: hist.add(1_234_567), number=n, repeat=40))
    return t_plain / n * 1e9, t_hist / n * 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=0.5, help="seconds per slice")
    p.add_argument("--pairs", type=int, default=30, help="on/off slice pairs")
    args = p.parse_args()
    try:
        import uvloop

        res = uvloop.run(run(args.seconds, args.pairs))
        loop = "uvloop"
    except ImportError:
        res = asyncio.run(run(args.seconds, args.pairs))
        loop = "asyncio"
    plain_ns, hist_ns = observe_cost_ns()
    med = statistics.median
    print(
        f"\nW1 add_sub, in-process, concurrency {CONCURRENCY}, {loop}, {args.pairs} pairs of "
        f"{args.seconds:g} s slices, mean batch {med(res['batch']):.1f}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    print("| histograms | req/s (median slice) | CPU µs per request (median slice) |")
    print("|---|---:|---:|")
    for key in ("on", "off"):
        print(f"| {key} | {med(res[key]):,.0f} | {med(res['cpu_' + key]):.1f} |")
    print(f"| **on/off** | **{med(res['ratio']):.3f}** | **{med(res['cpu_ratio']):.3f}** |")
    for name, key in (("req/s", "ratio"), ("CPU", "cpu_ratio")):
        q = statistics.quantiles(res[key], n=4)
        print(
            f"\n{name} on/off: median of per-pair ratios, quartiles {q[0]:.3f} to {q[2]:.3f}",
            end="",
        )
    print(" (CPU ratio = off CPU per request / on CPU per request: on/off as throughput)")
    extra_ns = 3 * (hist_ns - plain_ns)  # success, queue and compute_infer: 3 per request
    print(
        f"\nDuration.add: {plain_ns:.0f} ns plain, {hist_ns:.0f} ns with a histogram: "
        f"+{extra_ns:.0f} ns per request (3 observations), "
        f"{extra_ns / 10 / med(res['cpu_off']):.1f}% of the CPU per request with them off"
    )
    print(f"rendering /metrics for one model: {med(res['render']):.0f} µs")


if __name__ == "__main__":
    main()
