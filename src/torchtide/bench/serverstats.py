"""Server-side statistics (the V2 statistics extension): cumulative counters read before and
after a step, and the per-request split of their difference."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(slots=True)
class ServerCounters:
    success: int = 0
    fail: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0

    def __add__(self, other: ServerCounters) -> ServerCounters:
        return ServerCounters(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )

    def __sub__(self, other: ServerCounters) -> ServerCounters:
        return ServerCounters(
            *(getattr(self, f.name) - getattr(other, f.name) for f in fields(self))
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any], version: str = "") -> ServerCounters | None:
        """From `GET /v2/models/M/stats` (summed over versions unless one is named)."""
        entries = doc.get("model_stats")
        if not isinstance(entries, list):
            return None
        total = cls()
        for e in entries:
            if version and str(e.get("version", "")) != version:
                continue
            s = e.get("inference_stats", {})

            def pick(key: str, what: str, s: dict[str, Any] = s) -> int:
                return int(s.get(key, {}).get(what, 0))

            total = total + cls(
                pick("success", "count"),
                pick("fail", "count"),
                pick("queue", "ns"),
                pick("compute_input", "ns"),
                pick("compute_infer", "ns"),
                pick("compute_output", "ns"),
                int(e.get("inference_count", 0)),
                int(e.get("execution_count", 0)),
            )
        return total

    @classmethod
    def from_proto(cls, resp: Any, version: str = "") -> ServerCounters:
        """From a gRPC ModelStatisticsResponse."""
        total = cls()
        for e in resp.model_stats:
            if version and e.version != version:
                continue
            s = e.inference_stats
            total = total + cls(
                s.success.count,
                s.fail.count,
                s.queue.ns,
                s.compute_input.ns,
                s.compute_infer.ns,
                s.compute_output.ns,
                e.inference_count,
                e.execution_count,
            )
        return total


@dataclass(slots=True)
class ServerSplit:
    """Mean server time per successful request (µs) over a step, and the mean batch size."""

    requests: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    batch_size: float | None

    @classmethod
    def between(cls, before: ServerCounters, after: ServerCounters) -> ServerSplit | None:
        d = after - before
        if d.success <= 0:
            return None
        n = d.success
        return cls(
            requests=n,
            queue_us=d.queue_ns / n / 1e3,
            compute_input_us=d.compute_input_ns / n / 1e3,
            compute_infer_us=d.compute_infer_ns / n / 1e3,
            compute_output_us=d.compute_output_ns / n / 1e3,
            batch_size=d.inference_count / d.execution_count if d.execution_count > 0 else None,
        )
