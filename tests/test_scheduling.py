"""Scheduling observed through real executions of a Python model: the default scheduler, the
dynamic batcher (rows, preferred sizes, delay, shapes), priorities, queue policies, instances,
cancellation, ordering and drain."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import probe
from tests.models import write_model
from torchtide.errors import ServerError, Status
from torchtide.server import InferenceServer, ServerOptions


@pytest.fixture(autouse=True)
def _reset_probe() -> None:
    probe.reset()


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    servers: list[InferenceServer] = []

    async def make(
        extra: str = "", max_batch_size: int = 8, dims: str = "[-1]", ragged: bool = False
    ) -> InferenceServer:
        write_model(
            tmp_path,
            "probe",
            probe.probe_config(extra, max_batch_size, dims, ragged),
            {"1/model.py": probe.PROBE_PY},
        )
        s = InferenceServer(ServerOptions([tmp_path]))
        await s.start()
        assert s.is_ready(), s.repository_index()
        servers.append(s)
        return s

    yield make
    for s in servers:
        probe.GATE.set()
        await s.stop(timeout=10)


def infer(
    s: InferenceServer, n: int = 1, rid: str = "", value: float = 0.0, width: int = 2, **params: Any
) -> asyncio.Task[dict[str, Any]]:
    return asyncio.ensure_future(
        s.infer_numpy(
            "probe", {"IN": probe.rows(n, width, value)}, request_id=rid, parameters=params
        )
    )


async def blocker(s: InferenceServer) -> asyncio.Task[dict[str, Any]]:
    """Occupy the only instance until probe.GATE is set again."""
    probe.GATE.clear()
    t = infer(s, rid="blocker", block=True)
    assert await asyncio.to_thread(probe.ENTERED.wait, 60), "the blocker never started"
    return t


def stats(s: InferenceServer) -> dict[str, Any]:
    return s.statistics("probe")[0]


async def test_default_scheduler_runs_each_request_alone(make_server: ServerFactory) -> None:
    s = await make_server()  # max_batch_size 8, no dynamic_batching
    outs = await asyncio.gather(*(infer(s, 1, f"r{i}", value=i) for i in range(8)))
    assert [o["OUT"][0, 0] for o in outs] == [2 * i + 1 for i in range(8)]
    assert all(len(c.ids) == 1 for c in probe.CALLS)
    st = stats(s)
    assert st["execution_count"] == 8 and st["inference_count"] == 8


async def test_full_batch_does_not_wait_for_delay(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { max_queue_delay_microseconds: 30000000 }")
    tasks = [infer(s, 1, f"r{i}") for i in range(8)]
    await asyncio.wait_for(asyncio.gather(*tasks), 10)  # far less than the 30 s delay
    assert [sorted(c.ids) for c in probe.CALLS] == [sorted(f"r{i}" for i in range(8))]
    assert [b["batch_size"] for b in stats(s)["batch_stats"]] == [8]


async def test_max_batch_size_counts_rows(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { max_queue_delay_microseconds: 100000 }")
    b = await blocker(s)
    tasks = [infer(s, 3, f"r{i}") for i in range(8)]
    await asyncio.sleep(0.05)
    probe.GATE.set()
    await asyncio.gather(b, *tasks)
    batches = [sum(c.rows) for c in probe.CALLS if "blocker" not in c.ids]
    assert batches == [6, 6, 6, 6]
    assert max(x["batch_size"] for x in stats(s)["batch_stats"]) <= 8


async def test_preferred_batch_size_released_at_once(make_server: ServerFactory) -> None:
    s = await make_server(
        "dynamic_batching { preferred_batch_size: [4] max_queue_delay_microseconds: 600000 }"
    )
    b = await blocker(s)
    tasks = [infer(s, 1, f"r{i}") for i in range(6)]
    await asyncio.sleep(0.05)
    probe.GATE.set()
    await asyncio.gather(b, *tasks)
    sizes = [len(c.ids) for c in probe.CALLS if "blocker" not in c.ids]
    assert sizes == [4, 2]  # 4 at once, the other 2 after the delay
    assert stats(s)["inference_count"] == 7


async def test_delay_waits_for_more_requests(make_server: ServerFactory) -> None:
    # 50 ms between the two against a 1.5 s delay: only a loop stalled for over a second
    # could release "a" alone.
    s = await make_server("dynamic_batching { max_queue_delay_microseconds: 1500000 }")
    first = infer(s, 1, "a")
    await asyncio.sleep(0.05)
    second = infer(s, 1, "b")
    await asyncio.gather(first, second)
    assert [sorted(c.ids) for c in probe.CALLS] == [["a", "b"]]
    assert stats(s)["inference_stats"]["queue"]["ns"] >= 1_500_000_000  # a waited out the delay


async def test_different_shapes_never_batch_together(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { max_queue_delay_microseconds: 100000 }")
    b = await blocker(s)
    tasks = [infer(s, 1, f"w{i % 2}-{i}", width=2 + i % 2) for i in range(8)]
    await asyncio.sleep(0.05)
    probe.GATE.set()
    outs = await asyncio.gather(b, *tasks)
    for c in probe.CALLS:
        assert len({rid.split("-")[0] for rid in c.ids}) == 1, c.ids
    assert [o["OUT"].shape[1] for o in outs[1:]] == [2 + i % 2 for i in range(8)]


async def test_ragged_inputs_batch_together(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { max_queue_delay_microseconds: 100000 }", ragged=True)
    b = await blocker(s)
    tasks = [infer(s, 1, f"r{i}", width=2 + i % 2) for i in range(8)]
    await asyncio.sleep(0.05)
    probe.GATE.set()
    outs = await asyncio.gather(b, *tasks)
    assert [len(c.ids) for c in probe.CALLS] == [1, 8]  # both widths in one execute()
    assert [o["OUT"].shape[1] for o in outs[1:]] == [2 + i % 2 for i in range(8)]


async def test_priority_levels(make_server: ServerFactory) -> None:
    s = await make_server(
        "dynamic_batching { priority_levels: 2 default_priority_level: 2 }", max_batch_size=1
    )
    b = await blocker(s)
    low = [infer(s, 1, f"low{i}") for i in range(3)]
    await asyncio.sleep(0.02)
    high = infer(s, 1, "high", priority=1)
    odd = infer(s, 1, "odd", priority=9)  # above priority_levels: the default level
    await asyncio.sleep(0.05)
    probe.GATE.set()
    await asyncio.gather(b, *low, high, odd)
    order = [c.ids[0] for c in probe.CALLS]
    assert order == ["blocker", "high", "low0", "low1", "low2", "odd"]


async def test_max_queue_size_rejects_with_unavailable(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { default_queue_policy { max_queue_size: 2 } }")
    b = await blocker(s)
    tasks = [infer(s, 1, f"q-{i}") for i in range(5)]
    done = await asyncio.gather(*tasks[2:], return_exceptions=True)
    for i, e in enumerate(done, start=2):
        assert isinstance(e, ServerError) and e.status is Status.UNAVAILABLE
        assert e.message == f"[request id: q-{i}] Exceeds maximum queue size"
    probe.GATE.set()
    await asyncio.gather(b, *tasks[:2])
    assert stats(s)["inference_stats"]["success"]["count"] == 3


async def test_queue_timeout_reject(make_server: ServerFactory) -> None:
    s = await make_server(
        "dynamic_batching { default_queue_policy { timeout_action: REJECT "
        "default_timeout_microseconds: 100000 } }"
    )
    b = await blocker(s)
    late = infer(s, 1, "late")
    with pytest.raises(ServerError) as ei:
        await asyncio.wait_for(late, 10)  # rejected while the blocker still runs
    assert ei.value.status is Status.UNAVAILABLE and ei.value.message == "Request timeout expired"
    assert not probe.GATE.is_set()
    probe.GATE.set()
    await b
    st = stats(s)
    assert st["inference_stats"]["fail"]["count"] == 1
    assert all("late" not in c.ids for c in probe.CALLS)  # it never reached the model


async def test_queue_timeout_delay_still_runs(make_server: ServerFactory) -> None:
    # "delayed" asks for a 50 ms queue timeout; "fresh" keeps the default of 600 s, so however
    # slow the machine, only "delayed" times out.
    s = await make_server(
        "dynamic_batching { default_queue_policy { timeout_action: DELAY "
        "default_timeout_microseconds: 600000000 allow_timeout_override: true } }"
    )
    b = await blocker(s)
    first = infer(s, 1, "delayed", timeout=50000)
    scheduler = s.resolve("probe").scheduler
    while not scheduler.delayed:  # "delayed" has timed out: it goes behind the next one
        await asyncio.sleep(0.01)
    second = infer(s, 1, "fresh")
    await asyncio.sleep(0)
    probe.GATE.set()
    await asyncio.gather(b, first, second)
    flat = [rid for c in probe.CALLS for rid in c.ids]
    assert flat.index("fresh") < flat.index("delayed")
    assert stats(s)["inference_stats"]["fail"]["count"] == 0


async def test_timeout_override_only_shortens(make_server: ServerFactory) -> None:
    s = await make_server(
        "dynamic_batching { default_queue_policy { allow_timeout_override: true "
        "default_timeout_microseconds: 10000000 } }"
    )
    b = await blocker(s)
    short = infer(s, 1, "short", timeout=50000)
    longer = infer(s, 1, "long", timeout=60000000)
    plain = infer(s, 1, "plain")
    with pytest.raises(ServerError, match="Request timeout expired"):
        await asyncio.wait_for(short, 10)
    probe.GATE.set()
    await asyncio.gather(b, longer, plain)


async def test_timeout_parameter_ignored_without_override(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { }")
    b = await blocker(s)
    t = infer(s, 1, "t", timeout=1000)
    await asyncio.sleep(0.1)
    probe.GATE.set()
    await asyncio.gather(b, t)


async def test_cancelled_requests_never_reach_the_model(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { max_queue_delay_microseconds: 1000 }")
    b = await blocker(s)
    keep = [infer(s, 1, f"keep{i}") for i in range(3)]
    drop = [infer(s, 1, f"drop{i}") for i in range(3)]
    await asyncio.sleep(0.02)
    for t in drop:
        t.cancel()
    await asyncio.sleep(0.02)
    probe.GATE.set()
    await asyncio.gather(b, *keep)
    seen = {rid for c in probe.CALLS for rid in c.ids}
    assert seen == {"blocker", "keep0", "keep1", "keep2"}
    assert stats(s)["inference_stats"]["fail"]["count"] == 3


async def test_two_instances_run_at_once(make_server: ServerFactory) -> None:
    s = await make_server("instance_group [{ count: 2 kind: KIND_CPU }]")
    probe.BARRIER = threading.Barrier(2)
    # Each request waits at a 2-party barrier inside execute(): both only return if both
    # instances were inside execute() at the same moment.
    outs = await asyncio.wait_for(
        asyncio.gather(infer(s, 1, "a", barrier=True), infer(s, 1, "b", barrier=True)), 30
    )
    assert len(outs) == 2
    assert {c.instance for c in probe.CALLS} == {"probe_0_0", "probe_0_1"}


async def test_one_instance_cannot_run_two_at_once(make_server: ServerFactory) -> None:
    s = await make_server()
    probe.BARRIER = threading.Barrier(2)
    probe.BARRIER_TIMEOUT = 2.0
    with pytest.raises(ServerError):
        await asyncio.wait_for(
            asyncio.gather(infer(s, 1, "a", barrier=True), infer(s, 1, "b", barrier=True)), 60
        )


async def test_per_response_errors_fail_alone(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { max_queue_delay_microseconds: 200000 }")
    tasks = [infer(s, 1, f"r{i}", value=i, fail=(i % 3 == 0)) for i in range(6)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert len(probe.CALLS) == 1  # one execute() with all six
    for i, r in enumerate(results):
        if i % 3 == 0:
            assert isinstance(r, ServerError) and r.status is Status.INTERNAL
            assert r.message == "asked to fail"
        else:
            assert isinstance(r, dict) and r["OUT"][0, 0] == 2 * i + 1


async def test_preserve_ordering(make_server: ServerFactory) -> None:
    s = await make_server(
        "dynamic_batching { preserve_ordering: true }\n"
        "instance_group [{ count: 2 kind: KIND_CPU }]",
    )
    finished: list[str] = []

    async def go(rid: str, **p: Any) -> None:
        await infer(s, 1, rid, **p)
        finished.append(rid)

    probe.GATE.clear()
    first = asyncio.ensure_future(go("slow", block=True))
    assert await asyncio.to_thread(probe.ENTERED.wait, 60)
    second = asyncio.ensure_future(go("fast"))
    await asyncio.sleep(0.2)  # "fast" ran on the other instance but must not be released first
    assert finished == []
    probe.GATE.set()
    await asyncio.gather(first, second)
    assert finished == ["slow", "fast"]


async def test_graceful_stop_drains_in_flight(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { }")
    b = await blocker(s)
    queued = [infer(s, 1, f"r{i}") for i in range(4)]
    await asyncio.sleep(0.02)
    stopping = asyncio.ensure_future(s.stop(timeout=20))
    await asyncio.sleep(0.05)
    with pytest.raises(ServerError) as ei:
        await s.infer_numpy("probe", {"IN": probe.rows(1)})
    assert ei.value.status is Status.UNAVAILABLE
    probe.GATE.set()
    assert await stopping is True
    outs = await asyncio.gather(b, *queued)
    assert all(np.all(o["OUT"] == 1) for o in outs)


async def test_statistics_add_up(make_server: ServerFactory) -> None:
    s = await make_server("dynamic_batching { max_queue_delay_microseconds: 20000 }")
    await asyncio.gather(*(infer(s, 1 + i % 4, f"r{i}") for i in range(16)))
    st = stats(s)
    inf = st["inference_stats"]
    assert inf["success"]["count"] == 16
    assert inf["queue"]["count"] == inf["compute_infer"]["count"] == 16
    assert st["inference_count"] == sum(1 + i % 4 for i in range(16))
    assert (
        sum(b["batch_size"] * b["compute_infer"]["count"] for b in st["batch_stats"])
        == st["inference_count"]
    )
    assert sum(b["compute_infer"]["count"] for b in st["batch_stats"]) == st["execution_count"]
    assert st["execution_count"] == len(probe.CALLS)


async def test_hung_execute_is_cut_loose(make_server: ServerFactory, tmp_path: Path) -> None:
    from tests.models import write_add_sub

    write_add_sub(tmp_path)
    s = await make_server(
        'parameters { key: "EXECUTE_TIMEOUT_SECS" value { string_value: "0.3" } }'
    )
    probe.GATE.clear()  # the next execute() hangs until the test lets it go
    with pytest.raises(ServerError) as ei:
        await asyncio.wait_for(infer(s, 1, "stuck", block=True), 10)
    assert ei.value.status is Status.UNAVAILABLE
    assert ei.value.message == (
        "instance 'probe_0_0' did not return from execute() within 0.3 s (EXECUTE_TIMEOUT_SECS); "
        "it was taken out of service"
    )
    assert not s.model_ready("probe") and not s.is_ready()
    entry = next(e for e in s.repository_index() if e["name"] == "probe")
    assert entry["state"] == "UNAVAILABLE" and "did not return from execute()" in entry["reason"]
    with pytest.raises(ServerError, match="no instance left in service"):
        await infer(s, 1, "next")
    one = np.ones((1, 16), np.int32)
    out = await s.infer_numpy("add_sub", {"INPUT0": one, "INPUT1": one})  # others unaffected
    assert out["OUTPUT0"].sum() == 32
    assert await s.stop(timeout=5)  # shutdown does not wait on the hung thread
    probe.GATE.set()


async def test_idle_instances_share_a_batch(make_server: ServerFactory) -> None:
    s = await make_server(
        "dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 100000 }\n"
        "instance_group [{ count: 2 kind: KIND_CPU }]"
    )
    outs = await asyncio.gather(*(infer(s, 1, f"r{i}", value=i) for i in range(8)))
    assert [o["OUT"][0, 0] for o in outs] == [2 * i + 1 for i in range(8)]
    assert sorted(len(c.ids) for c in probe.CALLS) == [4, 4]  # both instances got half
    assert {c.instance for c in probe.CALLS} == {"probe_0_0", "probe_0_1"}
    assert s.resolve("probe").stats.releases["balanced"] == 2


async def test_unload_waits_for_in_flight_requests(tmp_path: Path) -> None:
    write_model(tmp_path, "probe", probe.probe_config("dynamic_batching { }"),
                {"1/model.py": probe.PROBE_PY})
    s = InferenceServer(ServerOptions([tmp_path], control_mode="explicit", startup_models=["*"]))
    await s.start()
    try:
        b = await blocker(s)
        queued = infer(s, 1, "queued")
        await asyncio.sleep(0.02)
        unloading = asyncio.ensure_future(s.unload("probe"))
        await asyncio.sleep(0.1)
        assert not unloading.done()  # waits while a request executes
        assert not s.model_ready("probe")  # but takes no new work
        probe.GATE.set()
        await unloading
        outs = await asyncio.gather(b, queued)
        assert all(np.all(o["OUT"] == 1) for o in outs)
    finally:
        probe.GATE.set()
        await s.stop()
