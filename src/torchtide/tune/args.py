"""`torchtide tune`'s arguments: the parser, value types and checks made before any call."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from torchtide.tune import space as sp
from torchtide.tune.objective import Objective
from torchtide.tune.search import Strategy

DEFAULT_MAX_CONCURRENCY = 64


class UsageError(Exception):
    pass


def _ints(minimum: int) -> Any:
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected whole numbers separated by commas, got '{text}'"
            ) from None
        if not values or any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"expected numbers >= {minimum}, got '{text}'")
        return values

    return parse


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got '{text}'")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'")
    return v


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchtide tune",
        description="Search a model's serving config (instance count x threads per instance x "
        "max_batch_size x preferred_batch_size x max_queue_delay_microseconds) against a live "
        "server, measuring each candidate with the bench's closed-loop load over a "
        "concurrency sweep. Candidates are loaded with the repository API's config override "
        "(explicit mode) or written to config.pbtxt for the server's poll; the server's "
        "original config is put back at the end. Writes config.tuned.pbtxt and "
        "config.tuned.diff beside config.pbtxt, a report and a plot.",
        formatter_class=_Formatter,
        epilog="Exit status: 0 a best config was found, 1 no config met the constraints or the "
        "run failed (server lost, original config not restored), 2 usage error or unreachable "
        "server, 130 interrupted (Ctrl-C; the original config is restored first).",
    )
    p.add_argument("model_dir", type=Path, metavar="REPO/MODEL", help="the model's folder")
    p.add_argument("-u", "--url", help="the server's HTTP HOST:PORT (default localhost:8000)")
    search = p.add_argument_group("search")
    search.add_argument(
        "--strategy",
        choices=[s.value for s in Strategy],
        default=Strategy.QUICK.value,
        help="quick: hill climb from the server's config; brute: every point of the space",
    )
    search.add_argument(
        "--objective",
        choices=[o.value for o in Objective],
        default=Objective.THROUGHPUT.value,
        help="maximise throughput, or minimise the latency percentile",
    )
    search.add_argument(
        "--latency-budget-ms",
        type=_number,
        metavar="MS",
        help="constraint: the latency percentile must stay at or under MS",
    )
    search.add_argument(
        "--min-throughput",
        type=_number,
        metavar="N",
        help="constraint: at least N infer/s",
    )
    search.add_argument(
        "--percentile", choices=["p50", "p90", "p95", "p99"], default="p99", help="latency measure"
    )
    search.add_argument(
        "--passes", type=int, default=1, help="quick search: passes over the dimensions at most"
    )
    search.add_argument(
        "--min-gain",
        type=float,
        default=0.02,
        help="quick search: a move must gain this fraction (noise alone should not move it)",
    )
    search.add_argument(
        "--finalists",
        type=_count,
        default=2,
        help="re-measure the best N configs in turn before crowning one (0 or 1: off)",
    )
    search.add_argument(
        "--finalist-rounds", type=_count, default=1, help="re-measurements of each finalist"
    )
    search.add_argument(
        "--finalist-margin",
        type=float,
        default=0.1,
        help="only configs within this fraction of the best are finalists (a clear winner is "
        "not re-measured)",
    )
    space = p.add_argument_group("space (defaults sized for --cores)")
    space.add_argument("--instances", type=_ints(1), metavar="N[,N...]", help="instance counts")
    space.add_argument("--threads", type=_ints(1), metavar="N[,N...]", help="threads per instance")
    space.add_argument(
        "--max-batch-sizes",
        type=_ints(1),
        metavar="N[,N...]",
        help="max_batch_size values (default: powers of four up to the config's, and the config's)",
    )
    space.add_argument(
        "--preferred-batch-sizes",
        type=_ints(0),
        metavar="N[,N...]",
        help="preferred_batch_size values; 0 = none (default: 0)",
    )
    space.add_argument(
        "--max-queue-delays",
        type=_ints(0),
        metavar="US[,US...]",
        help=f"max_queue_delay_microseconds values (default: "
        f"{','.join(map(str, sp.DEFAULT_DELAYS_US))})",
    )
    space.add_argument(
        "--cores",
        type=int,
        default=None,
        help="the server host's cores (default: this host's; give it for a remote server)",
    )
    space.add_argument(
        "--oversubscribe",
        action="store_true",
        help="also try instances x threads above --cores",
    )
    load = p.add_argument_group("load (the bench's)")
    load.add_argument(
        "--concurrency",
        type=_ints(1),
        metavar="N[,N...]",
        help=f"concurrency sweep, stopped early once throughput stops growing (default: powers "
        f"of two up to {DEFAULT_MAX_CONCURRENCY})",
    )
    load.add_argument("--duration", type=_number, default=2.0, metavar="S", help="s per step")
    load.add_argument("--warmup", type=float, default=0.5, metavar="S", help="warm-up per step")
    load.add_argument("--repeats", type=int, default=1, help="measurements per step (median)")
    load.add_argument("-b", "--batch-size", type=int, default=None, help="request batch size")
    load.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2",
        help="dims of an input's -1 dims (without the batch dim); others -1 become 1",
    )
    data = load.add_mutually_exclusive_group()
    data.add_argument("--input-data", type=Path, metavar="FILE", help="perf_analyzer JSON data")
    data.add_argument("--text-file", type=Path, metavar="FILE", help="text for BYTES inputs")
    load.add_argument("--string-length", type=int, default=16, help="length of random BYTES")
    load.add_argument("--seed", type=int, default=0, help="seed for random data")
    load.add_argument(
        "--timeout",
        type=_number,
        default=30.0,
        metavar="S",
        help="control calls' timeout and how long a step waits for requests in flight",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--control",
        choices=["auto", "explicit", "poll"],
        default="auto",
        help="how candidates reach the server: explicit loads with a config override, or "
        "config.pbtxt and the server's poll (auto: explicit, else poll)",
    )
    out.add_argument(
        "--load-timeout", type=_number, default=120.0, metavar="S", help="per candidate load"
    )
    out.add_argument(
        "--apply",
        action="store_true",
        help="leave the best config serving and write it to config.pbtxt (the old file is "
        "kept as config.pbtxt.before-tune)",
    )
    out.add_argument(
        "--report-dir",
        type=Path,
        metavar="DIR",
        help="where tune-report.{json,md} and tune-plot.png go (default ./tune-MODEL)",
    )
    out.add_argument("--no-plot", action="store_true", help="no plot (it needs matplotlib)")
    out.add_argument(
        "--dry-run", action="store_true", help="print the search space and start point only"
    )
    out.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    return p


def check_args(args: argparse.Namespace) -> None:
    if not args.model_dir.is_dir():
        raise UsageError(f"no such model folder: {args.model_dir}")
    for f in (args.input_data, args.text_file):
        if f is not None and not f.is_file():
            raise UsageError(f"no such file: {f}")
    if args.cores is not None and args.cores < 1:
        raise UsageError("--cores must be at least 1")
    if args.passes < 1 or args.repeats < 1 or args.warmup < 0:
        raise UsageError("--passes and --repeats must be at least 1, --warmup at least 0")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.report_dir is not None and not args.report_dir.parent.is_dir():
        raise UsageError(f"cannot write {args.report_dir}: no such directory")
    if not args.no_plot and not args.dry_run and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("the plot needs matplotlib (pip install 'torchtide[plot]'), or --no-plot")
