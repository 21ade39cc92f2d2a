"""The search space: one point = instance count x threads per instance x max_batch_size x
preferred_batch_size x max_queue_delay_microseconds; grids sized for the machine's cores."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from enum import Enum


class Dim(Enum):
    INSTANCES = "instances"
    THREADS = "threads"
    MAX_BATCH = "max_batch"
    PREFERRED = "preferred"
    DELAY = "delay_us"


# The order the quick search walks the dimensions: the CPU layout moves throughput most.
ORDER = (Dim.INSTANCES, Dim.THREADS, Dim.MAX_BATCH, Dim.PREFERRED, Dim.DELAY)
DEFAULT_DELAYS_US = (0, 500, 2000)


@dataclass(frozen=True, slots=True)
class Point:
    """One candidate config. None: the dimension is not tuned (the model has no thread knob,
    or does not batch). preferred 0 means none (the batcher aims at max_batch_size)."""

    instances: int
    threads: int | None = None
    max_batch: int | None = None
    preferred: int | None = None
    delay_us: int | None = None

    def get(self, dim: Dim) -> int | None:
        value: int | None = getattr(self, dim.value)
        return value

    def with_value(self, dim: Dim, value: int) -> Point:
        return replace(self, **{dim.value: value})

    @property
    def label(self) -> str:
        parts = [f"{self.instances}x{'-' if self.threads is None else self.threads}"]
        if self.max_batch is not None:
            parts.append(f"mb{self.max_batch}")
            parts.append(f"pref{self.preferred or '-'}")
            parts.append(f"d{self.delay_us}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, int | None]:
        return {d.value: self.get(d) for d in ORDER}


@dataclass(frozen=True, slots=True)
class Space:
    """The grid of each tuned dimension (sorted), and what makes a point valid: at most `cores`
    threads in all unless `oversubscribe`, and a max_batch_size that fits the request batch."""

    values: dict[Dim, tuple[int, ...]]
    cores: int
    oversubscribe: bool = False
    min_batch: int = 1

    def __post_init__(self) -> None:
        for dim, vals in self.values.items():
            if not vals or list(vals) != sorted(set(vals)):
                raise ValueError(f"{dim.value}: values must be distinct and sorted, got {vals}")
        if Dim.INSTANCES not in self.values:
            raise ValueError("the space needs instance counts")

    @property
    def dims(self) -> list[Dim]:
        return [d for d in ORDER if d in self.values]

    def normalize(self, p: Point) -> Point:
        """One spelling per distinct config: a preferred size >= max_batch_size is the default,
        and with max_batch_size 1 there is nothing to batch or wait for."""
        if p.max_batch is None:
            return p
        if p.preferred is not None and p.preferred >= p.max_batch:
            p = replace(p, preferred=0)
        if p.max_batch == 1:
            p = replace(
                p,
                preferred=None if p.preferred is None else 0,
                delay_us=None if p.delay_us is None else 0,
            )
        return p

    def valid(self, p: Point) -> bool:
        if p.instances < 1 or (p.threads is not None and p.threads < 1):
            return False
        if not self.oversubscribe and p.instances * (p.threads or 1) > self.cores:
            return False
        return p.max_batch is None or p.max_batch >= self.min_batch

    def points(self) -> list[Point]:
        """Every distinct valid point: what brute force measures."""
        dims = self.dims
        seen: dict[Point, None] = {}
        for combo in itertools.product(*(self.values[d] for d in dims)):
            p = self.normalize(Point(**{d.value: v for d, v in zip(dims, combo, strict=True)}))
            if self.valid(p):
                seen.setdefault(p)
        return list(seen)

    def snap(self, current: dict[Dim, int]) -> Point:
        """The grid point nearest a config (the server's defaults): the quick search's start."""
        p = Point(instances=1)
        for dim in self.dims:
            p = p.with_value(dim, _nearest(self.values[dim], current.get(dim, 0), dim))
        p = self.normalize(p)
        if self.valid(p):
            return p
        fixed = self._repair(p, Dim.THREADS) or self._repair(p, Dim.INSTANCES)
        if fixed is not None:
            return fixed
        points = self.points()
        if not points:
            raise ValueError("the search space has no valid point")
        return points[0]

    def neighbor(self, p: Point, dim: Dim, direction: int) -> Point | None:
        """The next grid value along one dimension (direction +1 or -1), or None at the edge.
        A layout step that would use more than the cores shrinks the other layout dimension
        instead (2x1 -> threads up -> 1x2), so the walk can trade instances for threads."""
        vals = self.values[dim]
        current = p.get(dim)
        i = vals.index(current) if current in vals else _nearest_index(vals, current or 0, dim)
        j = i + direction
        if not 0 <= j < len(vals):
            return None
        q = self.normalize(p.with_value(dim, vals[j]))
        if self.valid(q):
            return q
        return self._repair(q, dim)

    def _repair(self, p: Point, moved: Dim) -> Point | None:
        other = {Dim.INSTANCES: Dim.THREADS, Dim.THREADS: Dim.INSTANCES}.get(moved)
        if other is None or other not in self.values:
            return None
        for v in sorted(self.values[other], reverse=True):
            q = p.with_value(other, v)
            if self.valid(q):
                return q
        return None


def _nearest_index(vals: tuple[int, ...], target: int, dim: Dim) -> int:
    def distance(v: int) -> float:
        if dim is Dim.DELAY or dim is Dim.PREFERRED:
            return abs(v - target)
        return abs(math.log(max(v, 1)) - math.log(max(target, 1)))

    return min(range(len(vals)), key=lambda i: (distance(vals[i]), vals[i]))


def _nearest(vals: tuple[int, ...], target: int, dim: Dim) -> int:
    return vals[_nearest_index(vals, target, dim)]


def layout_values(cores: int) -> tuple[int, ...]:
    """Default instance counts and threads per instance: 1..cores, powers of two past 4."""
    if cores <= 4:
        return tuple(range(1, cores + 1))
    vals = {1 << k for k in range(cores.bit_length()) if 1 << k <= cores} | {cores}
    return tuple(sorted(vals))


def max_batch_values(current: int) -> tuple[int, ...]:
    """Default max_batch_size grid: powers of four up to the config's own value (its author's
    cap), and that value: 32 -> 1, 4, 16, 32."""
    vals = {4**k for k in range(current.bit_length()) if 4**k <= current} | {current}
    return tuple(sorted(vals))


def build(
    *,
    cores: int,
    batching: bool,
    threads_tunable: bool,
    current_max_batch: int,
    instances: list[int] | None = None,
    threads: list[int] | None = None,
    max_batch: list[int] | None = None,
    preferred: list[int] | None = None,
    delays: list[int] | None = None,
    oversubscribe: bool = False,
    min_batch: int = 1,
) -> Space:
    """The space for one model: the user's values where given, else defaults for the cores."""
    values: dict[Dim, tuple[int, ...]] = {
        Dim.INSTANCES: tuple(sorted(set(instances or layout_values(cores))))
    }
    if threads_tunable:
        values[Dim.THREADS] = tuple(sorted(set(threads or layout_values(cores))))
    if batching:
        values[Dim.MAX_BATCH] = tuple(sorted(set(max_batch or max_batch_values(current_max_batch))))
        values[Dim.PREFERRED] = tuple(sorted(set(preferred or [0])))
        values[Dim.DELAY] = tuple(sorted(set(DEFAULT_DELAYS_US if delays is None else delays)))
    return Space(values, cores, oversubscribe, min_batch)
