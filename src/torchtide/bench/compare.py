"""`torchtide bench --compare BASELINE.json`: re-run a saved run's steps and judge each one.

A step regresses when its throughput falls, or its p99 latency rises, by more than the larger
of the threshold and the step's noise band. The noise band is the relative spread (max - min
over the median) of the step's repeated runs (`--repeat`), now and in the baseline when it was
saved with repeats: a difference no larger than the run-to-run spread is not evidence.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from torchtide.bench.runner import Mode, Step, StepResult

# baseline run field -> the argument it sets, when the command line does not give it
INHERITED = {
    "model": "model",
    "model_version": "model_version",
    "protocol": "protocol",
    "batch_size_arg": "batch_size",  # as given (None: the tool decides), not as decided
    "duration_s": "duration",
    "warmup_s": "warmup",
    "input_tensor_format": "input_tensor_format",
    "shared_memory": "shared_memory",
    "grpc_client": "grpc_client",
    "shape": "shape",
    "string_length": "string_length",
    "seed": "seed",
}
FILES = {"input_data": "input_data", "text_file": "text_file"}
NOISY = 0.5  # a throughput band this wide cannot show a regression worth the name


class BaselineError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class BaseStep:
    step: Step
    throughput: float
    p99_ms: float
    throughput_runs: tuple[float, ...]
    p99_runs: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Baseline:
    path: Path
    info: dict[str, Any]
    steps: list[BaseStep]


def _number(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def load(path: Path) -> Baseline:
    """A file written by `torchtide bench --json`."""
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as e:
        raise BaselineError(f"cannot read {path}: {e.strerror or e}") from None
    except orjson.JSONDecodeError as e:
        raise BaselineError(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list) or not doc["steps"]:
        raise BaselineError(f"{path} is not a `torchtide bench --json` file (no steps)")
    steps = []
    for i, s in enumerate(doc["steps"]):
        try:
            step = Step(Mode(s["mode"]), float(s["value"]))
            tput = float(s["throughput"])
        except (KeyError, TypeError, ValueError):
            raise BaselineError(f"{path}: step {i + 1} has no mode, value and throughput") from None
        runs = s.get("runs") if isinstance(s.get("runs"), dict) else {}
        steps.append(
            BaseStep(
                step,
                tput,
                _number(s.get("p99_ms")),
                tuple(_number(x) for x in runs.get("throughput", [])),
                tuple(_number(x) for x in runs.get("p99_ms", [])),
            )
        )
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise BaselineError(f"{path} names no model")
    return Baseline(path, doc, steps)


def apply(base: Baseline, args: argparse.Namespace, given: set[str]) -> list[str]:
    """Take the baseline's settings where the command line gives none; refuse new steps.
    Returns the settings that differ from the baseline's, for the report."""
    if "concurrency" in given or "request_rate" in given:
        raise BaselineError(
            "--compare re-runs the baseline's steps; leave out --concurrency and --request-rate"
        )
    differ = []
    for key, dest in INHERITED.items():
        if key not in base.info:
            continue
        if dest in given:
            if getattr(args, dest) != base.info[key]:
                differ.append(f"{dest} {getattr(args, dest)} (baseline {base.info[key]})")
        else:
            setattr(args, dest, base.info[key])
    inputs = base.info.get("inputs")
    if isinstance(inputs, dict) and not ({"input_data", "text_file"} & given):
        for key, dest in FILES.items():
            if inputs.get(key):
                setattr(args, dest, Path(inputs[key]))
    modes = {s.step.mode for s in base.steps}
    if modes == {Mode.RATE}:
        args.request_rate = [s.step.value for s in base.steps]
    elif modes == {Mode.CONCURRENCY}:
        args.concurrency = [int(s.step.value) for s in base.steps]
    else:
        raise BaselineError(f"{base.path} mixes concurrency and rate steps")
    return differ


def band(runs: Sequence[float]) -> float:
    """Relative spread of repeated measurements: (max - min) / median; 0 for fewer than 2."""
    vals = [v for v in runs if not math.isnan(v)]
    if len(vals) < 2:
        return 0.0
    mid = statistics.median(vals)
    return (max(vals) - min(vals)) / mid if mid > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Delta:
    step: Step
    base_tput: float
    tput: float
    tput_change: float  # relative: -0.2 = 20% fewer infer/s
    tput_allowed: float  # the largest fall accepted (relative, positive)
    base_p99: float
    p99: float
    p99_change: float  # relative: +0.3 = p99 30% higher; nan when not comparable
    p99_allowed: float
    tput_band: float = 0.0  # the throughput's noise band alone
    missing: bool = False  # the step did not run (the run stopped before it)

    @property
    def tput_regressed(self) -> bool:
        return self.missing or self.tput_change < -self.tput_allowed

    @property
    def p99_regressed(self) -> bool:
        if self.missing or math.isnan(self.base_p99):
            return False
        return math.isnan(self.p99) or self.p99_change > self.p99_allowed

    @property
    def regressed(self) -> bool:
        return self.tput_regressed or self.p99_regressed


def _change(now: float, before: float) -> float:
    if math.isnan(now) or math.isnan(before) or before <= 0:
        return math.nan
    return now / before - 1


def deltas(
    base: Baseline, results: Sequence[StepResult], threshold: float, p99_threshold: float
) -> list[Delta]:
    """One judgement per baseline step; thresholds are fractions (0.1 = 10%)."""
    by_step = {r.step: r for r in results}
    out = []
    for b in base.steps:
        r = by_step.get(b.step)
        if r is None:
            out.append(Delta(b.step, b.throughput, math.nan, math.nan, threshold, b.p99_ms,
                             math.nan, math.nan, p99_threshold, missing=True))  # fmt: skip
            continue
        p99 = r.latency_ms["p99"]
        noise = max(band(r.throughput_runs), band(b.throughput_runs))
        out.append(
            Delta(
                b.step,
                b.throughput,
                r.throughput,
                _change(r.throughput, b.throughput),
                max(threshold, noise),
                b.p99_ms,
                p99,
                _change(p99, b.p99_ms),
                max(p99_threshold, band(r.p99_runs), band(b.p99_runs)),
                noise,
            )
        )
    return out


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 100:+.1f}%"


def _num(v: float, fmt: str) -> str:
    return "-" if math.isnan(v) else format(v, fmt)


def render(console: Console, base: Baseline, found: list[Delta], repeat: int) -> None:
    table = Table(
        title=f"against {base.path} ({base.info.get('time', 'no date')}), median of {repeat} "
        f"run(s) per step",
        title_justify="left",
    )
    for col in ("step", "baseline\ninfer/s", "now\ninfer/s", "change", "allowed",
                "baseline\np99 ms", "now\np99 ms", "change", "allowed", "verdict"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("step", "verdict") else "right")
    for d in found:
        if d.missing:
            verdict = "[red]not run[/red]"
        elif d.regressed:
            what = [w for w, bad in (("throughput", d.tput_regressed), ("p99", d.p99_regressed))
                    if bad]  # fmt: skip
            verdict = f"[red]REGRESSION ({', '.join(what)})[/red]"
        else:
            verdict = "ok"
        table.add_row(
            d.step.short,
            f"{d.base_tput:,.1f}",
            _num(d.tput, ",.1f"),
            _pct(d.tput_change),
            f"-{d.tput_allowed * 100:.1f}%",
            _num(d.base_p99, ".2f"),
            _num(d.p99, ".2f"),
            _pct(d.p99_change),
            f"+{d.p99_allowed * 100:.1f}%",
            verdict,
        )
    console.print(table)
    console.print(
        "allowed: the larger of the threshold and the noise band (spread of the repeated runs, "
        "now and in the baseline)",
        highlight=False,
    )
