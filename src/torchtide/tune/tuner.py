"""The run: each candidate put in service, measured with the bench's load, scored; the search
strategy picks the next; the best few re-measured in turn so that one noisy step cannot crown
a config."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torchtide.tune.control import Applier, ApplyError, ControlRefused
from torchtide.tune.measure import Measurer
from torchtide.tune.objective import FAILED, Constraints, Measure, Objective, Score, score
from torchtide.tune.report import Display, Trial, trial_line
from torchtide.tune.search import SearchResult, Strategy, brute_force, hill_climb
from torchtide.tune.space import Point, Space


@dataclass
class Tuner:
    applier: Applier
    measurer: Measurer
    objective: Objective
    constraints: Constraints
    display: Display
    trials: dict[Point, Trial] = field(default_factory=dict)
    total: str = ""  # "/N" when the number of configs is known (brute force)
    loaded: Point | None = None  # what the server serves now
    touched: bool = False  # whether tune changed what the server serves (then it restores)

    async def serve(self, point: Point) -> float:
        """Put a point in service (unless it already is); seconds it took."""
        if point == self.loaded:
            return 0.0
        self.display.doing(f"loading {point.label}")
        t0 = time.monotonic()
        self.loaded = None  # unknown until the load answers
        try:
            await self.applier.apply(point)
        except ControlRefused:
            raise  # refused outright: nothing changed
        except BaseException:
            self.touched = True  # a failed load, a written file, Ctrl-C: restore at the end
            raise
        self.touched = True
        self.loaded = point
        return time.monotonic() - t0

    async def evaluate(self, point: Point) -> Score:
        trial = Trial(len(self.trials) + 1, point)
        self.trials[point] = trial
        self.display.prefix = f"[{trial.order}{self.total}] {point.label}: "
        try:
            trial.load_s = await self.serve(point)
        except ControlRefused:
            raise
        except ApplyError as e:
            trial.error, trial.score = str(e), FAILED
            self.display.line(trial_line(trial, self.constraints, self.total))
            return FAILED
        trial.steps = await self.measurer.sweep()
        trial.score, trial.best_step = score(trial.steps, self.objective, self.constraints)
        self.display.line(trial_line(trial, self.constraints, self.total))
        return trial.score

    async def search(
        self, strategy: Strategy, space: Space, start: Point, passes: int, min_gain: float
    ) -> SearchResult:
        if strategy is Strategy.BRUTE:
            self.total = f"/{len(space.points())}"
            return await brute_force(space, self.evaluate)
        return await hill_climb(space, start, self.evaluate, passes=passes, min_gain=min_gain)

    async def finalists(
        self, result: SearchResult, count: int, rounds: int, margin: float
    ) -> Trial | None:
        """Re-measure the best `count` configs whose score is within `margin` of the best, at
        their best concurrency, `rounds` times in turn (A B B A ...), and crown the best
        median; a clear winner is not re-measured. Returns the winner's trial."""
        ranked = [self.trials[p] for p in result.ranked() if result.scores[p].feasible]
        if not ranked:
            return None
        lead = ranked[0].score
        assert lead is not None
        top = [t for t in ranked[: max(count, 1)] if t.score and _close(t.score, lead, margin)]
        if len(top) > 1 and rounds > 0:
            if self.loaded in [t.point for t in top]:  # start with what is loaded: one load less
                top.sort(key=lambda t: t.point != self.loaded)
            for r in range(rounds):
                for t in top if r % 2 == 0 else reversed(top):
                    await self._recheck(t)
            for t in top:
                best = t.best
                assert best is not None
                t.final, _ = score([best], self.objective, self.constraints)
        return max(top, key=lambda t: ((t.standing or FAILED).rank(), -t.order))

    async def _recheck(self, t: Trial) -> None:
        assert t.best_step is not None
        self.display.prefix = f"[re-measure] {t.point.label}: "
        try:
            await self.serve(t.point)
        except ApplyError as e:  # loaded before: a failure now is the server's state
            t.recheck.append(_failed(t.steps[t.best_step].concurrency))
            self.display.line(f"[re-measure] {t.point.label}: not loaded: {e}")
            return
        m = await self.measurer.at(t.steps[t.best_step].concurrency)
        t.recheck.append(m)
        p = self.constraints.percentile
        self.display.line(
            f"[re-measure] {t.point.label:<24} {m.throughput:>9,.1f} infer/s at "
            f"c={m.concurrency}, {p} {m.latency(p):,.1f} ms"
        )


def _close(s: Score, lead: Score, margin: float) -> bool:
    """Within `margin` (relative) of the leading score, so noise could have swapped them."""
    if s.objective is Objective.THROUGHPUT:
        return s.value >= lead.value * (1 - margin)
    return s.value <= lead.value * (1 + margin)


def _failed(concurrency: int) -> Measure:
    nan = float("nan")
    return Measure(
        concurrency, 0.0, {k: nan for k in ("p50", "p90", "p95", "p99", "mean", "max")}, 1, 0
    )
