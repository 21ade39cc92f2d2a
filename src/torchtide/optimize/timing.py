"""Interleaved A/B timing of a variant against the baseline in one process (research note
section 3's protocol): blocks in ABBA order, throughput per block from the 10th-percentile
call latency (robust to preemption on a shared machine), rounds repeated until the last
ratios agree, the spread reported, and the CPU time other processes took during the blocks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psutil

Call = Callable[[], Any]


@dataclass(frozen=True, slots=True)
class TimingOptions:
    block_s: float = 1.0  # seconds of calls per block
    min_calls: int = 3  # calls per block at least
    warmup_calls: int = 2  # calls before each block, not timed
    min_rounds: int = 3
    max_rounds: int = 8
    tolerance: float = 0.05  # the last `min_rounds` ratios within this of their median
    quantile: float = 0.10


@dataclass(slots=True)
class Speed:
    batch: int
    base_items_s: float  # baseline items/s (median over rounds)
    items_s: float  # the variant's items/s (median over rounds)
    ratio: float  # median of the per-round ratios
    spread: tuple[float, float]  # lowest and highest round ratio
    rounds: int
    stable: bool  # the last rounds agreed within the tolerance
    background_cores: float  # cores other processes used during the blocks (mean)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spread"] = list(self.spread)
        return d


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _own_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(
        t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
    )


def block(call: Call, rows: int, opts: TimingOptions, proc: psutil.Process) -> tuple[float, float]:
    """(items/s from the q-quantile call latency, cores used by other processes)."""
    for _ in range(opts.warmup_calls):
        call()
    lat: list[float] = []
    busy0, own0, t0 = _busy_seconds(), _own_seconds(proc), time.perf_counter()
    end = t0 + opts.block_s
    while len(lat) < opts.min_calls or time.perf_counter() < end:
        s = time.perf_counter_ns()
        call()
        lat.append((time.perf_counter_ns() - s) / 1e9)
    wall = time.perf_counter() - t0
    other = max(0.0, (_busy_seconds() - busy0) - (_own_seconds(proc) - own0)) / max(wall, 1e-9)
    lat.sort()
    q = lat[min(len(lat) - 1, int(opts.quantile * len(lat)))]
    return rows / max(q, 1e-9), other


def ab(base: Call, variant: Call, rows: int, opts: TimingOptions) -> Speed:
    """Rounds of A B B A blocks until the last `min_rounds` ratios are within the tolerance of
    their median (or `max_rounds`)."""
    proc = psutil.Process()
    ratios: list[float] = []
    a_all: list[float] = []
    b_all: list[float] = []
    others: list[float] = []
    stable = False
    for _ in range(opts.max_rounds):
        a1, o1 = block(base, rows, opts, proc)
        b1, o2 = block(variant, rows, opts, proc)
        b2, o3 = block(variant, rows, opts, proc)
        a2, o4 = block(base, rows, opts, proc)
        a, b = (a1 + a2) / 2, (b1 + b2) / 2
        a_all.append(a)
        b_all.append(b)
        ratios.append(b / a)
        others.extend((o1, o2, o3, o4))
        if len(ratios) >= opts.min_rounds:
            last = ratios[-opts.min_rounds :]
            mid = statistics.median(last)
            if all(abs(r / mid - 1) <= opts.tolerance for r in last):
                stable = True
                break
    return Speed(
        batch=rows,
        base_items_s=statistics.median(a_all),
        items_s=statistics.median(b_all),
        ratio=statistics.median(ratios),
        spread=(min(ratios), max(ratios)),
        rounds=len(ratios),
        stable=stable,
        background_cores=statistics.fmean(others),
    )
