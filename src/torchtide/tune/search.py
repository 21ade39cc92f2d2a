"""Search strategies over a Space: brute force (every point) and the quick search (a coordinate
hill climb from the server's defaults). Both only call `evaluate`, so they are tested on
synthetic landscapes as well as on a live server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from torchtide.tune.objective import Score
from torchtide.tune.space import Point, Space

Evaluate = Callable[[Point], Awaitable[Score]]


class Strategy(Enum):
    QUICK = "quick"
    BRUTE = "brute"


@dataclass
class SearchResult:
    tried: list[Point] = field(default_factory=list)  # in the order measured
    scores: dict[Point, Score] = field(default_factory=dict)
    path: list[Point] = field(default_factory=list)  # quick search: the points it moved to

    def ranked(self) -> list[Point]:
        """Tried points, best first (ties: the earlier measured)."""
        order = {p: i for i, p in enumerate(self.tried)}
        return sorted(self.tried, key=lambda p: (self.scores[p].rank(), -order[p]), reverse=True)

    @property
    def best(self) -> Point | None:
        ranked = self.ranked()
        return ranked[0] if ranked and self.scores[ranked[0]].feasible else None


class _Cached:
    """Measures each distinct point once."""

    def __init__(self, evaluate: Evaluate, result: SearchResult) -> None:
        self.evaluate, self.result = evaluate, result

    async def __call__(self, p: Point) -> Score:
        if p not in self.result.scores:
            self.result.scores[p] = await self.evaluate(p)
            self.result.tried.append(p)
        return self.result.scores[p]


async def brute_force(space: Space, evaluate: Evaluate) -> SearchResult:
    result = SearchResult()
    measure = _Cached(evaluate, result)
    for p in space.points():
        await measure(p)
    return result


async def hill_climb(
    space: Space,
    start: Point,
    evaluate: Evaluate,
    *,
    passes: int = 1,
    min_gain: float = 0.02,
) -> SearchResult:
    """Coordinate hill climb: measure the start, then for each dimension in turn walk up while
    each step beats the current point by more than `min_gain`, else walk down the same way;
    keep the best point reached and go on to the next dimension. Repeat for up to `passes`
    passes while a pass moves. Each dimension costs one point when nothing improves, so a pass
    costs 1 + (number of dimensions) points at least, far fewer than the grid's product."""
    result = SearchResult()
    measure = _Cached(evaluate, result)
    current = space.normalize(start)
    best = await measure(current)
    result.path.append(current)
    for _ in range(passes):
        moved = False
        for dim in space.dims:
            for direction in (+1, -1):
                went = False
                while (step := space.neighbor(current, dim, direction)) is not None:
                    if step == current:
                        break
                    s = await measure(step)
                    if not s.beats(best, min_gain):
                        break
                    current, best, went = step, s, True
                    result.path.append(current)
                if went:  # up helped: no need to look down
                    moved = True
                    break
        if not moved:
            break
    return result
