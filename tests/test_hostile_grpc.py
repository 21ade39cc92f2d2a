"""Hostile clients against the gRPC front-end's HTTP/2 transport (issue 14), on raw sockets.

Each attack must end refused or bounded: the offender gets an error or a closed connection within
a bounded time (socket timeouts of 10 s, never a speed assertion) while a well-behaved
tritonclient on another connection is served, during and after. Every limit is also shown at its
edge: what it allows passes, one more is refused (the `tight` server has small limits)."""

from __future__ import annotations

import gzip
import logging
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.conftest import start_app
from tests.test_grpc_transport import (
    SERVICE,
    Frame,
    RawClient,
    add_sub_request,
    assert_serving,
    goaway_code,
    grpc_message,
    open_call,
    padded,
)
from torchtide.app import AppThread
from torchtide.frontends.grpc import connection
from torchtide.frontends.grpc import http2 as h2
from torchtide.frontends.limits import GrpcLimits

MiB = 2**20
TIGHT = GrpcLimits(
    max_message_size=4096,
    max_header_list_size=4096,
    max_concurrent_streams=4,
    max_control_frames=50,
    max_resets=10,
)
DEFAULT = GrpcLimits()
LIVE = SERVICE + "ServerLive"
WAIT = 10.0  # how long an offender may take to be cut off (generous: a loaded 2-core machine)


@pytest.fixture(scope="module")
def tight(standard_repo: Path) -> Iterator[int]:
    app = start_app(standard_repo, http=False, grpc_limits=TIGHT)
    yield int(app.app.port("grpc"))
    app.stop()


@pytest.fixture
def port(served: AppThread) -> int:
    return int(served.app.port("grpc"))


@pytest.fixture
def grpc_log() -> Iterator[list[str]]:
    """The gRPC front-end's log lines (why a connection was closed), whatever the root logger."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("torchtide.grpc")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


# ---------------------------------------------------------------------------- helpers


def well_behaved(port: int) -> None:
    """What the issue's well-behaved client kept doing: health, then inference."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
    finally:
        client.close()
    assert_serving(port)


def under_attack(port: int, attack: Callable[[], Any]) -> Any:
    """Run `attack` in a thread while a well-behaved client is served; then serve it once more."""
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(attack)
        well_behaved(port)
        while not running.done():
            well_behaved(port)
        result = running.result(timeout=60)
    well_behaved(port)
    return result


def ended(raw: RawClient) -> list[Frame]:
    """The frames the server sent until it closed (or reset) the connection; a TimeoutError if it
    keeps the connection open for WAIT seconds of silence."""
    frames: list[Frame] = []
    try:
        while (f := raw.frame(WAIT)) is not None:
            frames.append(f)
    except ConnectionResetError:
        pass
    return frames


def send_all(raw: RawClient, data: bytes, chunk: int = 1 << 16) -> None:
    """Send until done or until the server cuts the connection (its right, mid-flood)."""
    try:
        for i in range(0, len(data), chunk):
            raw.send(data[i : i + chunk])
    except (BrokenPipeError, ConnectionResetError):
        pass


def next_on(raw: RawClient, sid: int, kind: int | None = None) -> Frame:
    """The next frame on stream `sid` (of `kind`, if given), skipping connection frames."""
    while True:
        f = raw.frame(WAIT)
        assert f is not None, "the connection closed"
        if f[2] == sid and (kind is None or f[0] == kind):
            return f


def alive(raw: RawClient) -> None:
    """The connection still answers: a PING comes back."""
    raw.send(h2.frame(h2.PING, 0, 0, b"stillhere"[:8]))
    while True:
        f = raw.frame(WAIT)
        assert f is not None, "the connection closed"
        if f[0] == h2.PING:
            assert f[1] & h2.ACK and f[3] == b"stillher"
            return


open_stream = open_call


def status(raw: RawClient, sid: int) -> tuple[str, str]:
    headers, _ = raw.response(sid)
    return headers["grpc-status"], headers.get("grpc-message", "")


# ---------------------------------------------------------------------------- header blocks


def test_continuation_flood_is_cut_at_the_header_limit(port: int, grpc_log: list[str]) -> None:
    """The issue's first finding: 256 MiB of header fragments were accepted. Now the block is
    bounded as it arrives: 1 MiB beyond the default limit is refused after the limit."""

    def attack() -> list[Frame]:
        raw = RawClient(port)
        try:
            fragment = b"\0" * (16 * 1024)
            flood = h2.frame(h2.HEADERS, 0, 1, raw.request_headers(LIVE))
            for _ in range((DEFAULT.max_header_list_size + MiB) // len(fragment)):
                flood += h2.frame(h2.CONTINUATION, 0, 1, fragment)
            send_all(raw, flood)
            return ended(raw)
        finally:
            raw.close()

    frames = under_attack(port, attack)
    if any(f[0] == h2.GOAWAY for f in frames):  # unless a reset overtook it
        assert goaway_code(frames) == h2.ENHANCE_YOUR_CALM
    assert any(f"a header block of more than {DEFAULT.max_header_list_size}" in m for m in grpc_log)


def _header_block_frames(total: int) -> bytes:
    """A valid request header block sent as HEADERS + empty CONTINUATIONs (the cheapest flood)
    whose bytes on the wire, frame headers included, are exactly `total`."""
    for pad in range(9):
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", LIVE),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-pad", "p" * (total % 9 + pad + 9)),
        ]
        block = hpack_plain(headers)
        rest = total - h2.FRAME_HEADER_SIZE - len(block)
        if rest % h2.FRAME_HEADER_SIZE == 0:
            frames = h2.frame(h2.HEADERS, 0, 1, block)
            empties = rest // h2.FRAME_HEADER_SIZE
            frames += h2.frame(h2.CONTINUATION, 0, 1) * (empties - 1)
            frames += h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1)
            assert len(frames) == total
            return frames
    raise AssertionError("no padding fits")


def hpack_plain(headers: list[tuple[str, str]]) -> bytes:
    """Literal fields without indexing or Huffman: sizes are exact and no table state is kept."""
    return b"".join(h2.literal(k.encode(), v.encode()) for k, v in headers)


def test_header_block_bytes_at_the_limit_pass_one_more_is_refused(tight: int) -> None:
    raw = RawClient(tight)
    try:
        raw.send(_header_block_frames(TIGHT.max_header_list_size))
        raw.send(h2.frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"")))
        assert status(raw, 1) == ("0", "")
    finally:
        raw.close()
    raw = RawClient(tight)
    try:
        raw.send(_header_block_frames(TIGHT.max_header_list_size + 1))
        assert goaway_code(ended(raw)) == h2.ENHANCE_YOUR_CALM
    finally:
        raw.close()
    well_behaved(tight)


def _decoded_size(headers: list[tuple[str, str]]) -> int:
    return sum(len(k) + len(v) + 32 for k, v in headers)  # RFC 9113 6.5.2


def test_decoded_header_list_at_the_limit_passes_one_more_is_refused(tight: int) -> None:
    base = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", LIVE),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    # Indexed fields decode to far more than they take on the wire: the decoded size counts.
    pad = TIGHT.max_header_list_size - _decoded_size([*base, ("x-pad", "")])
    for extra, ok in ((0, True), (1, False)):
        headers = [*base, ("x-pad", "p" * (pad + extra))]
        assert _decoded_size(headers) == TIGHT.max_header_list_size + extra
        raw = RawClient(tight)
        try:
            block = raw.encoder.encode(headers)  # Huffman: fewer bytes than the limit
            assert len(block) + h2.FRAME_HEADER_SIZE < TIGHT.max_header_list_size
            raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block))
            raw.send(h2.frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"")))
            if ok:
                assert status(raw, 1) == ("0", "")
            else:
                assert goaway_code(ended(raw)) == h2.ENHANCE_YOUR_CALM
        finally:
            raw.close()


def test_our_settings_advertise_the_limits(tight: int) -> None:
    raw = RawClient(tight)
    try:
        f = raw.frame(WAIT)
        assert f is not None and f[0] == h2.SETTINGS and not f[1] & h2.ACK
        values = dict(h2.settings(memoryview(f[3])))
        assert values[h2.SETTINGS_MAX_CONCURRENT_STREAMS] == TIGHT.max_concurrent_streams
        assert values[h2.SETTINGS_MAX_HEADER_LIST_SIZE] == TIGHT.max_header_list_size
    finally:
        raw.close()


# ---------------------------------------------------------------------------- control frames


def test_settings_flood_is_cut(port: int, grpc_log: list[str]) -> None:
    """The issue's second finding: a million SETTINGS frames stalled the loop ~1.6 s. Now the
    connection ends after the limit; 100k frames are sent."""

    def attack() -> list[Frame]:
        raw = RawClient(port)
        try:
            send_all(raw, h2.settings_frame({h2.SETTINGS_ENABLE_PUSH: 0}) * 100_000)
            return ended(raw)
        finally:
            raw.close()

    frames = under_attack(port, attack)
    if any(f[0] == h2.GOAWAY for f in frames):
        assert goaway_code(frames) == h2.ENHANCE_YOUR_CALM
    assert any("--grpc-max-control-frames" in m for m in grpc_log)


def test_control_frames_at_the_limit_pass_one_more_is_refused(tight: int) -> None:
    raw = RawClient(tight)  # its SETTINGS is the first control frame
    try:
        pings = TIGHT.max_control_frames - 1
        raw.send(h2.frame(h2.PING, 0, 0, b"12345678") * pings)
        acks = 0
        while acks < pings:
            f = raw.frame(WAIT)
            assert f is not None, "closed within the limit"
            acks += f[0] == h2.PING
        raw.send(h2.frame(h2.PING, 0, 0, b"12345678"))
        assert goaway_code(ended(raw)) == h2.ENHANCE_YOUR_CALM
    finally:
        raw.close()
    well_behaved(tight)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (h2.frame(h2.PING, 0, 0, b"1234567"), h2.FRAME_SIZE_ERROR),  # PING: 8 bytes
        (h2.frame(h2.PING, 0, 1, b"12345678"), h2.PROTOCOL_ERROR),  # PING: stream 0
        (h2.frame(h2.RST_STREAM, 0, 1, b"\0\0\0"), h2.FRAME_SIZE_ERROR),  # RST_STREAM: 4 bytes
        (h2.rst_stream(0, h2.CANCEL), h2.PROTOCOL_ERROR),  # RST_STREAM: not stream 0
        (h2.rst_stream(5, h2.CANCEL), h2.PROTOCOL_ERROR),  # RST_STREAM: not an idle stream
        (h2.frame(h2.SETTINGS, 0, 1, b""), h2.PROTOCOL_ERROR),  # SETTINGS: stream 0
        (h2.frame(h2.SETTINGS, h2.ACK, 0, b"\0" * 6), h2.FRAME_SIZE_ERROR),  # ACK: empty
        (h2.settings_frame({h2.SETTINGS_ENABLE_PUSH: 2}), h2.PROTOCOL_ERROR),
        (h2.frame(h2.WINDOW_UPDATE, 0, 0, b"\0\0\1"), h2.FRAME_SIZE_ERROR),  # 4 bytes
        (h2.window_update(0, 0), h2.PROTOCOL_ERROR),  # a zero increment
        (h2.window_update(7, 1), h2.PROTOCOL_ERROR),  # an idle stream
        (h2.window_update(0, h2.MAX_WINDOW), h2.FLOW_CONTROL_ERROR),  # overflow (65535 + ...)
        (h2.frame(h2.GOAWAY, 0, 0, b"\0" * 4), h2.FRAME_SIZE_ERROR),  # GOAWAY: 8 bytes or more
        (h2.frame(h2.PRIORITY, 0, 0, b"\0" * 5), h2.PROTOCOL_ERROR),  # PRIORITY: not stream 0
    ],
    ids=[
        "ping-length",
        "ping-stream",
        "rst-length",
        "rst-stream-0",
        "rst-idle",
        "settings-stream",
        "settings-ack-payload",
        "settings-push",
        "window-length",
        "window-zero",
        "window-idle",
        "window-overflow",
        "goaway-length",
        "priority-stream-0",
    ],
)
def test_frame_rules_are_connection_errors(port: int, bad: bytes, code: int) -> None:
    raw = RawClient(port)
    try:
        raw.send(bad)
        assert goaway_code(ended(raw)) == code
    finally:
        raw.close()
    assert_serving(port)


# ---------------------------------------------------------------------------- flow control


def test_stream_window_overflow_resets_only_that_stream(port: int) -> None:
    """The issue's fourth finding: a stream WINDOW_UPDATE past 2^31-1 was ignored."""
    raw = RawClient(port)  # its initial window: 65,535
    try:
        open_stream(raw, 1)
        raw.send(h2.window_update(1, h2.MAX_WINDOW - h2.DEFAULT_WINDOW))  # exactly the maximum
        raw.send(h2.frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"")))
        assert status(raw, 1) == ("0", "")
        open_stream(raw, 3)
        raw.send(h2.window_update(3, h2.MAX_WINDOW - h2.DEFAULT_WINDOW + 1))  # one more
        f = next_on(raw, 3, h2.RST_STREAM)
        assert struct.unpack(">I", f[3])[0] == h2.FLOW_CONTROL_ERROR
        open_stream(raw, 5)
        raw.send(h2.window_update(5, 0))
        f = next_on(raw, 5, h2.RST_STREAM)
        assert struct.unpack(">I", f[3])[0] == h2.PROTOCOL_ERROR
        raw.call(7, LIVE, b"")
        assert status(raw, 7) == ("0", "")
    finally:
        raw.close()


def test_connection_window_at_the_maximum_passes_one_more_is_refused(port: int) -> None:
    raw = RawClient(port)
    try:
        raw.send(h2.window_update(0, h2.MAX_WINDOW - h2.DEFAULT_WINDOW))
        alive(raw)
        raw.send(h2.window_update(0, 1))
        assert goaway_code(ended(raw)) == h2.FLOW_CONTROL_ERROR
    finally:
        raw.close()


# ---------------------------------------------------------------------------- message size


def test_a_huge_length_prefix_is_refused_before_buffering(port: int) -> None:
    """The issue's fifth finding: a prefix claiming 2^32-1 bytes made the server buffer 256 MiB.
    Now the answer comes from the prefix alone, before any of the message is sent."""
    raw = RawClient(port)
    try:
        open_stream(raw, 1, SERVICE + "ModelInfer")
        raw.send(h2.frame(h2.DATA, 0, 1, struct.pack(">BI", 0, 2**32 - 1)))
        code, message = status(raw, 1)
        assert code == "8"  # RESOURCE_EXHAUSTED
        assert f"larger than max ({2**32 - 1} vs. {DEFAULT.max_message_size})" in message
        assert "--grpc-max-message-size" in message
        f = next_on(raw, 1, h2.RST_STREAM)  # and stop sending it (gRPC's RST_STREAM NO_ERROR)
        assert struct.unpack(">I", f[3])[0] == h2.NO_ERROR
        raw.call(3, SERVICE + "ModelInfer", add_sub_request())  # the connection lives on
        assert status(raw, 3) == ("0", "")
    finally:
        raw.close()
    well_behaved(port)


def test_message_size_at_the_limit_passes_one_more_is_refused(tight: int) -> None:
    raw = RawClient(tight)
    try:
        raw.call(1, LIVE, padded(TIGHT.max_message_size))
        assert status(raw, 1) == ("0", "")
        raw.call(3, LIVE, padded(TIGHT.max_message_size + 1))
        code, message = status(raw, 3)
        assert code == "8" and f"({TIGHT.max_message_size + 1} vs. 4096)" in message
        # Data beyond one message is counted too, whatever the prefix said.
        open_stream(raw, 5)
        raw.send(h2.frame(h2.DATA, 0, 5, grpc_message(b"")))
        raw.send(h2.frame(h2.DATA, 0, 5, b"\0" * (TIGHT.max_message_size + 1)))
        assert status(raw, 5)[0] == "8"
    finally:
        raw.close()


def test_tritonclient_gets_resource_exhausted(tight: int) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{tight}")
    try:
        a = np.zeros((1, 16), np.int32)
        small = [
            grpcclient.InferInput(f"INPUT{i}", [1, 16], "INT32").set_data_from_numpy(a)
            for i in range(2)
        ]
        assert client.infer("add_sub", small).as_numpy("OUTPUT0") is not None
        big = np.zeros((1, 4096), np.int32)
        large = grpcclient.InferInput("INPUT0", [1, 4096], "INT32").set_data_from_numpy(big)
        with pytest.raises(InferenceServerException) as e:
            client.infer("add_sub", [large, small[1]])
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "--grpc-max-message-size" in str(e.value.message())
    finally:
        client.close()


def test_a_large_streamed_message_ends_the_stream(port: int) -> None:
    raw = RawClient(port)
    try:
        open_stream(raw, 1, SERVICE + "ModelStreamInfer")
        raw.send(h2.frame(h2.DATA, 0, 1, struct.pack(">BI", 0, 2**32 - 1) + b"x" * 100))
        assert status(raw, 1)[0] == "8"
        raw.call(3, LIVE, b"")
        assert status(raw, 3) == ("0", "")
    finally:
        raw.close()


# ---------------------------------------------------------------------------- compression


def _gzip_call(raw: RawClient, sid: int, path: str, compressed: bytes) -> None:
    open_stream(raw, sid, path, **{"grpc-encoding": "gzip"})
    prefix = struct.pack(">BI", 1, len(compressed))
    raw.send(h2.frame(h2.DATA, h2.END_STREAM, sid, prefix + compressed))


def test_gzip_bomb_is_bounded_and_inflated_off_the_loop(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's sixth finding: a gzip message inflating to 10 GiB was decompressed on the event
    loop until memory ran out. Here ~100 KB inflating to 100 MiB: stopped at the limit, in a
    worker thread, while another client is served."""
    threads: list[str] = []
    real = connection.inflate

    def spy(data: Any, wbits: int, limit: int) -> bytes:
        threads.append(threading.current_thread().name)
        return real(data, wbits, limit)

    monkeypatch.setattr(connection, "inflate", spy)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    bomb = b"".join(c.compress(zeros) for _ in range(100)) + c.flush()
    assert len(bomb) < MiB

    def attack() -> tuple[str, str]:
        raw = RawClient(port)
        try:
            _gzip_call(raw, 1, SERVICE + "ModelInfer", bomb)
            return status(raw, 1)
        finally:
            raw.close()

    code, message = under_attack(port, attack)
    assert code == "8" and "--grpc-max-message-size" in message
    assert threads and "torchtide-app" not in threads  # the event loop's thread never inflates


def test_decompressed_size_at_the_limit_passes_one_more_is_refused(tight: int) -> None:
    raw = RawClient(tight)
    try:
        _gzip_call(raw, 1, LIVE, gzip.compress(padded(TIGHT.max_message_size)))
        assert status(raw, 1) == ("0", "")
        _gzip_call(raw, 3, LIVE, gzip.compress(padded(TIGHT.max_message_size + 1)))
        assert status(raw, 3)[0] == "8"
        _gzip_call(raw, 5, SERVICE + "ModelStreamInfer", gzip.compress(b"\0" * 5000))
        assert status(raw, 5)[0] == "8"
        _gzip_call(raw, 7, LIVE, gzip.compress(padded(100))[:-8])  # truncated: INTERNAL
        code, message = status(raw, 7)
        assert code == "13" and "could not decompress" in message
    finally:
        raw.close()


def test_a_large_message_is_parsed_off_the_loop(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    names: list[str] = []
    real = asyncio.to_thread

    async def spy(fn: Any, *args: Any) -> Any:
        names.append(getattr(fn, "__name__", ""))
        return await real(fn, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    raw = RawClient(port)
    try:
        message = grpc_message(add_sub_request() + padded(5 * MiB))  # + an unknown field
        open_stream(raw, 1, SERVICE + "ModelInfer")
        for i in range(0, len(message), h2.OUR_MAX_FRAME):
            last = i + h2.OUR_MAX_FRAME >= len(message)
            raw.send(h2.frame(h2.DATA, h2.END_STREAM if last else 0, 1, message[i : i + MiB]))
        headers, body = raw.response(1)
        assert headers["grpc-status"] == "0"
        out = pb.ModelInferResponse.FromString(body[5:]).raw_output_contents[0]
        np.testing.assert_array_equal(np.frombuffer(out, np.int32), np.arange(16) * 2)
    finally:
        raw.close()
    assert "FromString" in names


# ---------------------------------------------------------------------------- streams and resets


def test_streams_beyond_the_limit_are_refused(tight: int) -> None:
    raw = RawClient(tight)
    try:
        sids = [1, 3, 5, 7]
        for sid in sids:
            open_stream(raw, sid)
        open_stream(raw, 9)  # one more than the limit
        f = next_on(raw, 9, h2.RST_STREAM)
        assert struct.unpack(">I", f[3])[0] == h2.REFUSED_STREAM
        raw.send(h2.frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"")))
        assert status(raw, 1) == ("0", "")
        raw.call(11, LIVE, b"")  # a slot is free again
        assert status(raw, 11) == ("0", "")
    finally:
        raw.close()


def _open_and_reset(raw: RawClient, sids: range) -> None:
    for sid in sids:
        open_stream(raw, sid, SERVICE + "ModelInfer")
        raw.send(h2.frame(h2.DATA, 0, sid, grpc_message(b"")[:3]))
        raw.send(h2.rst_stream(sid, h2.CANCEL))


def test_rapid_reset_at_the_limit_passes_one_more_is_refused(tight: int) -> None:
    raw = RawClient(tight)
    try:
        _open_and_reset(raw, range(1, 2 * TIGHT.max_resets, 2))
        alive(raw)
        raw.call(21, LIVE, b"")  # an answered call pays for one reset
        assert status(raw, 21) == ("0", "")
        _open_and_reset(raw, range(23, 25, 2))
        alive(raw)
        _open_and_reset(raw, range(25, 27, 2))  # one more than the limit
        assert goaway_code(ended(raw)) == h2.ENHANCE_YOUR_CALM
    finally:
        raw.close()


def test_rapid_reset_flood_is_cut(port: int, grpc_log: list[str]) -> None:
    """CVE-2023-44487: streams opened and reset at once, as fast as the client can."""

    def attack() -> list[Frame]:
        raw = RawClient(port)
        try:
            block = raw.request_headers(SERVICE + "ModelInfer")  # indexed after the first
            flood = b""
            for sid in range(1, 4 * DEFAULT.max_resets, 2):
                flood += h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block)
                flood += h2.frame(h2.DATA, h2.END_STREAM, sid, grpc_message(add_sub_request()))
                flood += h2.rst_stream(sid, h2.CANCEL)
                block = raw.request_headers(SERVICE + "ModelInfer")
            send_all(raw, flood)
            return ended(raw)
        finally:
            raw.close()

    frames = under_attack(port, attack)
    if any(f[0] == h2.GOAWAY for f in frames):
        assert goaway_code(frames) == h2.ENHANCE_YOUR_CALM
    assert any("--grpc-max-resets" in m for m in grpc_log)


def test_many_typed_elements_are_converted_off_the_loop(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Typed `contents` become numpy arrays element by element (about a microsecond each): a
    request with many is converted in a worker thread; a small one, on the loop."""
    from torchtide.frontends.grpc import service

    threads: list[str] = []
    real = service.decode_request

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(service, "decode_request", spy)
    raw = RawClient(port, {h2.SETTINGS_INITIAL_WINDOW_SIZE: MiB})  # room for the 80 KB answer
    try:
        raw.send(h2.window_update(0, MiB))
        for sid, n in ((1, 16), (3, 20_000)):
            req = pb.ModelInferRequest(model_name="identity")
            t = req.inputs.add(name="IN_FP32", datatype="FP32", shape=[1, n])
            t.contents.fp32_contents.extend(np.arange(n, dtype=np.float32).tolist())
            req.outputs.add(name="OUT_FP32")
            raw.call(sid, SERVICE + "ModelInfer", req.SerializeToString())
            headers, body = raw.response(sid)
            assert headers["grpc-status"] == "0", headers.get("grpc-message")
            out = pb.ModelInferResponse.FromString(body[5:]).raw_output_contents[0]
            np.testing.assert_array_equal(np.frombuffer(out, np.float32), np.arange(n))
    finally:
        raw.close()
    assert threads[0] == "torchtide-app" and threads[1] != "torchtide-app"
