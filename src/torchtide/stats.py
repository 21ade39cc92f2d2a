"""Triton-style statistics per model version, kept in the core. Updated only on the event loop,
so no locks; the statistics extension and the metrics page read the same counters."""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import InitVar, dataclass, field
from typing import Any

FAIL_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
RELEASE_REASONS = ("full", "preferred", "delay", "idle", "balanced")

# Beyond Triton: latency histogram bucket upper bounds, 50 µs to 10 s, in ns.
LATENCY_BOUNDS_NS: tuple[int, ...] = tuple(
    round(s * 1e9)
    for s in (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
              100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0)
)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    """Fixed buckets: counts[i] holds observations <= bounds[i] (and > bounds[i-1]); the last
    slot is +Inf. Not cumulative; the exporter accumulates at scrape time."""

    bounds: tuple[int, ...] = LATENCY_BOUNDS_NS
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: int, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0
    hist: Histogram | None = None  # beyond Triton: each add is also a histogram observation

    def add(self, ns: int, count: int = 1) -> None:
        """`ns` is the total over `count` items (the histogram sees their mean)."""
        self.count += count
        self.ns += ns
        if self.hist is not None:
            self.hist.observe(ns if count == 1 else ns // max(count, 1), count)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStat:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


def _histogrammed() -> Duration:
    return Duration(hist=Histogram())


@dataclass(slots=True)
class ModelStats:
    # success (end-to-end), queue and compute_infer also keep latency histograms unless
    # `histograms=False`; their counts and sums are the Durations' own, so they always agree.
    success: Duration = field(default_factory=_histogrammed)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=_histogrammed)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=_histogrammed)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    pending: int = 0  # queued, not yet handed to an instance
    batch_stats: dict[int, BatchStat] = field(default_factory=dict)
    fail_reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAIL_REASONS, 0))
    # Beyond Triton: why each batch left the queue.
    releases: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RELEASE_REASONS, 0))
    histograms: InitVar[bool] = True

    def __post_init__(self, histograms: bool) -> None:
        if not histograms:
            self.success.hist = self.queue.hist = self.compute_infer.hist = None

    def record_execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.execution_count += 1
        self.inference_count += rows
        b = self.batch_stats.get(rows)
        if b is None:
            b = self.batch_stats[rows] = BatchStat()
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, reason: str, ns: int) -> None:
        self.fail.add(ns)
        self.fail_reasons[reason] += 1

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        """Triton's `model_stats[]` entry."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batch_stats.items())
            ],
            "memory_usage": [],
        }
