"""`torchtide tune REPO/MODEL -u HOST:PORT`: the plan (space, start, constraints), the run and
its exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from torchtide.bench import inputs as inp
from torchtide.bench.command import build_sets, parse_url, prepare_requests, say
from torchtide.bench.httpclient import HttpTransport
from torchtide.bench.runner import Runner
from torchtide.bench.transport import TransportError, Unreachable
from torchtide.config import ConfigError, ModelConfig, read_config
from torchtide.tune import configedit as ce
from torchtide.tune import report as rep
from torchtide.tune import space as sp
from torchtide.tune.args import DEFAULT_MAX_CONCURRENCY, UsageError, check_args, parser
from torchtide.tune.control import (
    Applier,
    ApplyError,
    AutoApplier,
    Control,
    ControlRefused,
    ExplicitApplier,
    PollApplier,
    Setup,
)
from torchtide.tune.measure import Measurer
from torchtide.tune.objective import Constraints, Objective
from torchtide.tune.output import header_lines, report_doc, write_outputs
from torchtide.tune.search import SearchResult, Strategy
from torchtide.tune.tuner import Tuner

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class Plan:
    """What the run is about, settled before any load."""

    model: str
    host: str
    port: int
    served: ModelConfig
    file_cfg: ModelConfig | None
    key: str | None
    cores: int
    space: sp.Space
    start: sp.Point
    concurrency: list[int]
    objective: Objective
    constraints: Constraints
    strategy: Strategy

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def make_plan(args: argparse.Namespace, served: ModelConfig, file_cfg: ModelConfig | None) -> Plan:
    host, port = parse_url(args.url, "http")
    cores = args.cores or local_cores()
    key = ce.thread_key(served)
    if args.threads and key is None:
        raise UsageError(
            f"--threads: backend '{ce.backend_of(served)}' has no threads-per-instance parameter"
        )
    batching = served.max_batch_size > 0
    given = [args.max_batch_sizes, args.preferred_batch_sizes, args.max_queue_delays]
    if not batching and any(given):
        raise UsageError("the model does not batch (max_batch_size 0): no batching to tune")
    try:
        space = sp.build(
            cores=cores,
            batching=batching,
            threads_tunable=key is not None,
            current_max_batch=int(served.max_batch_size),
            instances=args.instances,
            threads=args.threads,
            max_batch=args.max_batch_sizes,
            preferred=args.preferred_batch_sizes,
            delays=args.max_queue_delays,
            oversubscribe=args.oversubscribe,
            min_batch=args.batch_size or 1,
        )
        start = space.snap(ce.current_values(served, key, cores))
    except ValueError as e:
        raise UsageError(str(e)) from None
    concurrency = sorted(set(args.concurrency or _powers(DEFAULT_MAX_CONCURRENCY)))
    return Plan(
        model=args.model_dir.resolve().name,
        host=host,
        port=port,
        served=served,
        file_cfg=file_cfg,
        key=key,
        cores=cores,
        space=space,
        start=start,
        concurrency=concurrency,
        objective=Objective(args.objective),
        constraints=Constraints(args.latency_budget_ms, args.min_throughput, args.percentile),
        strategy=Strategy(args.strategy),
    )


def _powers(top: int) -> list[int]:
    return [1 << k for k in range(top.bit_length()) if 1 << k <= top]


def describe_space(plan: Plan, args: argparse.Namespace) -> list[str]:
    space = plan.space
    n = len(space.points())
    dims = {d.value: list(space.values[d]) for d in space.dims}
    now = ce.observed_point(plan.served, plan.key, plan.cores)
    step_s = args.warmup + args.duration
    lines = [
        f"model {plan.model} ({ce.backend_of(plan.served) or 'unknown backend'}), server "
        f"{plan.url}, {plan.cores} cores"
        + ("" if space.oversubscribe else ", instances x threads <= cores"),
        *(f"  {k:<10} {', '.join(map(str, v))}" for k, v in dims.items()),
        f"  {n} distinct configs; the server's config {now.label} starts the quick search at "
        f"{plan.start.label}",
        f"  threads parameter: {plan.key or '(none: not tuned)'}; instance kind written: "
        f"{'KIND_GPU' if ce.instance_kind(plan.served, plan.host) == ce.KIND_GPU else 'KIND_CPU'}",
        f"  per config: concurrency {','.join(map(str, plan.concurrency))} (stops when "
        f"throughput stops growing), {args.warmup:g}+{args.duration:g} s x {args.repeats} per "
        f"step; brute force: at most {n * len(plan.concurrency) * args.repeats * step_s:,.0f} s "
        "of load plus loads",
    ]
    return lines


async def gather_plan(
    args: argparse.Namespace, control: Control, err: Console
) -> tuple[Plan, bytes | None]:
    model = args.model_dir.resolve().name
    path = args.model_dir / "config.pbtxt"
    original = path.read_bytes() if path.is_file() else None
    try:
        file_cfg = read_config(args.model_dir)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    try:
        served = await control.config(model)
    except (TransportError, ValueError) as e:
        if not args.dry_run or file_cfg is None:
            raise TransportError(str(e)) from None
        say(err, f"torchtide tune: {e}; showing the space from {path}")
        served = file_cfg
    return make_plan(args, served, file_cfg), original


def make_applier(args: argparse.Namespace, plan: Plan, control: Control, note: Any) -> Applier:
    setup = Setup(
        model=plan.model,
        served=plan.served,
        key=plan.key,
        kind=ce.instance_kind(plan.served, plan.host),
        cores=plan.cores,
        timeout=args.load_timeout,
    )
    explicit = ExplicitApplier(control, setup)
    base = plan.file_cfg if plan.file_cfg is not None else plan.served
    poll = PollApplier(control, setup, args.model_dir, base)
    if args.control == "explicit":
        return explicit
    if args.control == "poll":
        return poll
    return AutoApplier(explicit, poll, note)


@dataclass
class Outcome:
    result: SearchResult | None = None
    winner: rep.Trial | None = None
    failure: str | None = None
    interrupted: bool = False
    search_s: float = 0.0
    finalists_s: float = 0.0


async def search(
    args: argparse.Namespace, plan: Plan, tuner: Tuner, applier: Applier, header: Any
) -> Outcome:
    """The search and the finalists; whatever happens, the original config (or with --apply
    the winner) is served at the end."""
    out = Outcome()
    t0 = time.monotonic()
    try:
        out.result = await tuner.search(
            plan.strategy, plan.space, plan.start, args.passes, args.min_gain
        )
        out.search_s = time.monotonic() - t0
        out.winner = await tuner.finalists(
            out.result, args.finalists, args.finalist_rounds, args.finalist_margin
        )
        out.finalists_s = time.monotonic() - t0 - out.search_s
    except asyncio.CancelledError:  # Ctrl-C: put the original back, then report
        out.interrupted = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    except ControlRefused as e:
        out.failure = (
            f"the server refuses model loads ({e}): start it with --model-control-mode "
            "explicit, or let tune write config.pbtxt for a polling server (--control poll)"
        )
    except Unreachable as e:
        out.failure = f"lost the server: {e}"
    except (OSError, TransportError, ApplyError) as e:
        out.failure = f"{type(e).__name__}: {e}"
    if out.search_s == 0.0:
        out.search_s = time.monotonic() - t0
    final = out.winner.point if args.apply and out.winner and not out.interrupted else None
    lost = out.failure is not None and out.failure.startswith("lost the server")
    if tuner.touched and not lost:
        tuner.display.doing("restoring the config" if final is None else "applying the best")
        try:
            await applier.restore(final, header(out.winner))
        except (ApplyError, TransportError, OSError) as e:
            what = "apply the best config" if final else "restore the original config"
            out.failure = (out.failure + "; " if out.failure else "") + f"could not {what}: {e}"
    return out


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    t_start = time.monotonic()
    try:
        host, port = parse_url(args.url, "http")
    except Exception as e:
        raise UsageError(str(e)) from None
    control = Control(host, port, args.timeout)
    plan, original = await gather_plan(args, control, err)
    for line in describe_space(plan, args):
        say(out, line)
    if args.dry_run:
        return EXIT_OK
    transport = HttpTransport(host, port, timeout=args.timeout)
    display = rep.Display(err, args.quiet)
    try:
        ns = argparse.Namespace(
            model=plan.model,
            model_version="",
            batch_size=args.batch_size,
            shape=args.shape,
            input_data=args.input_data,
            text_file=args.text_file,
            seed=args.seed,
            string_length=args.string_length,
            output_shm_size=0,
        )
        try:
            info, batching, sets = await build_sets(ns, transport)
            requests = await prepare_requests(ns, transport, info, batching, sets, None)
        except (TransportError, inp.WorkloadError, OSError) as e:
            raise UsageError(str(e)) from None
        runner = Runner(
            transport,
            requests,
            plan.model,
            warmup_s=args.warmup,
            duration_s=args.duration,
            grace_s=args.timeout,
            seed=args.seed,
            batch_size=batching.batch_size,
        )
        applier = make_applier(args, plan, control, display.line)
        if not args.quiet:
            runner.on_tick = display.tick
        measurer = Measurer(
            runner, plan.concurrency, args.repeats, plan.objective, plan.constraints
        )
        tuner = Tuner(applier, measurer, plan.objective, plan.constraints, display)
        with display:
            outcome = await search(args, plan, tuner, applier, lambda w: header_lines(plan, w))
        await runner.close()
    finally:
        await transport.close()
    doc = report_doc(args, plan, tuner, outcome, applier.mode, time.monotonic() - t_start)
    write_outputs(args, plan, tuner, outcome, doc, original, out)
    if outcome.interrupted:
        say(err, "torchtide tune: interrupted; the original config was put back")
        return EXIT_INTERRUPTED
    if outcome.failure is not None:
        say(err, f"torchtide tune: {outcome.failure}")
        return EXIT_FAILED
    if outcome.winner is None:
        say(err, "torchtide tune: no config met the constraints")
        return EXIT_FAILED
    return EXIT_OK


def cmd_tune(argv: list[str]) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    out, err = Console(), Console(stderr=True)
    if not out.is_terminal:
        out = Console(width=160)
    try:
        check_args(args)
        try:
            import uvloop

            return uvloop.run(run(args, out, err))
        except ImportError:  # pragma: no cover - uvloop is a dependency
            return asyncio.run(run(args, out, err))
    except UsageError as e:
        p.print_usage(sys.stderr)
        say(err, f"torchtide tune: error: {e}")
        return EXIT_USAGE
    except TransportError as e:  # unreachable, or the model's config is not served
        say(err, f"torchtide tune: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        say(err, "torchtide tune: interrupted")
        return EXIT_INTERRUPTED
