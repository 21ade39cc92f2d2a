"""Property tests: merge/split, and the batcher under any arrival pattern."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchtide import batching
from torchtide.backends.base import InstanceInfo, ModelInstance, Result, Timing, Work
from torchtide.instances import InstanceRunner
from torchtide.scheduler import BatchPolicy, Pending, QueuePolicy, Scheduler
from torchtide.stats import ModelStats

row_counts = st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=12)


@given(rows=row_counts, width=st.integers(1, 4))
def test_split_of_merge_returns_each_request_its_own_rows(rows: list[int], width: int) -> None:
    items, start = [], 0
    for n in rows:
        items.append(
            {
                "A": np.arange(start, start + n * width).reshape(n, width),
                "B": np.full((n, 1), len(items)),
            }
        )
        start += n * width
    merged = batching.merge(items)
    assert merged["A"].shape[0] == sum(rows)
    parts = batching.split(merged, rows)
    assert len(parts) == len(items)
    for part, item in zip(parts, items, strict=True):
        for name in item:
            np.testing.assert_array_equal(part[name], item[name])


@given(rows=row_counts)
def test_split_returns_views_not_copies(rows: list[int]) -> None:
    out = {"Y": np.arange(sum(rows) * 2).reshape(-1, 2)}
    for part in batching.split(out, rows):
        assert part["Y"].size == 0 or np.shares_memory(part["Y"], out["Y"])


class RecordingInstance(ModelInstance):
    """A real instance that doubles its input and records every batch it ran."""

    def __init__(self, log: list[list[int]]) -> None:
        self.log = log

    def execute(self, work: list[Work], timing: Timing) -> list[Result]:
        self.log.append([w.rows for w in work])
        return [{"Y": w.inputs["X"] * 2} for w in work]


arrivals = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from([0.0, 0.0, 0.0005, 0.002])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=arrivals,
    max_batch=st.integers(4, 8),
    preferred=st.lists(st.integers(1, 8), max_size=2),
    delay_us=st.sampled_from([0, 500, 3000]),
    instances=st.integers(1, 2),
)
def test_batcher_answers_every_request_once_with_its_rows(
    pattern: list[tuple[int, float]],
    max_batch: int,
    preferred: list[int],
    delay_us: int,
    instances: int,
) -> None:
    preferred = [p for p in preferred if p <= max_batch]
    policy = BatchPolicy(
        dynamic=True,
        max_batch_size=max_batch,
        preferred=frozenset(preferred) or frozenset({max_batch}),
        delay_ns=delay_us * 1000,
    )
    log: list[list[int]] = []

    async def run() -> list[Result]:
        runners = []
        for i in range(instances):
            r = InstanceRunner(InstanceInfo(f"m_0_{i}", "CPU", 0))
            r.instance = RecordingInstance(log)
            runners.append(r)
        sched = Scheduler(policy, runners, ModelStats())
        sched.start()
        pendings: list[Pending] = []
        for i, (n, gap) in enumerate(pattern):
            x = np.full((n, 3), i, dtype=np.int64)
            pendings.append(sched.enqueue(Work({"X": x}, n, ["Y"]), ("k",), str(i)))
            if gap:
                await asyncio.sleep(gap)
        results = await asyncio.wait_for(asyncio.gather(*(p.future for p in pendings)), 30)
        await sched.close()
        return results

    results = asyncio.run(run())
    for i, ((n, _), r) in enumerate(zip(pattern, results, strict=True)):
        assert isinstance(r, dict)
        np.testing.assert_array_equal(r["Y"], np.full((n, 3), 2 * i))
    assert sum(len(b) for b in log) == len(pattern)  # every request executed exactly once
    assert all(sum(b) <= max_batch for b in log)


def _pending(rows: int, enqueue_ns: int, key: tuple[Any, ...] = ("k",)) -> Pending:
    loop = asyncio.new_event_loop()
    try:
        fut: asyncio.Future[Result] = loop.create_future()
    finally:
        loop.close()
    return Pending(Work({}, rows, []), fut, key, enqueue_ns)


@given(
    rows=st.lists(st.integers(1, 4), min_size=1, max_size=20),
    max_batch=st.integers(4, 16),
    preferred=st.lists(st.integers(1, 16), max_size=3),
    delay_us=st.integers(0, 10_000),
    elapsed_us=st.integers(0, 20_000),
)
def test_formation_rules(
    rows: list[int], max_batch: int, preferred: list[int], delay_us: int, elapsed_us: int
) -> None:
    """For any queue: a released batch never exceeds max_batch_size; one released before its
    delay is a preferred size (or full); once the oldest request's delay is up, something is
    always released."""
    preferred = [p for p in preferred if p <= max_batch]
    pref = frozenset(preferred) or frozenset({max_batch})
    policy = BatchPolicy(True, max_batch, pref, delay_us * 1000, policies=(QueuePolicy(),))
    sched = Scheduler.__new__(Scheduler)  # formation only: no loop, no instances needed
    sched.policy = policy
    sched.stats = ModelStats()
    sched.queues = [deque()]
    sched.delayed = deque()
    t0 = time.monotonic_ns()
    for i, n in enumerate(rows):
        sched.queues[0].append(_pending(n, t0 + i))
    now = t0 + elapsed_us * 1000
    batch, reason, ready_at = sched._form(now)
    size = sum(p.work.rows for p in batch)
    assert size <= max_batch
    if batch:
        assert batch == list(sched.queues[0])[: len(batch)]  # FIFO prefix
        if now < t0 + delay_us * 1000:
            assert reason in ("full", "preferred")
            assert reason == "full" or size in pref
    else:
        assert ready_at is not None and ready_at > now  # waiting, and only until the delay
        assert ready_at == t0 + delay_us * 1000
