"""BATCH_BY_LENGTH: the dynamic batcher groups requests of similar length. Property tests of
the choice (every request once, the oldest always in the next batch, no starvation, the
narrowest window) and real executions of a Python model through the server."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import probe
from tests.models import write_model
from torchtide import lengthbatch
from torchtide.backends.base import InstanceInfo, ModelInstance, Result, Timing, Work
from torchtide.instances import InstanceRunner
from torchtide.scheduler import BatchPolicy, Pending, QueuePolicy, Scheduler
from torchtide.server import InferenceServer, ServerOptions
from torchtide.stats import ModelStats

# ------------------------------------------------------------------ the choice, for any queue

queues = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 4)), min_size=1, max_size=40)


@given(
    q=queues,
    max_batch=st.integers(4, 16),
    preferred=st.lists(st.integers(1, 16), max_size=3),
    waited=st.booleans(),
)
def test_choice_holds_the_oldest_and_respects_the_sizes(
    q: list[tuple[int, int]], max_batch: int, preferred: list[int], waited: bool
) -> None:
    lengths, rows = [x[0] for x in q], [x[1] for x in q]
    pref = frozenset(p for p in preferred if p <= max_batch) or frozenset({max_batch})
    got = lengthbatch.choose(lengths, rows, max_batch, pref, waited)
    total = sum(rows)
    fits = [p for p in pref if p <= total and p < max_batch]
    if got is None:  # waiting only when nothing may leave yet
        assert not waited and total < max_batch and not fits
        return
    picked, reason = got
    assert 0 in picked  # the oldest
    assert len(set(picked)) == len(picked) and all(0 <= i < len(q) for i in picked)
    size = sum(rows[i] for i in picked)
    assert [lengths[i] for i in picked] == sorted(lengths[i] for i in picked)
    if reason == "full":
        assert total >= max_batch and size <= max(max_batch, rows[0])
    elif reason == "preferred":
        assert size <= max(max(fits), rows[0])
    else:
        assert reason == "delay" and waited and sorted(picked) == list(range(len(q)))
    # contiguous in (length, queue position) order
    order = sorted(range(len(q)), key=lambda i: (lengths[i], i))
    pos = sorted(order.index(i) for i in picked)
    assert pos == list(range(pos[0], pos[0] + len(pos)))


@given(
    lengths=st.lists(st.integers(0, 100), min_size=1, max_size=30),
    rows=st.data(),
    target=st.integers(1, 12),
)
def test_window_is_the_best_run_holding_the_head(
    lengths: list[int], rows: st.DataObject, target: int
) -> None:
    lengths = sorted(lengths)
    r = rows.draw(st.lists(st.integers(1, 4), min_size=len(lengths), max_size=len(lengths)))
    head = rows.draw(st.integers(0, len(lengths) - 1))
    target = max(target, r[head])
    start, stop = lengthbatch.window(lengths, r, head, target)
    assert start <= head < stop and sum(r[start:stop]) <= target
    # brute force over every run holding the head: most rows, then the narrowest range
    best = max(
        (sum(r[a:b]), -(lengths[b - 1] - lengths[a]))
        for a in range(head + 1)
        for b in range(head + 1, len(lengths) + 1)
        if sum(r[a:b]) <= target
    )
    assert (sum(r[start:stop]), -(lengths[stop - 1] - lengths[start])) == best


@settings(max_examples=60, deadline=None)
@given(
    arrivals=st.lists(
        st.lists(st.integers(0, 80), max_size=6), min_size=1, max_size=25
    ),  # lengths arriving before each batch is formed
    max_batch=st.integers(2, 8),
    preferred=st.lists(st.integers(1, 8), max_size=2),
)
def test_no_request_is_starved(
    arrivals: list[list[int]], max_batch: int, preferred: list[int]
) -> None:
    """Whatever arrives (e.g. a stream of short requests while a long one waits), every
    request is served exactly once, and a request with k requests queued ahead of it is in one
    of the next k + 1 batches."""
    pref = frozenset(p for p in preferred if p <= max_batch) or frozenset({max_batch})
    queue: list[tuple[int, int]] = []  # (request id, length), oldest first
    bound: dict[int, int] = {}  # request id -> the last batch number it may be served in
    served: list[int] = []
    ids = itertools.count()
    batches = 0

    def one_batch() -> None:
        nonlocal queue, batches
        got = lengthbatch.choose([x[1] for x in queue], [1] * len(queue), max_batch, pref, True)
        assert got is not None  # the delay is up: something always leaves
        picked, _ = got
        batches += 1
        assert 0 in picked
        for i in picked:
            assert batches <= bound[queue[i][0]]
            served.append(queue[i][0])
        queue = [x for i, x in enumerate(queue) if i not in set(picked)]

    for step in arrivals:
        for length in step:
            rid = next(ids)
            bound[rid] = batches + len(queue) + 1
            queue.append((rid, length))
        if queue:
            one_batch()
    while queue:
        one_batch()
    assert sorted(served) == list(range(next(ids)))


def test_length_of_bytes_and_of_a_dimension() -> None:
    text = np.array([[b"abc"], [b"abcdefg"]], dtype=object)
    assert lengthbatch.LengthOf("T", None)({"T": text}) == 7
    assert lengthbatch.LengthOf("T", None)({}) == 0  # an optional input left out
    ids = np.zeros((1, 5, 9), np.int64)
    assert lengthbatch.LengthOf("IDS", 0)({"IDS": ids}) == 5
    assert lengthbatch.LengthOf("IDS", 1)({"IDS": ids}) == 9


# ------------------------------------------------------------------ the scheduler's batches


class RecordingInstance(ModelInstance):
    def __init__(self, log: list[list[int]]) -> None:
        self.log = log

    def execute(self, work: list[Work], timing: Timing) -> list[Result]:
        self.log.append([int(w.inputs["X"][0, 0]) for w in work])
        return [{"Y": w.inputs["X"] * 2} for w in work]


def _policy(max_batch: int, preferred: list[int], delay_us: int) -> BatchPolicy:
    pref = frozenset(p for p in preferred if p <= max_batch) or frozenset({max_batch})
    return BatchPolicy(
        dynamic=True,
        max_batch_size=max_batch,
        preferred=pref,
        delay_ns=delay_us * 1000,
        by_length=lengthbatch.LengthOf("X", 0),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.lists(
        st.tuples(st.integers(1, 40), st.sampled_from([0.0, 0.0, 0.0005, 0.002])),
        min_size=1,
        max_size=40,
    ),
    max_batch=st.integers(2, 8),
    preferred=st.lists(st.integers(1, 8), max_size=2),
    delay_us=st.sampled_from([0, 500, 3000]),
    instances=st.integers(1, 2),
)
def test_scheduler_answers_every_request_once(
    pattern: list[tuple[int, float]],
    max_batch: int,
    preferred: list[int],
    delay_us: int,
    instances: int,
) -> None:
    """Real scheduler, real instance threads: each request gets its own answer, once."""
    policy = _policy(max_batch, preferred, delay_us)
    log: list[list[int]] = []

    async def run() -> list[Result]:
        runners = []
        for i in range(instances):
            r = InstanceRunner(InstanceInfo(f"m_0_{i}", "CPU", 0))
            r.instance = RecordingInstance(log)
            runners.append(r)
        sched = Scheduler(policy, runners, ModelStats())
        sched.start()
        pendings = []
        for i, (length, gap) in enumerate(pattern):
            x = np.full((1, length), i, dtype=np.int64)
            pendings.append(sched.enqueue(Work({"X": x}, 1, ["Y"]), ("k",), str(i)))
            if gap:
                await asyncio.sleep(gap)
        results = await asyncio.wait_for(asyncio.gather(*(p.future for p in pendings)), 30)
        await sched.close()
        return results

    results = asyncio.run(run())
    for i, ((length, _), r) in enumerate(zip(pattern, results, strict=True)):
        assert isinstance(r, dict)
        np.testing.assert_array_equal(r["Y"], np.full((1, length), 2 * i))
    assert sorted(i for b in log for i in b) == list(range(len(pattern)))
    assert all(len(b) <= max_batch for b in log)


def _pending(length: int, enqueue_ns: int, key: tuple[Any, ...] = ("k",)) -> Pending:
    loop = asyncio.new_event_loop()
    try:
        fut: asyncio.Future[Result] = loop.create_future()
    finally:
        loop.close()
    return Pending(Work({}, 1, []), fut, key, enqueue_ns, length=length)


@given(
    q=st.lists(st.tuples(st.integers(0, 50), st.sampled_from(["a", "b"])), min_size=1, max_size=30),
    max_batch=st.integers(2, 8),
    preferred=st.lists(st.integers(1, 8), max_size=2),
    delay_us=st.integers(0, 10_000),
    elapsed_us=st.integers(0, 20_000),
)
def test_formed_batch_holds_the_oldest_and_its_shape_only(
    q: list[tuple[int, str]],
    max_batch: int,
    preferred: list[int],
    delay_us: int,
    elapsed_us: int,
) -> None:
    """Formation alone: the oldest is in the batch, every member shares its shape key, the
    batch leaves early only when full or preferred, and otherwise waits only for the delay."""
    policy = _policy(max_batch, preferred, delay_us)
    sched = Scheduler.__new__(Scheduler)  # formation only: no loop, no instances needed
    sched.policy = policy
    sched.stats = ModelStats()
    sched.queues = [deque()]
    sched.delayed = deque()
    t0 = time.monotonic_ns()
    for i, (length, key) in enumerate(q):
        sched.queues[0].append(_pending(length, t0 + i, (key,)))
    now = t0 + elapsed_us * 1000
    batch, reason, ready_at = sched._form(now)
    head = sched.queues[0][0]
    if not batch:
        assert ready_at == t0 + delay_us * 1000 and ready_at > now
        return
    assert head in batch and all(p.key == head.key for p in batch)
    assert len(batch) <= max_batch
    if now < t0 + delay_us * 1000:
        assert reason == "full" or (reason == "preferred" and len(batch) in policy.preferred)


def test_default_policy_has_no_length_rule() -> None:
    assert BatchPolicy().by_length is None
    assert BatchPolicy(True, 8, frozenset({8}), 0, policies=(QueuePolicy(),)).by_length is None


# ------------------------------------------------------------------ through the server

LENS_PY = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils
from tests import probe


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]

    def execute(self, requests):
        texts = [pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy() for r in requests]
        params = [json.loads(r.parameters()) for r in requests]
        lengths = [max(len(x) for x in t.reshape(-1)) for t in texts]
        probe.CALLS.append(probe.Call(self.name, [r.request_id() for r in requests], lengths))
        if any(p.get("block") for p in params):
            probe.ENTERED.set()
            probe.GATE.wait(30)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("LEN", np.full((t.shape[0], 1), n, np.int32))])
            for t, n in zip(texts, lengths)
        ]
"""


def lens_config(extra: str) -> str:
    return f"""
backend: "python"
max_batch_size: 32
input [{{ name: "TEXT" data_type: TYPE_STRING dims: [1] }}]
output [{{ name: "LEN" data_type: TYPE_INT32 dims: [1] }}]
dynamic_batching {{ preferred_batch_size: [4] max_queue_delay_microseconds: 30000000 }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
{extra}
"""


BY_LENGTH = 'parameters { key: "BATCH_BY_LENGTH" value { string_value: "TEXT" } }'


@pytest.fixture(autouse=True)
def _reset_probe() -> None:
    probe.reset()


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    servers: list[InferenceServer] = []

    async def make(extra: str) -> InferenceServer:
        repo = tmp_path / f"repo{len(servers)}"
        write_model(repo, "lens", lens_config(extra), {"1/model.py": LENS_PY})
        s = InferenceServer(ServerOptions([repo]))
        await s.start()
        assert s.is_ready(), s.repository_index()
        servers.append(s)
        return s

    yield make
    for s in servers:
        probe.GATE.set()
        await s.stop(timeout=10)


def text(n: int) -> np.ndarray[Any, Any]:
    return np.array([[b"x" * n]], dtype=object)


async def queue_then_release(s: InferenceServer, lengths: list[int]) -> list[dict[str, Any]]:
    """Occupy the instance, queue one request per length (oldest first), then let them run."""
    probe.GATE.clear()
    four = np.repeat(text(1), 4, axis=0)  # the preferred size: it leaves at once, alone
    blocker = asyncio.ensure_future(
        s.infer_numpy("lens", {"TEXT": four}, request_id="blocker", parameters={"block": True})
    )
    assert await asyncio.to_thread(probe.ENTERED.wait, 10)
    tasks = []
    for i, n in enumerate(lengths):
        tasks.append(
            asyncio.ensure_future(s.infer_numpy("lens", {"TEXT": text(n)}, request_id=f"r{i}"))
        )
    stats = s.resolve("lens").scheduler.stats
    for _ in range(1000):  # every request queued behind the blocker
        if stats.pending == len(lengths):
            break
        await asyncio.sleep(0.01)
    assert stats.pending == len(lengths)
    probe.GATE.set()
    await blocker
    return list(await asyncio.wait_for(asyncio.gather(*tasks), 30))


LENGTHS = [31, 2, 17, 9, 40, 5, 23, 12, 36, 1, 28, 14, 7, 33, 20, 3]  # 16, all different


async def test_batches_group_similar_lengths(make_server: Callable[[str], Any]) -> None:
    s = await make_server(BY_LENGTH)
    outs = await queue_then_release(s, LENGTHS)
    assert [int(o["LEN"][0, 0]) for o in outs] == LENGTHS  # each request its own answer
    calls = [c for c in probe.CALLS if "blocker" not in c.ids]
    assert [len(c.ids) for c in calls] == [4, 4, 4, 4]  # the preferred size, no delay waited
    remaining = list(range(len(LENGTHS)))
    for c in calls:
        members = sorted(int(rid[1:]) for rid in c.ids)
        assert remaining[0] in members  # the oldest still queued is in the batch
        ranks = sorted(sorted(LENGTHS[i] for i in remaining).index(LENGTHS[i]) for i in members)
        assert ranks == list(range(ranks[0], ranks[0] + 4))  # neighbours in length
        remaining = [i for i in remaining if i not in members]
    padded = sum(len(c.rows) * max(c.rows) - sum(c.rows) for c in calls)
    fifo = sum(4 * max(g) - sum(g) for g in (LENGTHS[i : i + 4] for i in range(0, 16, 4)))
    assert padded < fifo / 2


async def test_without_the_parameter_batches_keep_arrival_order(
    make_server: Callable[[str], Any],
) -> None:
    s = await make_server("")
    await queue_then_release(s, LENGTHS)
    calls = [c for c in probe.CALLS if "blocker" not in c.ids]
    assert [c.ids for c in calls] == [[f"r{i}" for i in range(j, j + 4)] for j in range(0, 16, 4)]


async def test_broken_parameters_are_load_errors(tmp_path: Path) -> None:
    io = """
max_batch_size: 8
input [{ name: "TEXT" data_type: TYPE_STRING dims: [1] }, { name: "IDS" data_type: TYPE_INT64 dims: [4] }]
output [{ name: "LEN" data_type: TYPE_INT32 dims: [1] }]
"""
    cases = {
        "no_input": (
            "dynamic_batching {}",
            "NOPE",
            "'NOPE' names no input of the model (expected NAME or NAME:DIM)",
        ),
        "bad_dim": (
            "dynamic_batching {}",
            "TEXT:3",
            "'TEXT:3': input 'TEXT' has dims [1]; DIM must be in 0..0",
        ),
        "fixed_dims": (
            "dynamic_batching {}",
            "IDS",
            "'IDS': input 'IDS' is not BYTES and has no variable (-1) dimension; name one as "
            "NAME:DIM",
        ),
        "no_batcher": (
            "",
            "TEXT",
            "needs dynamic_batching (it orders the dynamic batcher's queue)",
        ),
        "ordered": (
            "dynamic_batching { preserve_ordering: true }",
            "TEXT",
            "cannot be combined with dynamic_batching.preserve_ordering (batches leave by length)",
        ),
    }
    for name, (batching, value, _) in cases.items():
        cfg = f'backend: "python"\n{io}\n{batching}\nparameters {{ key: "BATCH_BY_LENGTH" value {{ string_value: "{value}" }} }}'
        write_model(tmp_path, name, cfg, {"1/model.py": LENS_PY})
    s = InferenceServer(ServerOptions([tmp_path]))
    await s.start()
    try:
        index = {e["name"]: e for e in s.repository_index()}
    finally:
        await s.stop()
    for name, (_, _, why) in cases.items():
        assert index[name]["state"] == "UNAVAILABLE"
        cfg = tmp_path / name / "config.pbtxt"
        assert index[name]["reason"] == f"{cfg}: parameters 'BATCH_BY_LENGTH': {why}"
