"""Hostile clients against the gRPC transport, part two (issue 14): silent and surplus
connections, flow control (what a client may make one connection buffer), frames that move
nothing forward, and a client that never reads its responses. Raw sockets for the offender, a
well-behaved tritonclient on another connection, socket timeouts of WAIT seconds, never a speed
assertion."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from tests.conftest import start_app
from tests.test_grpc_transport import SERVICE, Frame, RawClient, goaway_code, grpc_message
from tests.test_hostile_grpc import (
    LIVE,
    TIGHT,
    WAIT,
    alive,
    ended,
    next_on,
    open_stream,
    padded,
    status,
    under_attack,
    well_behaved,
)
from torchtide.app import AppThread
from torchtide.frontends.grpc import http2 as h2
from torchtide.frontends.grpc.connection import GrpcConnection
from torchtide.frontends.grpc.flow import RETURN_AT
from torchtide.frontends.limits import (
    SEND_QUEUE_BYTES,
    STREAM_INFLIGHT,
    STREAM_WINDOW,
    GrpcLimits,
)

MiB = 2**20
TIMEOUT_S = 1.0
TIMED = GrpcLimits(handshake_timeout_s=TIMEOUT_S, idle_timeout_s=TIMEOUT_S)
CAPPED = GrpcLimits(max_connections=3)
BUDGET = GrpcLimits(max_message_size=3 * MiB, max_connection_buffer_size=3 * MiB)
DEFAULT = GrpcLimits()


def _serve(repo: Path, limits: GrpcLimits) -> Iterator[int]:
    app = start_app(repo, http=False, grpc_limits=limits)
    yield int(app.app.port("grpc"))
    app.stop()


@pytest.fixture(scope="module")
def tight(standard_repo: Path) -> Iterator[int]:
    yield from _serve(standard_repo, TIGHT)


@pytest.fixture(scope="module")
def timed(standard_repo: Path) -> Iterator[int]:
    yield from _serve(standard_repo, TIMED)


@pytest.fixture(scope="module")
def capped(standard_repo: Path) -> Iterator[int]:
    yield from _serve(standard_repo, CAPPED)


@pytest.fixture(scope="module")
def budget(standard_repo: Path) -> Iterator[int]:
    yield from _serve(standard_repo, BUDGET)


@pytest.fixture
def port(served: AppThread) -> int:
    return int(served.app.port("grpc"))


def until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes; a TimeoutError after WAIT seconds of silence."""
    sock.settimeout(WAIT)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def frames_of(data: bytes) -> list[Frame]:
    out: list[Frame] = []
    while len(data) >= h2.FRAME_HEADER_SIZE:
        head, flags, sid = h2.FRAME_HEADER.unpack_from(data)
        end = h2.FRAME_HEADER_SIZE + (head >> 8)
        out.append((head & 0xFF, flags, sid, data[h2.FRAME_HEADER_SIZE : end]))
        data = data[end:]
    return out


def ping_barrier(raw: RawClient) -> list[Frame]:
    """Send a PING and return the frames that came before its ACK: everything the server wrote
    for the frames sent before the PING (it handles frames in order)."""
    raw.send(h2.frame(h2.PING, 0, 0, b"barrier!"))
    before: list[Frame] = []
    while True:
        f = raw.frame(WAIT)
        assert f is not None, "the connection closed"
        if f[0] == h2.PING and f[1] & h2.ACK and f[3] == b"barrier!":
            return before
        before.append(f)


def grants(frames: list[Frame], sid: int | None = None) -> int:
    """The WINDOW_UPDATE increments among `frames` on streams (or on stream `sid`)."""
    return sum(
        struct.unpack(">I", p)[0]
        for k, _, s, p in frames
        if k == h2.WINDOW_UPDATE and s and (sid is None or s == sid)
    )


# ---------------------------------------------------------------------------- connections


@pytest.mark.parametrize(
    "sent", [b"", h2.PREFACE[:10], h2.PREFACE], ids=["nothing", "part", "no-settings"]
)
def test_a_connection_without_a_handshake_is_closed(timed: int, sent: bytes) -> None:
    """Like HTTP's header timeout: a connection that never sends the preface and its SETTINGS is
    closed after --grpc-handshake-timeout-secs, whatever the well-behaved client does."""

    def attack() -> bytes:
        with socket.create_connection(("127.0.0.1", timed), timeout=WAIT) as s:
            s.sendall(sent)
            return until_closed(s)

    frames = frames_of(under_attack(timed, attack))
    assert goaway_code(frames) == h2.PROTOCOL_ERROR
    debug = [p[8:] for k, _, _, p in frames if k == h2.GOAWAY][-1]
    assert b"--grpc-handshake-timeout-secs" in debug


def test_an_idle_connection_gets_goaway_but_not_one_with_a_call_open(timed: int) -> None:
    raw = RawClient(timed)
    try:
        raw.call(1, LIVE, b"")
        assert status(raw, 1) == ("0", "")
        frames = ended(raw)  # no call open for TIMEOUT_S: GOAWAY NO_ERROR, then closed
        assert goaway_code(frames) == h2.NO_ERROR
        assert [struct.unpack(">I", p[:4])[0] for k, _, _, p in frames if k == h2.GOAWAY] == [1]
    finally:
        raw.close()
    raw = RawClient(timed)
    try:
        open_stream(raw, 1)  # a call still arriving is not idleness, however long it takes
        time.sleep(3 * TIMEOUT_S)
        raw.send(h2.frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"")))
        assert status(raw, 1) == ("0", "")
        assert goaway_code(ended(raw)) == h2.NO_ERROR
    finally:
        raw.close()
    well_behaved(timed)


def test_connections_beyond_the_limit_get_goaway(capped: int) -> None:
    held: list[RawClient] = []
    try:
        for _ in range(CAPPED.max_connections):  # the limit: each is served, and stays open
            raw = RawClient(capped)
            held.append(raw)
            raw.call(1, LIVE, b"")
            assert status(raw, 1) == ("0", "")
        extra = RawClient(capped)  # one more
        try:
            frames = ended(extra)
        finally:
            extra.close()
        assert goaway_code(frames) == h2.ENHANCE_YOUR_CALM
        assert b"--grpc-max-connections" in [p for k, _, _, p in frames if k == h2.GOAWAY][-1]
        for raw in held:
            alive(raw)  # the others are untouched
        held.pop().close()
        deadline = time.monotonic() + WAIT  # the server sees the close a moment later
        while True:
            raw = RawClient(capped)
            try:
                raw.call(1, LIVE, b"")
                if raw.response(1)[0].get("grpc-status") == "0":
                    break
            except (AssertionError, ConnectionResetError):
                pass
            finally:
                raw.close()
            assert time.monotonic() < deadline, "a freed slot was not given to a new connection"
    finally:
        for raw in held:
            raw.close()
    held.clear()
    well_behaved(capped)


# ---------------------------------------------------------------------------- flow control


def test_data_beyond_the_stream_window_is_a_flow_control_error(port: int) -> None:
    """A stream may send STREAM_WINDOW bytes that nobody has consumed: exactly that is served,
    one byte more resets the stream (FLOW_CONTROL_ERROR), and the connection lives on."""
    raw = RawClient(port)
    try:
        exact = grpc_message(padded(STREAM_WINDOW - 5))
        assert len(exact) == STREAM_WINDOW
        open_stream(raw, 1)
        raw.send(h2.frame(h2.DATA, h2.END_STREAM, 1, exact))
        assert status(raw, 1) == ("0", "")
        open_stream(raw, 3)  # a message of 100 bytes, followed by more than the window
        raw.send(h2.frame(h2.DATA, 0, 3, grpc_message(padded(100)).ljust(STREAM_WINDOW, b"x")))
        raw.send(h2.frame(h2.DATA, 0, 3, b"x"))
        f = next_on(raw, 3, h2.RST_STREAM)
        assert struct.unpack(">I", f[3])[0] == h2.FLOW_CONTROL_ERROR
        raw.call(5, LIVE, b"")
        assert status(raw, 5) == ("0", "")
    finally:
        raw.close()


def test_a_grant_waits_for_the_connection_budget(budget: int) -> None:
    """Two 3 MiB messages on one connection whose budget holds one: the second is granted the
    rest of its window only when the first call ends; both are served."""
    raw = RawClient(budget)
    try:
        size = BUDGET.max_message_size
        message = grpc_message(padded(size))
        for sid in (1, 3):
            open_stream(raw, sid)
            raw.send(h2.frame(h2.DATA, 0, sid, message[:STREAM_WINDOW]))
        before = ping_barrier(raw)
        assert grants(before, 1) == len(message) - STREAM_WINDOW
        assert grants(before, 3) == 0  # one more than the budget: it waits
        rest = message[STREAM_WINDOW:]
        for i in range(0, len(rest), h2.OUR_MAX_FRAME):
            last = i + h2.OUR_MAX_FRAME >= len(rest)
            raw.send(h2.frame(h2.DATA, h2.END_STREAM if last else 0, 1, rest[i : i + MiB]))
        got = 0
        while got < len(rest):  # stream 1 is answered, and its grant goes to stream 3
            f = raw.frame(WAIT)
            assert f is not None
            if f[0] == h2.WINDOW_UPDATE and f[2] == 3:
                got += struct.unpack(">I", f[3])[0]
        assert got == len(rest)
        for i in range(0, len(rest), h2.OUR_MAX_FRAME):
            last = i + h2.OUR_MAX_FRAME >= len(rest)
            raw.send(h2.frame(h2.DATA, h2.END_STREAM if last else 0, 3, rest[i : i + MiB]))
        assert status(raw, 3) == ("0", "")
    finally:
        raw.close()
    well_behaved(budget)


def test_many_large_messages_are_granted_at_most_the_budget(port: int) -> None:
    """What a connection buffers is bounded: 64 streams each announce a 64 MiB message and send
    the first MiB; the grants beyond the streams' windows add up to at most the budget."""

    def attack() -> int:
        raw = RawClient(port)
        try:
            head = struct.pack(">BI", 0, DEFAULT.max_message_size) + b"x" * (STREAM_WINDOW - 5)
            for sid in range(1, 128, 2):
                open_stream(raw, sid, SERVICE + "ModelInfer")
                raw.send(h2.frame(h2.DATA, 0, sid, head))
            return grants(ping_barrier(raw))
        finally:
            raw.close()

    granted = under_attack(port, attack)
    assert 0 < granted <= DEFAULT.max_connection_buffer_size


# ---------------------------------------------------------------------------- zero progress


def test_empty_data_frames_count_as_control_frames(tight: int) -> None:
    raw = RawClient(tight)  # its SETTINGS is the first control frame
    try:
        open_stream(raw, 1)
        empties = TIGHT.max_control_frames - 2
        raw.send(h2.frame(h2.DATA, 0, 1) * empties)
        alive(raw)  # the PING is the limit's last
        raw.send(h2.frame(h2.DATA, 0, 1))  # one more
        assert goaway_code(ended(raw)) == h2.ENHANCE_YOUR_CALM
    finally:
        raw.close()
    well_behaved(tight)


def test_headers_without_end_stream_on_an_open_stream_reset_it(port: int) -> None:
    raw = RawClient(port)
    try:
        open_stream(raw, 1)
        raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, raw.encoder.encode([("x-a", "b")])))
        f = next_on(raw, 1, h2.RST_STREAM)
        assert struct.unpack(">I", f[3])[0] == h2.PROTOCOL_ERROR
        raw.call(3, LIVE, b"")
        assert status(raw, 3) == ("0", "")
    finally:
        raw.close()


def test_data_on_a_closed_stream_gets_one_reset(port: int) -> None:
    raw = RawClient(port)
    try:
        raw.call(1, LIVE, b"")
        assert status(raw, 1) == ("0", "")
        raw.send(h2.frame(h2.DATA, 0, 1, b"late") * 20)
        resets = [f for f in ping_barrier(raw) if f[0] == h2.RST_STREAM]
        assert [(f[2], struct.unpack(">I", f[3])[0]) for f in resets] == [(1, h2.STREAM_CLOSED)]
    finally:
        raw.close()


# ---------------------------------------------------------------------------- slow readers


def _identity_request(n: int) -> bytes:
    req = pb.ModelInferRequest(model_name="identity", id="s")
    req.inputs.add(name="IN_FP32", datatype="FP32", shape=[1, n])
    req.raw_input_contents.append(np.zeros(n, np.float32).tobytes())
    req.outputs.add(name="OUT_FP32")
    return bytes(req.SerializeToString())


def _connections(app: AppThread) -> list[GrpcConnection]:
    hub = app.app.frontends["grpc"]._hub  # type: ignore[attr-defined]
    return list(hub.connections)


def test_a_stream_client_that_never_reads_is_paused_not_buffered(
    port: int, served: AppThread
) -> None:
    """ModelStreamInfer requests of 64 KiB whose 64 KiB answers the client never reads (it
    grants no window for them) while it keeps sending as far as its own window allows: the
    server stops taking requests once SEND_QUEUE_BYTES of answers wait and STREAM_INFLIGHT more
    are in hand, so the client ends up blocked by flow control. Then it reads, and every answer
    comes, in full."""
    message = grpc_message(_identity_request(16384))
    offered = 40 * MiB
    raw = RawClient(port)  # its receive windows: 65,535, never raised while it does not read
    reader = _StreamReader(raw, 1)
    try:
        open_stream(raw, 1, SERVICE + "ModelStreamInfer")
        sent = 0
        while sent * len(message) < offered:
            try:
                while reader.window < len(message):
                    reader.next()
            except TimeoutError:
                break  # no window for WAIT seconds: blocked
            raw.send(h2.frame(h2.DATA, 0, 1, message))
            reader.window -= len(message)
            sent += 1
        accepted = sent * len(message)
        response = len(message)  # an answer is about as large as its request
        bound = (
            STREAM_WINDOW
            + RETURN_AT
            + (2 * STREAM_INFLIGHT + SEND_QUEUE_BYTES // response + 4) * len(message)
        )
        assert accepted <= bound < offered
        queued = max(c.queued for c in _connections(served))
        assert queued <= SEND_QUEUE_BYTES + response
        well_behaved(port)

        raw.send(h2.window_update(0, 1 << 30) + h2.window_update(1, 1 << 30))  # now it reads
        raw.send(h2.frame(h2.DATA, h2.END_STREAM, 1))
        while not reader.trailers:
            reader.next()
        assert reader.trailers.get("grpc-status") == "0" and reader.answers == sent
    finally:
        raw.close()


class _StreamReader:
    """One stream of a RawClient, frame by frame: the window the server gives it (by SETTINGS,
    then WINDOW_UPDATE; the connection's is large enough here), the answers
    (each a whole ModelStreamInferResponse without an error), the trailers."""

    def __init__(self, raw: RawClient, sid: int) -> None:
        self.raw, self.sid = raw, sid
        self.window = self.initial = h2.DEFAULT_WINDOW
        self.body = b""
        self.answers = 0
        self.trailers: dict[str, str] = {}

    def next(self) -> None:
        f = self.raw.frame(WAIT)
        assert f is not None, "the connection closed"
        kind, flags, sid, payload = f
        if kind == h2.SETTINGS and not flags & h2.ACK:  # the window it gives each stream
            for key, value in h2.settings(memoryview(payload)):
                if key == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                    self.window += value - self.initial
                    self.initial = value
        if sid != self.sid:
            return
        if kind == h2.WINDOW_UPDATE:
            self.window += struct.unpack(">I", payload)[0]
        elif kind == h2.HEADERS:
            headers = {str(k): str(v) for k, v in self.raw.decoder.decode(payload)}
            if flags & h2.END_STREAM:
                self.trailers = headers
        elif kind == h2.DATA:
            self.body += payload
            while len(self.body) >= 5 and len(self.body) >= 5 + (n := int.from_bytes(self.body[1:5])):
                answer = pb.ModelStreamInferResponse.FromString(self.body[5 : 5 + n])
                assert not answer.error_message, answer.error_message
                self.body = self.body[5 + n :]
                self.answers += 1
