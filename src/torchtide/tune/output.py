"""`torchtide tune`'s outputs: the report document, the tuned config and its diff beside
config.pbtxt (and config.pbtxt itself with --apply), the report files, the plot, the table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from torchtide import __version__
from torchtide.bench.command import say
from torchtide.tune import configedit as ce
from torchtide.tune import report as rep
from torchtide.tune.objective import Objective

if TYPE_CHECKING:
    from torchtide.tune.command import Outcome, Plan
    from torchtide.tune.tuner import Tuner


def report_doc(
    args: argparse.Namespace, plan: Plan, tuner: Tuner, out: Outcome, mode: str, elapsed: float
) -> dict[str, Any]:
    trials = list(tuner.trials.values())
    start = tuner.trials.get(plan.start)
    gain = None
    w = out.winner
    if (
        w is not None
        and w.best is not None
        and start is not None
        and start.best is not None
        and start.best.throughput > 0
        and plan.objective is Objective.THROUGHPUT
    ):
        gain = w.best.throughput / start.best.throughput
    return {
        "tool": f"torchtide tune {__version__}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": plan.model,
        "url": plan.url,
        "mode": mode,
        "strategy": plan.strategy.value,
        "objective": plan.objective.value,
        "constraints": {
            "latency_budget_ms": plan.constraints.latency_budget_ms,
            "min_throughput": plan.constraints.min_throughput,
            "percentile": plan.constraints.percentile,
        },
        "cores": plan.cores,
        "oversubscribe": plan.space.oversubscribe,
        "space": {d.value: list(plan.space.values[d]) for d in plan.space.dims},
        "points_in_space": len(plan.space.points()),
        "start": {"label": plan.start.label, "point": plan.start.as_dict()},
        "served_before": ce.observed_point(plan.served, plan.key, plan.cores).as_dict(),
        "concurrency": plan.concurrency,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "repeats": args.repeats,
        "finalists": args.finalists,
        "search_s": round(out.search_s, 3),
        "finalists_s": round(out.finalists_s, 3),
        "elapsed_s": round(elapsed, 3),
        "configs_tried": len(trials),
        "interrupted": out.interrupted,
        "failure": out.failure,
        "best": None if w is None else w.as_dict(),
        "gain_vs_start": None if gain is None else round(gain, 4),
        "applied": bool(args.apply and w is not None and not out.interrupted and not out.failure),
        "trials": [t.as_dict() for t in trials],
    }


def header_lines(plan: Plan, winner: rep.Trial | None) -> list[str]:
    lines = [
        f"Tuned by torchtide tune {__version__} on {time.strftime('%Y-%m-%d %H:%M')} against "
        f"{plan.url} ({plan.cores} cores).",
    ]
    b = winner.best if winner is not None else None
    if winner is not None and b is not None:
        p = plan.constraints.percentile
        lines.append(
            f"Best of the configs tried: {winner.point.label}: {b.throughput:,.1f} infer/s at "
            f"concurrency {b.concurrency}, {p} {b.latency(p):,.2f} ms."
        )
    lines.append("The original's comments are not kept; config.tuned.diff shows the changes.")
    return lines


def write_outputs(
    args: argparse.Namespace,
    plan: Plan,
    tuner: Tuner,
    out: Outcome,
    doc: dict[str, Any],
    original: bytes | None,
    console: Console,
) -> None:
    trials = list(tuner.trials.values())
    report_dir = args.report_dir or Path(f"tune-{plan.model}")
    report_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    w = out.winner
    if w is not None and not out.interrupted:
        base = plan.file_cfg if plan.file_cfg is not None else plan.served
        kind = ce.instance_kind(plan.served, plan.host)
        tuned = ce.apply_point(base, w.point, plan.key, kind)
        text = ce.tuned_text(tuned, header_lines(plan, w))
        target = args.model_dir / "config.tuned.pbtxt"
        target.write_text(text)
        diff = args.model_dir / "config.tuned.diff"
        diff.write_text(ce.config_diff(base, tuned, plan.model))
        files |= {"config": str(target), "diff": str(diff)}
        if doc["applied"]:  # poll mode wrote config.pbtxt when it applied the winner
            if original is not None:
                (args.model_dir / "config.pbtxt.before-tune").write_bytes(original)
            if tuner.applier.mode == "explicit":
                (args.model_dir / "config.pbtxt").write_text(text)
            files["applied"] = str(args.model_dir / "config.pbtxt")
    md, js = report_dir / "tune-report.md", report_dir / "tune-report.json"
    files |= {"report_md": str(md), "report_json": str(js)}
    if not args.no_plot and trials:
        png = report_dir / "tune-plot.png"
        rep.plot(png, trials, w, doc)
        files["plot"] = str(png)
    doc["files"] = files
    rep.write_json(js, doc)
    rep.write_markdown(md, doc, trials, w)
    title = (
        f"{plan.model}: {plan.strategy.value} search, objective {plan.objective.value}, "
        f"{len(trials)} of {doc['points_in_space']} configs, {doc['elapsed_s']:.0f} s"
    )
    console.print(rep.table(trials, plan.constraints, w, title))
    for name, path in files.items():
        say(console, f"{name:<12} {path}")
