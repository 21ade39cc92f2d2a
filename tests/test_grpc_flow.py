"""The gRPC transport's receive budget (frontends/grpc/flow.py), sans I/O: for any sequence of
asks, consumptions and ends, the budget is never overspent, every byte comes back, and a stream
that waits is served, first come first served, as soon as enough is free."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from torchtide.frontends.grpc.flow import RETURN_AT, Budget, Inflow
from torchtide.frontends.limits import STREAM_WINDOW

SIZE = 1000
ops = st.lists(
    st.tuples(st.sampled_from(["ask", "consume", "end"]), st.integers(0, 5), st.integers(1, SIZE)),
    max_size=60,
)


@given(ops)
def test_the_budget_is_never_overspent_and_waiters_are_served_in_order(
    steps: list[tuple[str, int, int]],
) -> None:
    budget = Budget(SIZE)
    flows = [Inflow(sid) for sid in range(1, 12, 2)]
    waiting: list[Inflow] = []  # our model of the queue
    for op, i, n in steps:
        flow = flows[i]
        if op == "ask":
            granted = budget.ask(flow, n)
            if granted:
                assert granted == n and not waiting  # nobody is overtaken
            elif not flow.ended and flow not in waiting:
                assert flow.wanted == n
                waiting.append(flow)
        elif op == "consume":
            budget.consumed(flow, n)
        else:
            budget.end(flow)
            if flow in waiting:
                waiting.remove(flow)
        served = [f for f in waiting if not f.wanted]
        assert served == waiting[: len(served)]  # first come, first served
        del waiting[: len(served)]
        if waiting:  # the first in line waits only for want of budget
            assert waiting[0].wanted > budget.free
        assert budget.free >= 0
        assert budget.free + sum(f.held for f in flows) == SIZE
    for flow in flows:
        budget.end(flow)
    assert budget.free == SIZE


def test_consumed_bytes_return_in_batches_and_grants_go_back_first() -> None:
    budget = Budget(10 * STREAM_WINDOW)
    flow = Inflow(1)
    flow.window = 0  # the client sent its whole window, and one message needs 3 windows more
    assert budget.ask(flow, 3 * STREAM_WINDOW) == 3 * STREAM_WINDOW
    # The handler takes the first messages: the grant goes back to the budget, not the window.
    assert budget.consumed(flow, 3 * STREAM_WINDOW) == []
    assert flow.held == 0 and budget.free == budget.size
    assert budget.consumed(flow, RETURN_AT - 1) == []  # then the window, in batches
    assert budget.consumed(flow, 1) == [(1, RETURN_AT)]
    assert flow.window == 3 * STREAM_WINDOW + RETURN_AT


def test_a_waiting_stream_is_granted_when_another_ends() -> None:
    budget = Budget(100)
    a, b, c = Inflow(1), Inflow(3), Inflow(5)
    assert budget.ask(a, 80) == 80
    assert budget.ask(b, 50) == 0  # waits
    assert budget.ask(c, 10) == 0  # waits behind b, though 20 are free: first come first served
    assert budget.end(a) == [(3, 50), (5, 10)]
    assert budget.free == 40 and b.held == 50 and c.held == 10
    assert budget.end(b) == [] and budget.end(c) == [] and budget.free == 100
