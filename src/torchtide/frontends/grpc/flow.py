"""The receive side of HTTP/2 flow control for the gRPC transport, sans I/O.

What a client may make one connection hold is bounded by what we let it send:

- the connection window (CONNECTION_WINDOW) is returned as data arrives, and overrunning it is a
  connection error (FLOW_CONTROL_ERROR); it bounds nothing by itself;
- each stream may send STREAM_WINDOW bytes (SETTINGS_INITIAL_WINDOW_SIZE) beyond those it has
  had consumed; overrunning it is a stream error (FLOW_CONTROL_ERROR). A unary call's window is
  never returned: its message is consumed when the call ends. A streaming call's window is
  returned as the handler takes its messages;
- a message larger than what its stream may still send is granted the rest from the
  connection's `Budget` (GrpcLimits.max_connection_buffer_size), held until the bytes are
  consumed. When the budget is spent the stream waits (first come, first served) until another
  call gives some back; every grant covers a whole message, so a granted message can always
  complete and the wait always ends.

So for every stream: bytes buffered + window the client still holds <= STREAM_WINDOW + held, and
one connection holds at most max_concurrent_streams x STREAM_WINDOW + the budget of request
bytes that are not yet consumed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from torchtide.frontends.limits import STREAM_WINDOW

RETURN_AT: Final = STREAM_WINDOW // 2  # consumed bytes returned in one WINDOW_UPDATE, at least


@dataclass(slots=True, eq=False)
class Inflow:
    """One stream's receive window and what it holds of its connection's budget (the
    transport's Stream is one)."""

    id: int
    window: int = field(default=STREAM_WINDOW, kw_only=True)  # what the client may still send
    held: int = field(default=0, kw_only=True)  # granted from the budget, not yet given back
    wanted: int = field(default=0, kw_only=True)  # asked of the budget, waiting for it
    unreturned: int = field(default=0, kw_only=True)  # consumed, not yet returned to the window
    ended: bool = field(default=False, kw_only=True)  # the call ended: nothing more is granted


class Budget:
    """The bytes one connection may be granted beyond its streams' windows."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiting: deque[Inflow] = deque()

    def ask(self, flow: Inflow, need: int) -> int:
        """Grant `need` more bytes of window to a stream whose message does not fit in what it
        may still send: the increment to send now, or 0 when the stream waits for bytes to come
        back (`consumed`, `end`)."""
        if flow.ended or flow.wanted:
            return 0
        if need <= self.free and not self._waiting:
            self._give(flow, need)
            return need
        flow.wanted = need
        self._waiting.append(flow)
        return 0

    def consumed(self, flow: Inflow, n: int) -> list[tuple[int, int]]:
        """A streaming call's handler took an `n`-byte message. Returns the WINDOW_UPDATEs to
        send, as (stream id, increment): bytes the stream held of the budget go back to it (and
        may let a waiting stream be granted), the rest return to the stream's window, in batches
        of at least RETURN_AT."""
        if flow.ended:
            return []
        updates: list[tuple[int, int]] = []
        back = min(n, flow.held)
        if back:
            flow.held -= back
            self.free += back
            updates = self._serve()
        flow.unreturned += n - back
        if flow.unreturned >= RETURN_AT:
            increment, flow.unreturned = flow.unreturned, 0
            flow.window += increment
            updates.append((flow.id, increment))
        return updates

    def end(self, flow: Inflow) -> list[tuple[int, int]]:
        """The call ended: everything it held comes back, and it wants nothing more."""
        flow.ended = True
        flow.wanted = 0
        self.free += flow.held
        flow.held = 0
        return self._serve() if self._waiting else []  # it may have been first in line

    def _give(self, flow: Inflow, n: int) -> None:
        self.free -= n
        flow.held += n
        flow.window += n

    def _serve(self) -> list[tuple[int, int]]:
        granted: list[tuple[int, int]] = []
        waiting = self._waiting
        while waiting:
            flow = waiting[0]
            if not flow.wanted:  # ended while it waited
                waiting.popleft()
                continue
            if flow.wanted > self.free:
                break
            waiting.popleft()
            need, flow.wanted = flow.wanted, 0
            self._give(flow, need)
            granted.append((flow.id, need))
        return granted
