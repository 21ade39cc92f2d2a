"""Output: the live progress display, the final table, CSV / JSON files and the latency plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from torchtide.bench.runner import Phase, Step, StepResult


class LiveProgress:
    """One progress line per step: phase, elapsed, completions, current throughput."""

    def __init__(self, console: Console, warmup_s: float, duration_s: float) -> None:
        self.warmup_s, self.duration_s = warmup_s, duration_s
        self.progress = Progress(
            TextColumn("[bold]{task.description:<24}"),
            TextColumn("{task.fields[phase]:<9}"),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            TextColumn("{task.fields[requests]:>9} req"),
            TextColumn("{task.fields[rate]:>10} infer/s"),
            console=console,
            refresh_per_second=4,
            transient=False,
        )
        self._tasks: dict[Step, Any] = {}
        self._round = ""

    def next_round(self, label: str) -> None:
        """--repeat: the next sweep gets lines of its own."""
        self._round, self._tasks = label, {}

    def __enter__(self) -> LiveProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def tick(self, step: Step, phase: Phase, elapsed: float, total: int, rate: float) -> None:
        task = self._tasks.get(step)
        if task is None:
            desc = f"{step.label} ({self._round})" if self._round else step.label
            task = self._tasks[step] = self.progress.add_task(
                desc, total=self.warmup_s + self.duration_s, phase="", requests=0, rate=""
            )
        done = elapsed if phase is Phase.WARMUP else self.warmup_s + elapsed
        if phase is Phase.DRAIN:
            done = self.warmup_s + self.duration_s
        self.progress.update(
            task,
            completed=min(done, self.warmup_s + self.duration_s),
            phase=phase.value,
            requests=total,
            rate=f"{rate:,.0f}",
        )

    def finish(self, step: Step, result: StepResult) -> None:
        task = self._tasks.get(step)
        if task is not None:
            self.progress.update(
                task,
                completed=self.warmup_s + self.duration_s,
                phase="done",
                rate=f"{result.throughput:,.0f}",
            )
            self.progress.stop_task(task)


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _us(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.0f}"


def render(console: Console, results: list[StepResult], info: dict[str, Any]) -> None:
    repeat = int(info.get("repeat", 1))
    title = (
        f"{info['model']} over {info['protocol']} at {info['url']}, batch size "
        f"{info['batch_size']}, {info['duration_s']:g} s per step"
    )
    if repeat > 1:
        title += f", median of {repeat} runs"
    table = Table(title=title, title_justify="left")
    table.add_column("step")
    table.add_column("infer/s", justify="right")
    if repeat > 1:
        table.add_column("infer/s\nrange", justify="right")
    offered = any(r.offered_rate is not None for r in results)
    if offered:
        table.add_column("offered\nreq/s", justify="right")
    for p in ("p50", "p90", "p95", "p99"):
        table.add_column(f"{p}\nms", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("client\nµs/req", justify="right")
    server = any(r.server is not None for r in results)
    if server:
        for c in ("queue", "input", "infer", "output"):
            table.add_column(f"server\n{c} µs", justify="right")
        table.add_column("server\nbatch", justify="right")
    for r in results:
        row = [r.step.short, f"{r.throughput:,.1f}"]
        if repeat > 1:
            row.append(f"{min(r.throughput_runs):,.1f}-{max(r.throughput_runs):,.1f}")
        if offered:
            row.append("-" if r.offered_rate is None else f"{r.offered_rate:,.1f}")
        row += [_ms(r.latency_ms[p]) for p in ("p50", "p90", "p95", "p99")]
        row.append(f"[red]{r.errors}[/red]" if r.errors else "0")
        row.append(_us(r.client_cpu_us))
        if server:
            s = r.server
            if s is None:
                row += ["-"] * 5
            else:
                row += [
                    _us(s.queue_us),
                    _us(s.compute_input_us),
                    _us(s.compute_infer_us),
                    _us(s.compute_output_us),
                    "-" if s.batch_size is None else f"{s.batch_size:.2f}",
                ]
        table.add_row(*row)
    console.print(table)
    cpu = [r.client_cpu_us for r in results if not math.isnan(r.client_cpu_us)]
    if cpu:
        console.print(
            f"client: one process ({info['loop']}), {min(cpu):.0f}-{max(cpu):.0f} µs CPU per "
            f"request, up to {max(r.client_cpu_pct for r in results):.0f}% of a core"
        )
    if not server:
        console.print("server: no statistics extension, no server-side split")
    for r in results:
        for msg, n in r.error_messages.items():
            console.print(
                f"[red]{r.step.label}: {n} x {escape(msg)}[/red]", highlight=False, soft_wrap=True
            )


def write_csv(path: Path, results: list[StepResult]) -> None:
    rows = [r.row() for r in results]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if v is None else v for k, v in row.items()})


def write_json(path: Path, results: list[StepResult], info: dict[str, Any]) -> None:
    doc = {
        **info,
        "steps": [
            r.row()
            | {
                "error_messages": r.error_messages,
                "runs": {"throughput": list(r.throughput_runs), "p99_ms": list(r.p99_runs)},
            }
            for r in results
        ],
    }
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def plot(path: Path, results: list[StepResult], info: dict[str, Any]) -> None:
    """Latency percentiles against throughput across the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ok = [r for r in results if r.requests]
    xs = [r.throughput for r in ok]
    for p, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
        ax.plot(xs, [r.latency_ms[p] for r in ok], style, label=p)
    for r in ok:
        ax.annotate(
            r.step.short,
            (r.throughput, r.latency_ms["p99"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("throughput (infer/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{info['model']} — {info['protocol']}, batch size {info['batch_size']}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
