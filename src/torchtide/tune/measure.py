"""Measuring one config with the bench's load, in-process: a closed-loop concurrency sweep of
short steps, each repeated and reduced to its median, stopped early once more concurrency
cannot help."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torchtide.bench.runner import Mode, Runner, Step, StepResult
from torchtide.tune.objective import Constraints, Measure, Objective, sweep_done

SWEEP_GAIN = 0.05  # a concurrency step must add 5% throughput for the sweep to go on
MIN_REQUESTS = 10  # a step that completes fewer is run again, twice as long ...
MAX_LATENCY_SHARE = 0.25  # ... or whose mean latency is over this share of the window ...
MAX_STRETCH = 8  # ... up to this many times --duration (a slow model, a loaded machine)

OnStep = Callable[[Measure], None]


def measure_of(r: StepResult) -> Measure:
    """A bench step as tune reads it. The bench counts the requests that started and ended
    inside the window, which undercounts by about the mean latency: only those that started in
    its first (window - latency) seconds could end in it. Short steps at high latency would
    then favour low-latency configs, so throughput is taken over that shorter span."""
    mean_s = r.latency_ms.get("mean", math.nan) / 1e3
    span = r.duration_s - mean_s
    throughput = r.throughput
    if r.requests and not math.isnan(mean_s) and span >= r.duration_s / 2:
        throughput = r.requests * r.batch_size / span
    return Measure(
        concurrency=int(r.step.value),
        throughput=throughput,
        latency_ms=dict(r.latency_ms),
        errors=r.errors,
        requests=r.requests,
        server_batch=None if r.server is None else r.server.batch_size,
    )


@dataclass
class Measurer:
    runner: Runner
    concurrency: list[int]  # ascending
    repeats: int
    objective: Objective
    constraints: Constraints
    on_step: OnStep | None = None
    sweep_gain: float = SWEEP_GAIN

    async def at(self, concurrency: int, repeats: int | None = None) -> Measure:
        """One concurrency step, `repeats` times, reduced to the median."""
        step = Step(Mode.CONCURRENCY, concurrency)
        reps = []
        for _ in range(repeats or self.repeats):
            r = await self._long_enough(step)
            reps.append(r)
            if r.errors or r.requests == 0:
                break  # a failing config is not worth repeating
        m = Measure.median(concurrency, reps)
        if self.on_step is not None:
            self.on_step(m)
        return m

    async def _long_enough(self, step: Step) -> Measure:
        """One step with at least MIN_REQUESTS completions and a window at least 4x the mean
        latency when the duration allows it: a percentile of three requests says nothing."""
        base = self.runner.duration_s
        try:
            while True:
                res = await self.runner.run_step(step)
                r = measure_of(res)
                mean_s = r.latency("mean") / 1e3
                short = mean_s > res.duration_s * MAX_LATENCY_SHARE
                if r.errors or (r.requests >= MIN_REQUESTS and not short):
                    return r
                if self.runner.duration_s * 2 > base * MAX_STRETCH:
                    return r
                self.runner.duration_s *= 2
        finally:
            self.runner.duration_s = base

    async def sweep(self) -> list[Measure]:
        steps: list[Measure] = []
        for c in self.concurrency:
            steps.append(await self.at(c))
            if sweep_done(steps, self.objective, self.constraints, self.sweep_gain):
                break
        return steps
