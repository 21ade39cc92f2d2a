"""What "best" means: an objective (max throughput or min latency) under constraints (a latency
budget at a percentile, a minimum throughput, no errors), scored per config from its sweep."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Objective(Enum):
    THROUGHPUT = "throughput"  # most infer/s over the concurrency sweep
    LATENCY = "latency"  # lowest latency percentile over the sweep


PERCENTILES = ("p50", "p90", "p95", "p99")


@dataclass(frozen=True, slots=True)
class Constraints:
    latency_budget_ms: float | None = None
    min_throughput: float | None = None
    percentile: str = "p99"

    def violation(self, m: Measure) -> float:
        """0 when the step meets every constraint, else how far off (relative; 1+ for errors)."""
        if m.requests == 0:
            return math.inf
        v = 1.0 if m.errors else 0.0
        lat = m.latency(self.percentile)
        if self.latency_budget_ms is not None:
            v += max(0.0, lat / self.latency_budget_ms - 1)
        if self.min_throughput is not None:
            v += max(0.0, 1 - m.throughput / self.min_throughput)
        return v


@dataclass(frozen=True, slots=True)
class Measure:
    """One concurrency step of one config: the median over its repeats."""

    concurrency: int
    throughput: float  # infer/s
    latency_ms: dict[str, float]  # p50 p90 p95 p99 mean max
    errors: int
    requests: int
    repeats: int = 1
    server_batch: float | None = None  # mean batch size the server executed, if it reports it
    spread: float = 0.0  # (max - min) / median throughput over the repeats

    def latency(self, percentile: str) -> float:
        return self.latency_ms.get(percentile, math.nan)

    @classmethod
    def median(cls, concurrency: int, reps: list[Measure]) -> Measure:
        tput = [r.throughput for r in reps]
        mid = statistics.median(tput)
        keys = reps[0].latency_ms.keys()
        batches = [r.server_batch for r in reps if r.server_batch is not None]
        return cls(
            concurrency=concurrency,
            throughput=mid,
            latency_ms={k: statistics.median(r.latency_ms[k] for r in reps) for k in keys},
            errors=sum(r.errors for r in reps),
            requests=sum(r.requests for r in reps),
            repeats=sum(r.repeats for r in reps),
            server_batch=statistics.median(batches) if batches else None,
            spread=(max(tput) - min(tput)) / mid if mid > 0 and len(reps) > 1 else 0.0,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "throughput": round(self.throughput, 3),
            **{f"{k}_ms": round(v, 3) for k, v in self.latency_ms.items()},
            "errors": self.errors,
            "requests": self.requests,
            "repeats": self.repeats,
            "server_batch": None if self.server_batch is None else round(self.server_batch, 3),
            "spread": round(self.spread, 4),
        }


@dataclass(frozen=True, slots=True)
class Score:
    """A config's standing. Feasible: `value` is the objective at its best step (infer/s, or
    ms). Infeasible: `value` is its least violation, and any feasible config beats it."""

    feasible: bool
    value: float
    objective: Objective

    def rank(self) -> tuple[int, float]:
        """Higher is better; for sorting."""
        if not self.feasible:
            return (0, -self.value)
        return (1, self.value if self.objective is Objective.THROUGHPUT else -self.value)

    def beats(self, other: Score, min_gain: float = 0.0) -> bool:
        """Better than `other` by more than `min_gain` (relative): the quick search moves only
        then, so that noise alone does not make it wander."""
        if self.feasible != other.feasible:
            return self.feasible
        if not self.feasible:
            return self.value * (1 + min_gain) < other.value
        if self.objective is Objective.THROUGHPUT:
            return self.value > other.value * (1 + min_gain)
        return self.value * (1 + min_gain) < other.value

    def describe(self, constraints: Constraints) -> str:
        if not self.feasible:
            return "meets no constraint" if math.isinf(self.value) else "over the constraints"
        if self.objective is Objective.THROUGHPUT:
            return f"{self.value:,.1f} infer/s"
        return f"{constraints.percentile} {self.value:,.2f} ms"


FAILED = Score(False, math.inf, Objective.THROUGHPUT)


def score(
    steps: list[Measure], objective: Objective, constraints: Constraints
) -> tuple[Score, int | None]:
    """The config's score and the index of its best step (None when no step is feasible)."""
    if not steps:
        return Score(False, math.inf, objective), None
    feasible = [i for i, m in enumerate(steps) if constraints.violation(m) == 0]
    if not feasible:
        least = min(constraints.violation(m) for m in steps)
        return Score(False, least, objective), None
    if objective is Objective.THROUGHPUT:
        best = max(feasible, key=lambda i: steps[i].throughput)
        return Score(True, steps[best].throughput, objective), best
    best = min(feasible, key=lambda i: steps[i].latency(constraints.percentile))
    return Score(True, steps[best].latency(constraints.percentile), objective), best


def sweep_done(
    steps: list[Measure], objective: Objective, constraints: Constraints, gain: float
) -> bool:
    """Whether more concurrency can help (closed loop: more clients only add queueing once the
    server is saturated). Stop on errors, past the latency budget, once the latency objective
    is met, or when throughput no longer grows by `gain` over the best step so far."""
    last = steps[-1]
    if last.errors or last.requests == 0:
        return True
    budget = constraints.latency_budget_ms
    if budget is not None and last.latency(constraints.percentile) > budget:
        return True
    if objective is Objective.LATENCY:
        return constraints.violation(last) == 0
    if len(steps) < 2:
        return False
    return last.throughput < max(m.throughput for m in steps[:-1]) * (1 + gain)
