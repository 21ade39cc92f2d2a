"""The gRPC transport: HTTP/2 frame parsing, HPACK decoding, the connection and stream state
machine, flow control, the 5-byte gRPC message framing and gzip/deflate messages.

The real connection object (`GrpcConnection`, an asyncio.Protocol) is driven without a socket:
a fake transport records what it writes, bytes go in through `data_received`, the handlers run
on a plain asyncio loop, then the connection is lost. Unary, server-streaming and bidi methods
are routed, with trivial handlers. A crash is: an exception out of `data_received` (protocol
and HPACK errors must become a GOAWAY), an exception the loop reports (a callback or task that
failed), an error logged by the transport, RPCs still running after the connection is gone, or
output that is not whole frames with header blocks a client can decode.

Input: `<mode><bytes>`. The low 7 bits of the mode byte give the size of the pieces the bytes
arrive in (0: all at once); with the high bit clear the client preface is prepended, with it set
the bytes must bring their own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fuzz._harness import instrumented, main

with instrumented():
    import grpc
    import hpack
    from tritonclient.grpc import service_pb2 as pb

    from torchtide.frontends.grpc import http2 as h2
    from torchtide.frontends.grpc.connection import (
        AbortError,
        GrpcConnection,
        Hub,
        Kind,
        Method,
    )

SERVICE = "/inference.GRPCInferenceService/"


async def _unary(request: Any, context: Any) -> Any:
    if request.id == "abort":
        raise AbortError(grpc.StatusCode.INVALID_ARGUMENT, "abort\n\u00e9")
    return pb.ModelInferResponse(id=request.id, model_name=request.model_name)


async def _server_stream(request: Any, context: Any) -> None:
    for _ in range(2):
        await context.write(pb.ModelInferResponse(id=request.id))


async def _bidi(requests: Any, context: Any) -> None:
    async for request in requests:
        await context.write(pb.ModelStreamInferResponse(error_message=request.id))


METHODS = {
    SERVICE + "ModelInfer": Method(Kind.UNARY, pb.ModelInferRequest, _unary),
    SERVICE + "ServerStream": Method(Kind.SERVER_STREAM, pb.ModelInferRequest, _server_stream),
    SERVICE + "ModelStreamInfer": Method(Kind.BIDI, pb.ModelInferRequest, _bidi),
}


class FakeTransport:
    """What the connection calls on its transport; writes are kept (and could be checked)."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Failures(logging.Handler):
    """Errors the transport logs and exceptions the loop reports: each one is a crash."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(self.format(record))

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.seen.append(f"{context.get('message')}: {exc!r}")


FAILURES = Failures()
_log = logging.getLogger("torchtide.grpc")
_log.addHandler(FAILURES)
_log.setLevel(logging.ERROR)
_log.propagate = False
LOOP = asyncio.new_event_loop()
LOOP.set_exception_handler(FAILURES.loop_exception)
HUB: Hub = LOOP.run_until_complete(asyncio.sleep(0, Hub(METHODS)))  # Hub wants a loop


def split(data: bytes) -> tuple[list[bytes], bool]:
    """The pieces to feed, and whether the bytes bring their own preface."""
    if not data:
        return [], False
    mode, rest = data[0], data[1:]
    size = mode & 0x7F or len(rest) or 1
    return [rest[i : i + size] for i in range(0, len(rest), size)], bool(mode & 0x80)


async def drive(pieces: list[bytes], own_preface: bool) -> bytes:
    conn = GrpcConnection(HUB)
    transport = FakeTransport()
    conn.connection_made(transport)
    if not own_preface:
        conn.data_received(h2.PREFACE)
    for piece in pieces:
        if transport.closed:
            break
        conn.data_received(piece)
        await asyncio.sleep(0)  # handlers run between pieces: later frames meet their output
    for _ in range(8):  # let the handlers run, deadlines of 1n expire, the writes flush
        await asyncio.sleep(0)
    conn.connection_lost(None)
    for _ in range(8):  # let the cancelled handlers end
        if HUB.idle.is_set():
            break
        await asyncio.sleep(0)
    return bytes(transport.written)


def check_output(written: bytes) -> None:
    """What the server wrote is whole HTTP/2 frames whose header blocks a client can decode,
    with DATA only on streams whose response headers came first."""
    client = hpack.Decoder()
    answered: set[int] = set()
    pos = 0
    while pos < len(written):
        assert len(written) - pos >= h2.FRAME_HEADER_SIZE, "a truncated frame header"
        head, flags, sid = h2.FRAME_HEADER.unpack_from(written, pos)
        length, kind = head >> 8, head & 0xFF
        pos += h2.FRAME_HEADER_SIZE
        assert len(written) - pos >= length, "a truncated frame"
        payload = written[pos : pos + length]
        pos += length
        if kind == h2.HEADERS:
            assert flags & h2.END_HEADERS, "a response header block in several frames"
            client.decode(payload)
            answered.add(sid)
        elif kind == h2.DATA:
            assert sid in answered, f"DATA before HEADERS on stream {sid}"


def test_one_input(data: bytes) -> None:
    pieces, own_preface = split(data)
    written = LOOP.run_until_complete(drive(pieces, own_preface))
    check_output(written)
    seen, FAILURES.seen = FAILURES.seen, []
    assert not seen, seen
    assert HUB.running == 0, f"{HUB.running} RPCs still running after the connection was lost"


if __name__ == "__main__":
    main(test_one_input)
