"""`torchtide optimize REPO/MODEL`: the command line over `torchtide.optimize.optimize`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rich.console import Console
from rich.table import Table

from torchtide.optimize.candidates import CANDIDATES
from torchtide.optimize.pipeline import (
    OptimizeError,
    OptimizeOptions,
    OptimizeResult,
    Progress,
    Variant,
    optimize,
)
from torchtide.optimize.samples import SampleError
from torchtide.optimize.source import SourceError
from torchtide.optimize.timing import TimingOptions

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

_STYLE = {
    "selected": "bold green",
    "passed": "green",
    "refused": "yellow",
    "failed": "red",
    "skipped": "dim",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchtide optimize",
        description="Make a served model faster without changing what it answers: build its "
        "variants (" + ", ".join(CANDIDATES) + "), gate each one's accuracy against the "
        "served version, time it against the served version (interleaved, same process), and "
        "write the fastest that passes as a new version folder (the old one is kept; "
        "--rollback undoes it). Reports go to MODEL/optimize/. Exit status: 0 done (also when "
        "nothing beat the served version), 1 the optimization failed, 2 usage error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", type=Path, metavar="REPO/MODEL", help="a model folder of a repository")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "int8"],
        default="fp32",
        help="the lossiest tier allowed: fp32 = lossless only; bf16 and int8 need real samples",
    )
    p.add_argument(
        "--candidates",
        default="",
        metavar="A,B,...",
        help="variants to try (default: all); eager, the served version, is always measured",
    )
    p.add_argument(
        "--samples",
        type=Path,
        metavar="FILE",
        help='sample inputs: the bench\'s JSON data file ({"data": [...]}) or an .npz of '
        "arrays named like the inputs (default: model_warmup data files, else random data)",
    )
    p.add_argument("--num-samples", type=int, default=32, help="random samples when none given")
    p.add_argument("--objective", choices=["throughput", "latency"], default="throughput")
    p.add_argument(
        "--latency-budget-ms",
        type=float,
        help="a winner's call at the largest timed batch must take at most this (q10 latency)",
    )
    p.add_argument(
        "--min-gain", type=float, default=1.05, help="speed-up a variant needs to be chosen"
    )
    p.add_argument(
        "--batch-sizes",
        default="",
        metavar="1,8",
        help="batch sizes timed (default: 1 and the largest preferred size, else min(max, 8))",
    )
    p.add_argument("--block-seconds", type=float, default=1.0, help="seconds per timing block")
    p.add_argument("--max-rounds", type=int, default=8, help="timing rounds at most")
    p.add_argument(
        "--select",
        metavar="VARIANT",
        help="write this variant if it passes its accuracy gate, whatever its speed",
    )
    p.add_argument(
        "--time-failed",
        action="store_true",
        help="also time variants that fail their accuracy gate (for the report; never chosen)",
    )
    p.add_argument("--dry-run", action="store_true", help="report only; write no version")
    p.add_argument("--report-dir", type=Path, help="where reports go (default: MODEL/optimize)")
    p.add_argument(
        "--rollback",
        action="store_true",
        help="delete the newest version written by optimize and restore the config it replaced",
    )
    return p


class RichProgress(Progress):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.status = console.status("starting")

    def step(self, variant: str, text: str) -> None:
        self.status.update(f"[bold]{variant}[/]: {text}")

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/] {text}")

    def done(self, v: Variant) -> None:
        style = _STYLE[v.status.value]
        speed = "  ".join(f"b{s.batch} {s.ratio:.2f}x" for s in v.speed)
        reason = f" - {v.reason}" if v.reason else ""
        self.console.print(f"[{style}]{v.status.value:>8}[/] {v.name:<14} {speed}{reason}")


def _table(r: OptimizeResult) -> Table:
    t = Table(title=f"{r.model}: variants against version {r.source_version} ({r.source_kind})")
    for col in (
        "variant",
        "status",
        *[f"b{b} x eager" for b in r.batch_sizes],
        "cos min",
        "build s",
    ):
        t.add_column(col)
    for v in r.variants:
        speeds = []
        for b in r.batch_sizes:
            s = next((x for x in v.speed if x.batch == b), None)
            speeds.append(f"{s.ratio:.2f} ({s.spread[0]:.2f}-{s.spread[1]:.2f})" if s else "-")
        cos = (
            f"{min(o.cos_min for o in v.accuracy.outputs):.5f}"
            if v.accuracy and v.accuracy.outputs
            else "-"
        )
        style = _STYLE[v.status.value]
        t.add_row(v.name, f"[{style}]{v.status.value}[/]", *speeds, cos, f"{v.build_s:.1f}")
    return t


def _ints(text: str) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,8, got '{text}'") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("batch sizes must be at least 1")
    return values


def cmd_optimize(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    console = Console(stderr=True)
    logging.getLogger("torchtide").addHandler(logging.NullHandler())
    logging.getLogger("torchtide").propagate = False
    if args.rollback:
        from torchtide.optimize.writer import PublishError, rollback

        try:
            console.print(rollback(args.model))
        except PublishError as e:
            console.print(f"[red]error:[/] {e}")
            return EXIT_USAGE
        return EXIT_OK
    try:
        opts = OptimizeOptions(
            precision=args.precision,
            candidates=[c.strip() for c in args.candidates.split(",") if c.strip()] or None,
            samples=args.samples,
            num_generated=args.num_samples,
            objective=args.objective,
            min_gain=args.min_gain,
            select=args.select,
            latency_budget_ms=args.latency_budget_ms,
            batch_sizes=_ints(args.batch_sizes),
            timing=TimingOptions(block_s=args.block_seconds, max_rounds=args.max_rounds),
            dry_run=args.dry_run,
            time_failed=args.time_failed,
            report_dir=args.report_dir,
        )
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    progress = RichProgress(console)
    try:
        with progress.status:
            result = optimize(args.model, opts, progress=progress)
    except (SourceError, SampleError, ValueError) as e:
        console.print(f"[red]error:[/] {e}")
        return EXIT_USAGE
    except OptimizeError as e:
        console.print(f"[red]error:[/] {e}")
        return EXIT_FAIL
    console.print(_table(result))
    if result.new_version is not None:
        console.print(
            f"[bold green]wrote[/] {args.model}/{result.new_version} ({result.winner}); "
            f"{result.policy_note}; previous config kept as config.pbtxt.v"
            f"{result.source_version} (undo: torchtide optimize --rollback {args.model})"
        )
    elif result.winner != "eager":
        console.print(f"winner {result.winner} (dry run: nothing written)")
    else:
        console.print("the served version stays: no variant was clearly faster and accurate")
    console.print("reports: " + ", ".join(str(x) for x in result.reports))
    return EXIT_OK
