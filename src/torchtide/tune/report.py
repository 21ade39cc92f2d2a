"""Tune's output: the live progress, the result table, the report (JSON and Markdown) and the
latency-vs-throughput plot with one line per tried config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from torchtide.bench.runner import Phase, Step
from torchtide.tune.objective import Constraints, Measure, Score
from torchtide.tune.space import Point


@dataclass
class Trial:
    """One config as tune tried it."""

    order: int
    point: Point
    steps: list[Measure] = field(default_factory=list)
    score: Score | None = None
    best_step: int | None = None
    error: str = ""  # the server did not load it
    load_s: float = 0.0
    recheck: list[Measure] = field(default_factory=list)  # finalists: re-measured best step
    final: Score | None = None  # finalists: the score from all measurements of the best step

    @property
    def standing(self) -> Score | None:
        return self.final or self.score

    @property
    def best(self) -> Measure | None:
        if self.best_step is None:
            return None
        m = self.steps[self.best_step]
        return Measure.median(m.concurrency, [m, *self.recheck]) if self.recheck else m

    def as_dict(self) -> dict[str, Any]:
        s, f = self.score, self.final
        best = self.best
        return {
            "order": self.order,
            "label": self.point.label,
            "point": self.point.as_dict(),
            "error": self.error,
            "load_s": round(self.load_s, 3),
            "feasible": bool(s and s.feasible),
            "score": None if s is None or math.isinf(s.value) else round(s.value, 3),
            "final_score": None if f is None else round(f.value, 3),
            "best": None if best is None else best.as_dict(),
            "steps": [m.as_dict() for m in self.steps],
            "recheck": [m.as_dict() for m in self.recheck],
        }


class Display:
    """One live line for what tune is doing now, and one printed line per finished config."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console, self.quiet = console, quiet
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None
        self.prefix = ""

    def __enter__(self) -> Display:
        if not self.quiet:
            self.progress.__enter__()
            self.task = self.progress.add_task("starting")
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.progress.__exit__(None, None, None)

    def doing(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=f"{self.prefix}{text}")

    def tick(self, step: Step, phase: Phase, elapsed: float, total: int, rate: float) -> None:
        self.doing(f"{step.short} {phase.value} {elapsed:4.1f} s  {total:>7} req  {rate:,.0f}/s")

    def line(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def trial_line(t: Trial, constraints: Constraints, total: str) -> str:
    head = f"[{t.order}{total}] {t.point.label:<24}"
    if t.error:
        return f"{head} not loaded: {t.error}"
    best = t.best
    assert t.score is not None
    steps = " ".join(f"c{m.concurrency}:{m.throughput:,.0f}" for m in t.steps)
    if best is None:
        return f"{head} {t.score.describe(constraints)}  ({steps})"
    p = constraints.percentile
    return (
        f"{head} {best.throughput:>9,.1f} infer/s at c={best.concurrency}, {p} "
        f"{best.latency(p):,.1f} ms, load {t.load_s:.1f} s  ({steps})"
    )


def table(trials: list[Trial], constraints: Constraints, best: Trial | None, title: str) -> Table:
    p = constraints.percentile
    t = Table(title=title, title_justify="left")
    for name in ("#", "instances", "threads", "max batch", "preferred", "delay µs", "best c"):
        t.add_column(name, justify="right")
    for name in ("infer/s", "p50 ms", f"{p} ms", "server batch", "note"):
        t.add_column(name, justify="right" if name != "note" else "left")

    def key(tr: Trial) -> tuple[tuple[int, float], int]:
        s = tr.standing
        return ((-1, 0.0) if s is None or tr.error else s.rank(), -tr.order)

    for tr in sorted(trials, key=key, reverse=True):
        pt, m = tr.point, tr.best
        note = tr.error or ("" if tr.score and tr.score.feasible else "infeasible")
        if tr is best:
            note = "best" + (" (re-measured)" if tr.recheck else "")
        elif tr.recheck:
            note = "re-measured"
        cells = [
            str(tr.order),
            str(pt.instances),
            _opt(pt.threads),
            _opt(pt.max_batch),
            _opt(pt.preferred, zero="-"),
            _opt(pt.delay_us),
            "-" if m is None else str(m.concurrency),
            "-" if m is None else f"{m.throughput:,.1f}",
            "-" if m is None else f"{m.latency('p50'):,.2f}",
            "-" if m is None else f"{m.latency(p):,.2f}",
            "-" if m is None or m.server_batch is None else f"{m.server_batch:.2f}",
            note,
        ]
        t.add_row(*cells, style="bold green" if tr is best else None)
    return t


def _opt(v: int | None, zero: str | None = None) -> str:
    if v is None:
        return "-"
    return zero if v == 0 and zero is not None else str(v)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def write_markdown(
    path: Path, doc: dict[str, Any], trials: list[Trial], best: Trial | None
) -> None:
    p = doc["constraints"]["percentile"]
    lines = [
        f"# torchtide tune: {doc['model']}",
        "",
        f"- server: {doc['url']} ({doc['mode']} mode), {doc['cores']} cores assumed",
        f"- strategy: {doc['strategy']}, objective: {doc['objective']}, constraints: "
        f"{_constraints(doc['constraints'])}",
        f"- space: {_space(doc['space'])} ({doc['points_in_space']} points), start "
        f"{doc['start']['label']}",
        f"- load: concurrency {', '.join(map(str, doc['concurrency']))}, "
        f"{doc['warmup_s']:g} s warm-up + "
        f"{doc['duration_s']:g} s per step, {doc['repeats']} repeat(s); "
        f"{len(trials)} configs tried in {doc['elapsed_s']:.0f} s",
    ]
    if best is not None and best.best is not None:
        b = best.best
        lines.append(
            f"- **best: {best.point.label}**: {b.throughput:,.1f} infer/s at concurrency "
            f"{b.concurrency}, {p} {b.latency(p):,.2f} ms"
            + (f" ({doc['gain_vs_start']:.2f}x the start)" if doc.get("gain_vs_start") else "")
        )
    else:
        lines.append("- **no config met the constraints**")
    lines += [
        "",
        f"| # | instances | threads | max batch | preferred | delay µs | best c | infer/s | "
        f"p50 ms | {p} ms | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tr in sorted(trials, key=lambda t: t.order):
        pt, m = tr.point, tr.best
        note = "**best**" if tr is best else (tr.error or ("" if tr.best else "infeasible"))
        lines.append(
            f"| {tr.order} | {pt.instances} | {_opt(pt.threads)} | {_opt(pt.max_batch)} | "
            f"{_opt(pt.preferred, zero='-')} | {_opt(pt.delay_us)} | "
            + (
                "- | - | - | - |"
                if m is None
                else f"{m.concurrency} | {m.throughput:,.1f} | {m.latency('p50'):,.2f} | "
                f"{m.latency(p):,.2f} |"
            )
            + f" {note} |"
        )
    path.write_text("\n".join(lines) + "\n")


def _constraints(c: dict[str, Any]) -> str:
    parts = []
    if c["latency_budget_ms"] is not None:
        parts.append(f"{c['percentile']} <= {c['latency_budget_ms']:g} ms")
    if c["min_throughput"] is not None:
        parts.append(f"throughput >= {c['min_throughput']:g}/s")
    return ", ".join(parts) or "none (no errors only)"


def _space(space: dict[str, list[int]]) -> str:
    return " x ".join(f"{k} {{{', '.join(map(str, v))}}}" for k, v in space.items())


def plot(path: Path, trials: list[Trial], best: Trial | None, doc: dict[str, Any]) -> None:
    """Latency (the constraint's percentile) against throughput over each config's sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = doc["constraints"]["percentile"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    cmap = plt.get_cmap("tab20")
    for i, tr in enumerate(t for t in trials if t.steps):
        ok = [m for m in tr.steps if m.requests]
        xs, ys = [m.throughput for m in ok], [m.latency(p) for m in ok]
        if tr is best:
            ax.plot(xs, ys, "o-", color="black", linewidth=2.2, label=f"{tr.point.label} (best)")
        else:
            ax.plot(xs, ys, ".-", color=cmap(i % 20), alpha=0.75, label=tr.point.label)
    budget = doc["constraints"]["latency_budget_ms"]
    if budget is not None:
        ax.axhline(budget, color="red", linestyle="--", linewidth=1, label=f"{p} budget")
    ax.set_xlabel("throughput (infer/s)")
    ax.set_ylabel(f"{p} latency (ms)")
    ax.set_title(f"torchtide tune: {doc['model']} ({doc['strategy']}, {len(trials)} configs)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(trials) > 8 else 1, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
