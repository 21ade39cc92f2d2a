"""gRPC over HTTP/2 on one asyncio connection: our own transport instead of grpcio's server.

grpc.aio's server tops out near 6,000 unary calls/s on these cores before any work is done
(benchmarks/grpc_machinery.py); this protocol does only what a gRPC server needs — frames,
HPACK, flow control, the 5-byte message prefix, status trailers — on the same uvloop as the
HTTP front-end. Handlers keep grpc.aio's shape (`request, context` → response; `context.write`
for streams; `context.abort`), so the servicers are plain classes over the core.

Each RPC is one task: a client's RST_STREAM or an expired `grpc-timeout` cancels it.
Request messages may be gzip/deflate compressed (`grpc-encoding`); responses go uncompressed.

What a client may make a connection hold or do is bounded (frontends/limits.py, GrpcLimits): a
message's size is checked on its 5-byte prefix before it is buffered, and again after
decompression, which runs off the event loop as does the parsing of large messages; header blocks
are bounded as they arrive (HEADERS + CONTINUATION) and when decoded; open streams, control frames
(per FLOOD_WINDOW_S) and streams the client resets while we work on them are counted. Beyond a
stream's limit the stream ends (RESOURCE_EXHAUSTED, REFUSED_STREAM); beyond a connection's, the
connection (GOAWAY ENHANCE_YOUR_CALM). The DATA path pays one compare per frame for this.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn, Protocol

import grpc
import hpack
from google.protobuf.message import DecodeError

from torchtide.frontends.grpc import http2 as h2
from torchtide.frontends.grpc.flow import RETURN_AT, Budget, Inflow
from torchtide.frontends.limits import (
    CONNECTION_WINDOW,
    FLOOD_WINDOW_S,
    OFFLOAD_PROTOBUF_BYTES,
    SEND_QUEUE_BYTES,
    STREAM_WINDOW,
    GrpcLimits,
    TimeoutSweeper,
    TooLarge,
    inflate,
)

log = logging.getLogger("torchtide.grpc")

MESSAGE_PREFIX = struct.Struct(">BI")  # compressed flag, length
PREFIX_SIZE = 5
_END = object()  # ends a request stream's inbox
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class Kind(Enum):
    UNARY = "unary"  # one request, one response
    SERVER_STREAM = "server_stream"  # one request, responses written through the context
    BIDI = "bidi"  # requests as an async iterator, responses written through the context


@dataclass(slots=True, frozen=True)
class Method:
    kind: Kind
    request_type: Any  # a protobuf message class
    handler: Callable[..., Awaitable[Any]]


class AbortError(Exception):
    """Raised by `Context.abort`: ends the RPC with this status and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Context:
    """What a handler may ask of its RPC (the subset of grpc.aio's ServicerContext we use)."""

    __slots__ = ("_conn", "_stream", "sent")

    def __init__(self, conn: GrpcConnection, stream: Stream) -> None:
        self._conn = conn
        self._stream = stream
        # A unary handler may set it: told when its response (or error status) was handed to
        # the transport (monotonic ns start, end).
        self.sent: Callable[[int, int], None] | None = None

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self._stream.headers if not k.startswith(":")]

    def received(self) -> tuple[int, int]:
        """When the call opened and when its request was whole (monotonic ns), recorded only
        while tracing is on; (0, 0) otherwise."""
        return self._stream.opened_ns, self._stream.read_ns

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise AbortError(code, details)

    async def write(self, message: Any) -> None:
        """Send a response message (or its bytes, serialized already); waits while the client
        is not reading what was sent (SEND_QUEUE_BYTES queued on its connection), so a slow
        reader stops the handler."""
        conn = self._conn
        data = message if type(message) is bytes else message.SerializeToString()
        conn.send_message(self._stream, data)
        if not conn.can_send.is_set():
            await conn.can_send.wait()


@dataclass(slots=True, frozen=True)
class Compressed:
    """A streamed request message still compressed: inflated off the loop when it is read."""

    data: bytes


@dataclass(slots=True, eq=False)
class Stream(Inflow):  # the receive side: its window, its grants from the connection's budget
    headers: h2.Headers
    method: Method | None
    send_window: int
    encoding: str = "identity"
    chunks: list[bytes | memoryview] = field(default_factory=list)  # a unary request's body
    size: int = 0  # bytes in chunks
    check_at: int = PREFIX_SIZE  # size at which to check it: the prefix, then past the limit
    inbox: asyncio.Queue[Any] | None = None  # a streaming request's messages
    partial: bytearray = field(default_factory=bytearray)  # a streamed message not yet whole
    upload_stopped: bool = False  # we answered before the request ended, and sent RST_STREAM
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    pending: deque[tuple[bool, bytes | memoryview]] = field(default_factory=deque)
    queued: int = 0  # bytes in pending
    headers_sent: bool = False
    remote_closed: bool = False
    local_closed: bool = False
    opened_ns: int = 0  # monotonic ns, while tracing is on
    read_ns: int = 0


class Switch(Protocol):
    active: bool


class _Off:
    active = False


# Access control: (path, request headers) → a refusal's status and message, or None.
Admit = Callable[[str, h2.Headers], "tuple[grpc.StatusCode, str] | None"]


class Hub:
    """What a listener's connections share: the method table, limits, access control, and the
    live connections."""

    def __init__(
        self,
        methods: dict[str, Method],
        limits: GrpcLimits | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.methods = methods
        self.limits = limits or GrpcLimits()
        self.admit = admit  # asked when a stream opens, before any of its body is buffered
        self.timestamps: Switch = _Off()  # while active, calls record when they arrived
        self.connections: set[GrpcConnection] = set()
        self.idle = asyncio.Event()  # no RPC running on any connection
        self.idle.set()
        self.running = 0
        self._sweeper = TimeoutSweeper()

    def start(self) -> None:
        """Start enforcing the handshake and idle timeouts (those that are not 0): one task
        checks every connection now and then, so frames pay nothing for them."""
        lim = self.limits
        self._sweeper.start((lim.handshake_timeout_s, lim.idle_timeout_s), lambda: self.connections)

    def close(self) -> None:
        self._sweeper.stop()

    def rpc_started(self) -> None:
        self.running += 1
        self.idle.clear()

    def rpc_ended(self) -> None:
        self.running -= 1
        if self.running == 0:
            self.idle.set()


class GrpcConnection(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface = False
        self.limits = limits = hub.limits
        self.max_message = limits.max_message_size
        self.max_streams = limits.max_concurrent_streams
        self.decoder = h2.HeaderDecoder(limits.max_header_list_size)
        self.header_bytes = 0  # of the header block being received, frame headers included
        self.max_header_payload = limits.max_header_list_size - h2.FRAME_HEADER_SIZE + 1
        self.control = 0  # control frames counted in the window that began at control_since
        self.control_since = float("-inf")
        self.reset_debt = 0  # streams the client reset while we worked, less those answered since
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.continuing: tuple[int, int, list[bytes]] | None = None  # stream, flags, fragments
        self.peer_initial_window = h2.DEFAULT_WINDOW
        self.peer_max_frame = h2.DEFAULT_MAX_FRAME
        self.send_window = h2.DEFAULT_WINDOW  # the connection's, towards the peer
        self.recv_window = CONNECTION_WINDOW  # the connection's, from the peer
        self.budget = Budget(max(limits.max_connection_buffer_size, self.max_message + PREFIX_SIZE))
        self.blocked: dict[int, Stream] = {}  # streams waiting for send window
        self.queued = 0  # bytes of the blocked streams' pending data
        self.can_send = asyncio.Event()  # not too much queued for the client: handlers may write
        self.can_send.set()
        self.out: list[bytes | memoryview] = []
        self.flush_scheduled = False
        self.refusing = False  # GOAWAY sent or received: no new streams
        self.dead = False  # connection lost or failed: nothing more is read or sent
        self.writing_paused = False  # the transport's buffer is full
        # For the timeouts (checked by the hub's sweeper, not by timers):
        self.since = self.loop.time()  # connected; then the last time a stream was seen open
        self.handshaken = False  # the client's preface and first SETTINGS have arrived
        self.seen_stream_id = 0  # last_stream_id when the sweeper last looked
        self.closed_reset = 0  # the closed stream last answered RST_STREAM for its DATA

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.hub.connections.add(self)
        self._write(
            h2.settings_frame(
                {
                    h2.SETTINGS_ENABLE_PUSH: 0,
                    h2.SETTINGS_MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
                    h2.SETTINGS_MAX_HEADER_LIST_SIZE: self.limits.max_header_list_size,
                    h2.SETTINGS_INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                    h2.SETTINGS_MAX_FRAME_SIZE: h2.OUR_MAX_FRAME,
                }
            )
            + h2.window_update(0, CONNECTION_WINDOW - h2.DEFAULT_WINDOW)
        )
        n = self.limits.max_connections
        if len(self.hub.connections) > n:
            # Said in the GOAWAY, not logged: a flood of connections must not flood the log.
            msg = f"the server is at its limit of {n} connections (--grpc-max-connections)"
            self.close(h2.ENHANCE_YOUR_CALM, msg, quiet=True)

    def check_timeouts(self, now: float) -> None:
        """Called by the hub's sweeper: close a connection that has not finished its handshake
        in time, or has had no stream open for the idle timeout (GOAWAY NO_ERROR: clients
        reconnect when they next call)."""
        if self.dead or self.refusing:
            return
        lim = self.limits
        if not self.handshaken:
            if lim.handshake_timeout_s and now - self.since >= lim.handshake_timeout_s:
                s = lim.handshake_timeout_s
                msg = f"no preface and SETTINGS within {s:g} s (--grpc-handshake-timeout-secs)"
                self.close(h2.PROTOCOL_ERROR, msg, quiet=True)
        elif self.streams or self.last_stream_id != self.seen_stream_id:
            self.seen_stream_id = self.last_stream_id
            self.since = now
        elif lim.idle_timeout_s and now - self.since >= lim.idle_timeout_s:
            self.closing_when_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.connections.discard(self)
        self.dead = True
        self.can_send.set()  # writers wake, see the connection gone, and end
        for stream in list(self.streams.values()):
            self._drop(stream)
        self.streams.clear()
        self.transport = None

    def pause_writing(self) -> None:
        """The client is not reading its responses: stop reading its requests, and streaming
        handlers' writes, until it does."""
        self.writing_paused = True
        self.can_send.clear()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.queued <= SEND_QUEUE_BYTES:
            self.can_send.set()
        if self.transport is not None and not self.dead:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        if self.buf:
            self.buf += data
            if len(self.buf) < self._needed():
                return  # a large frame still arriving: no copy until it is whole
            data = bytes(self.buf)
            self.buf.clear()
        try:
            used = self._frames(data)
        except h2.ProtocolError as e:
            self.close(e.code, str(e))
            return
        except hpack.OversizedHeaderListError:
            n = self.limits.max_header_list_size
            self.close(h2.ENHANCE_YOUR_CALM, f"header list larger than {n} bytes{_HEADER_FLAG}")
            return
        except hpack.HPACKError as e:
            self.close(h2.COMPRESSION_ERROR, f"bad header block: {e}")
            return
        if used < len(data):
            self.buf += memoryview(data)[used:]

    def _needed(self) -> int:
        if not self.preface:
            return len(h2.PREFACE)
        if len(self.buf) < h2.FRAME_HEADER_SIZE:
            return h2.FRAME_HEADER_SIZE
        return h2.FRAME_HEADER_SIZE + int.from_bytes(self.buf[:3])

    # ------------------------------------------------------------------ reading frames

    def _frames(self, data: bytes) -> int:
        pos = 0
        if not self.preface:
            if len(data) < len(h2.PREFACE):
                if not h2.PREFACE.startswith(data):
                    raise h2.ProtocolError(h2.PROTOCOL_ERROR, "not an HTTP/2 client preface")
                return 0
            if not data.startswith(h2.PREFACE):
                raise h2.ProtocolError(h2.PROTOCOL_ERROR, "not an HTTP/2 client preface")
            self.preface = True
            pos = len(h2.PREFACE)
        view = memoryview(data)
        end = len(data)
        unpack = h2.FRAME_HEADER.unpack_from
        while end - pos >= h2.FRAME_HEADER_SIZE:
            head, flags, sid = unpack(data, pos)
            length = head >> 8
            if length > h2.OUR_MAX_FRAME:
                raise h2.ProtocolError(h2.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - pos - h2.FRAME_HEADER_SIZE < length:
                break
            start = pos + h2.FRAME_HEADER_SIZE
            pos = start + length
            self._frame(head & 0xFF, flags, sid & 0x7FFFFFFF, view[start:pos])
            if self.dead:
                return end
        return pos

    def _frame(self, kind: int, flags: int, sid: int, payload: memoryview) -> None:
        if self.continuing is not None and kind != h2.CONTINUATION:
            raise h2.ProtocolError(h2.PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == h2.DATA:
            self._data(flags, sid, payload)
        elif kind == h2.HEADERS:
            self._headers(flags, sid, payload)
        elif kind == h2.CONTINUATION:
            self._continuation(flags, sid, payload)
        elif kind == h2.WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == h2.RST_STREAM:
            self._rst_stream(sid, payload)
        else:
            self._control(kind, flags, sid, payload)

    def _control(self, kind: int, flags: int, sid: int, payload: memoryview) -> None:
        """SETTINGS, PING, GOAWAY, PRIORITY and unknown types: cheap to send, so counted."""
        self._count_control()
        if kind == h2.SETTINGS:
            if sid:
                raise h2.ProtocolError(h2.PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & h2.ACK:
                self._settings(payload)
            elif payload:
                raise h2.ProtocolError(h2.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
        elif kind == h2.PING:
            if sid:
                raise h2.ProtocolError(h2.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise h2.ProtocolError(h2.FRAME_SIZE_ERROR, "PING length not 8")
            if not flags & h2.ACK:
                self._write(h2.frame(h2.PING, h2.ACK, 0, bytes(payload)))
        elif kind == h2.GOAWAY:
            if sid:
                raise h2.ProtocolError(h2.PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise h2.ProtocolError(h2.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self.closing_when_idle()
        elif kind == h2.PUSH_PROMISE:
            raise h2.ProtocolError(h2.PROTOCOL_ERROR, "a client may not push")
        elif kind == h2.PRIORITY:  # else ignored, as unknown frame types are (RFC 9113 5.5)
            if not sid:
                raise h2.ProtocolError(h2.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                stream = self.streams.get(sid)
                if stream is not None:
                    self._reset(stream, h2.FRAME_SIZE_ERROR)
                else:
                    self._write(h2.rst_stream(sid, h2.FRAME_SIZE_ERROR))

    def _count_control(self) -> None:
        now = self.loop.time()
        if now - self.control_since >= FLOOD_WINDOW_S:
            self.control_since = now
            self.control = 0
        self.control += 1
        if self.control > self.limits.max_control_frames:
            raise h2.ProtocolError(
                h2.ENHANCE_YOUR_CALM,
                f"more than {self.limits.max_control_frames} control frames within "
                f"{FLOOD_WINDOW_S:g} s (--grpc-max-control-frames)",
            )

    def _rst_stream(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise h2.ProtocolError(h2.FRAME_SIZE_ERROR, "RST_STREAM length not 4")
        if not sid or sid > self.last_stream_id:
            raise h2.ProtocolError(h2.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        stream = self.streams.pop(sid, None)
        if stream is None:
            self._count_control()  # already closed: nothing to do, but not free to flood
            return
        working = not stream.local_closed
        self._drop(stream)
        if working:  # reset before its answer (CVE-2023-44487 when rapid)
            self.reset_debt += 1
            if self.reset_debt > self.limits.max_resets:
                raise h2.ProtocolError(
                    h2.ENHANCE_YOUR_CALM,
                    f"more than {self.limits.max_resets} streams reset before their answer, "
                    "beyond those answered (--grpc-max-resets)",
                )

    def _count_header_bytes(self, n: int) -> None:
        self.header_bytes += h2.FRAME_HEADER_SIZE + n
        if self.header_bytes > self.limits.max_header_list_size:
            raise h2.ProtocolError(
                h2.ENHANCE_YOUR_CALM,
                f"a header block of more than {self.limits.max_header_list_size} bytes"
                + _HEADER_FLAG,
            )

    def _continuation(self, flags: int, sid: int, payload: memoryview) -> None:
        continuing = self.continuing
        if continuing is None or continuing[0] != sid:
            raise h2.ProtocolError(h2.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._count_header_bytes(len(payload))
        continuing[2].append(bytes(payload))
        if flags & h2.END_HEADERS:
            sid, first_flags, fragments = continuing
            self.continuing = None
            self._header_block(first_flags, sid, b"".join(fragments))

    def _data(self, flags: int, sid: int, payload: memoryview) -> None:
        n = len(payload)
        self.recv_window -= n
        if self.recv_window <= CONNECTION_WINDOW // 2:
            self._refill(n)
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid == 0 or sid > self.last_stream_id:
                raise h2.ProtocolError(h2.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            if not n:
                self._count_control()  # an empty frame moves nothing forward
            # Data sent before our RST_STREAM reached the client is dropped; otherwise the
            # stream is closed: one RST_STREAM, not one per frame.
            if sid != self.closed_reset and (stream is None or not stream.upload_stopped):
                self.closed_reset = sid
                self._write(h2.rst_stream(sid, h2.STREAM_CLOSED))
            return
        stream.window -= n
        if stream.window < 0:  # RFC 9113 6.9.1
            self._reset(stream, h2.FLOW_CONTROL_ERROR)
            return
        body = h2.unpad(flags, payload) if flags & h2.PADDED else payload
        ended = bool(flags & h2.END_STREAM)
        if not body:
            if not ended:
                self._count_control()  # an empty DATA frame moves nothing forward
            if n:  # padding only: consumed at once
                self._give_window(stream, n)
        elif len(body) != n:
            self._give_window(stream, n - len(body))
        if stream.inbox is not None:
            if body:
                self._feed(stream, body)
        elif body:
            stream.chunks.append(body)
            stream.size += len(body)
            if stream.size >= stream.check_at:
                self._check_size(stream)
        if ended:
            self._remote_end(stream)

    def _refill(self, n: int) -> None:
        """Return the connection window as data arrives (the streams' windows bound what is
        held); a client that sent more than it was given broke flow control."""
        if self.recv_window < 0:
            raise h2.ProtocolError(
                h2.FLOW_CONTROL_ERROR, f"DATA of {n} bytes overran the connection window"
            )
        self._write(h2.window_update(0, CONNECTION_WINDOW - self.recv_window))
        self.recv_window = CONNECTION_WINDOW

    def _give_window(self, stream: Stream, n: int) -> None:
        """Return `n` bytes of a stream's window at once (padding: consumed as it arrives)."""
        stream.window += n
        self._write(h2.window_update(stream.id, n))

    def _grant(self, stream: Stream, message_end: int, received: int) -> None:
        """A message ends `message_end` bytes into the stream's data, of which `received` are
        in: if the stream's window does not reach that far, ask the connection's budget for the
        rest (sent now, or when another call gives some back)."""
        need = message_end - received - stream.window
        if need > 0:
            granted = self.budget.ask(stream, need)
            if granted:
                self._write(h2.window_update(stream.id, granted))

    def _window_updates(self, updates: list[tuple[int, int]]) -> None:
        for sid, increment in updates:
            self._write(h2.window_update(sid, increment))

    def _check_size(self, stream: Stream) -> None:
        """A unary request's prefix has arrived, or more bytes than the largest message allowed:
        refuse it before buffering what the prefix announces."""
        limit = self.max_message
        if stream.check_at == PREFIX_SIZE:
            first = stream.chunks[0]
            head = first if len(first) >= PREFIX_SIZE else b"".join(stream.chunks)
            length = MESSAGE_PREFIX.unpack_from(head)[1]
            if length <= limit:
                stream.check_at = PREFIX_SIZE + limit + 1
                self._grant(stream, PREFIX_SIZE + length, stream.size)
                return
        else:
            length = stream.size - PREFIX_SIZE
        self._too_large(stream, length)

    def _too_large(self, stream: Stream, length: int) -> None:
        if stream.task is not None:  # a bidi handler: it ends here, with this status, and
            stream.task.cancel()  # the stream as a unary one would (trailers, RST_STREAM)
            stream.inbox = None
        self.finish(
            stream, grpc.StatusCode.RESOURCE_EXHAUSTED, _too_large_message(length, self.max_message)
        )
        self._stop_upload(stream)
        stream.partial = bytearray()

    def _headers(self, flags: int, sid: int, payload: memoryview) -> None:
        self.header_bytes = 0
        if len(payload) >= self.max_header_payload:
            self._count_header_bytes(len(payload))  # raises
        self.header_bytes = h2.FRAME_HEADER_SIZE + len(payload)
        body = h2.unpad(flags, payload)
        if flags & h2.PRIORITY_FLAG:
            body = body[5:]
        if flags & h2.END_HEADERS:
            self._header_block(flags, sid, bytes(body))
        else:
            self.continuing = (sid, flags, [bytes(body)])

    def _header_block(self, flags: int, sid: int, block: bytes) -> None:
        headers = self.decoder.decode(block)  # always, so the HPACK table stays in step
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: only END_STREAM matters
            if flags & h2.END_STREAM and not stream.remote_closed:
                self._remote_end(stream)
                return
            self._count_control()  # moves nothing forward
            if not stream.remote_closed:  # trailers must end the stream (RFC 9113 8.1)
                self._reset(stream, h2.PROTOCOL_ERROR)
            return
        if sid % 2 == 0 or sid <= self.last_stream_id:
            raise h2.ProtocolError(h2.PROTOCOL_ERROR, f"bad stream id {sid}")
        self.last_stream_id = sid
        if self.refusing:
            self._write(h2.rst_stream(sid, h2.REFUSED_STREAM))
            return
        if len(self.streams) >= self.max_streams:
            self._count_control()  # refused at once: as cheap to send as a control frame
            self._write(h2.rst_stream(sid, h2.REFUSED_STREAM))
            return
        self._open(sid, headers, bool(flags & h2.END_STREAM))

    def _open(self, sid: int, headers: h2.Headers, ended: bool) -> None:
        path = ""
        content_type = ""
        timeout = ""
        encoding = "identity"
        for k, v in headers:
            if k == ":path":
                path = v
            elif k == "content-type":
                content_type = v
            elif k == "grpc-timeout":
                timeout = v
            elif k == "grpc-encoding":
                encoding = v
        method = self.hub.methods.get(path)
        stream = Stream(sid, headers, method, self.peer_initial_window, encoding)
        if self.hub.timestamps.active:
            stream.opened_ns = time.monotonic_ns()
        self.streams[sid] = stream
        if not content_type.startswith("application/grpc"):
            stream.headers_sent = True  # not gRPC at all: HTTP 415, as the gRPC spec says
            self._write(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, sid, b"\x08\x03415"))
            self._stop_upload(stream)
            self._local_end(stream)
        elif method is None:
            self.finish(stream, grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path}")
        elif self.hub.admit is not None and (refusal := self.hub.admit(path, headers)):
            self.finish(stream, *refusal)
        elif encoding not in ("identity", "gzip", "deflate"):
            self.finish(
                stream, grpc.StatusCode.UNIMPLEMENTED, f"unsupported grpc-encoding '{encoding}'"
            )
        else:
            if timeout:
                self._deadline(stream, timeout)
            if method.kind is Kind.BIDI:
                stream.inbox = asyncio.Queue()
                self._start(stream, self._run_bidi(stream, method))
        if ended:
            self._remote_end(stream)

    def _deadline(self, stream: Stream, value: str) -> None:
        try:
            seconds = int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
        except (ValueError, KeyError):
            return  # malformed: no deadline rather than a failed call
        stream.timer = self.loop.call_later(seconds, self._expire, stream)

    def _expire(self, stream: Stream) -> None:
        stream.timer = None
        stream.timed_out = True
        if stream.task is not None:
            stream.task.cancel()
        else:
            self.finish(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _remote_end(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            if not stream.pending:  # else it stays until its last bytes are sent
                self.streams.pop(stream.id, None)
            return
        method = stream.method
        if stream.inbox is not None:
            if stream.partial:
                stream.inbox.put_nowait(ValueError("the request stream ended inside a message"))
            stream.inbox.put_nowait(_END)
        elif method is not None:
            if stream.opened_ns:
                stream.read_ns = time.monotonic_ns()
            self._start(stream, self._run_single(stream, method))

    def _feed(self, stream: Stream, body: memoryview) -> None:
        """Split a streaming request's bytes into messages as they become whole."""
        buf = stream.partial
        buf += body
        assert stream.inbox is not None
        while len(buf) >= PREFIX_SIZE:
            flag, length = MESSAGE_PREFIX.unpack_from(buf)
            if length > self.max_message:
                self._too_large(stream, length)
                return
            if len(buf) < PREFIX_SIZE + length:
                self._grant(stream, PREFIX_SIZE + length, len(buf))
                break
            message = bytes(buf[PREFIX_SIZE : PREFIX_SIZE + length])
            del buf[: PREFIX_SIZE + length]
            stream.inbox.put_nowait(Compressed(message) if flag else message)

    def _inflate(self, encoding: str, message: bytes | memoryview) -> bytes:
        """A compressed request message, never inflated past the limit (run off the loop)."""
        if encoding == "gzip":
            wbits = 31
        elif encoding == "deflate":
            wbits = 15
        else:
            raise ValueError("compressed message without a grpc-encoding")
        try:
            return inflate(message, wbits, self.max_message)
        except TooLarge:
            raise AbortError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                _too_large_message(None, self.max_message),
            ) from None
        except zlib.error as e:
            raise ValueError(f"could not decompress the request message: {e}") from None

    async def _parse_off_loop(
        self, encoding: str, flag: int, message: bytes | memoryview, request_type: Any
    ) -> Any:
        """Inflate and parse a request message in a worker thread: it may take long."""
        if flag:
            message = await asyncio.to_thread(self._inflate, encoding, message)
        if len(message) < OFFLOAD_PROTOBUF_BYTES:
            return request_type.FromString(message)
        return await asyncio.to_thread(request_type.FromString, message)

    # ------------------------------------------------------------------ running handlers

    def _start(self, stream: Stream, coro: Any) -> None:
        self.hub.rpc_started()
        stream.task = self.loop.create_task(coro)
        stream.task.add_done_callback(lambda _: self.hub.rpc_ended())

    @staticmethod
    def _single_message(stream: Stream) -> tuple[int, memoryview]:
        chunks = stream.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        stream.chunks = []
        if len(body) < PREFIX_SIZE:
            raise ValueError("the request has no message")
        flag, length = MESSAGE_PREFIX.unpack_from(body)
        if len(body) != PREFIX_SIZE + length:
            raise ValueError("the request is not exactly one message")
        return flag, memoryview(body)[PREFIX_SIZE:]

    async def _run_single(self, stream: Stream, method: Method) -> None:
        context = Context(self, stream)
        try:
            flag, raw = self._single_message(stream)
            if flag or len(raw) >= OFFLOAD_PROTOBUF_BYTES:
                request = await self._parse_off_loop(
                    stream.encoding, flag, raw, method.request_type
                )
            else:
                request = method.request_type.FromString(raw)
            response = await method.handler(request, context)
            start = time.monotonic_ns() if context.sent is not None else 0
            if method.kind is Kind.UNARY:  # handlers may serialize large responses themselves
                data = response if type(response) is bytes else response.SerializeToString()
                self.send_message(stream, data)
            self.finish(stream, grpc.StatusCode.OK, "")
        except BaseException as e:
            start = time.monotonic_ns() if context.sent is not None else 0
            self._failed(stream, e)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
        if context.sent is not None:
            context.sent(start, time.monotonic_ns())

    async def _run_bidi(self, stream: Stream, method: Method) -> None:
        context = Context(self, stream)
        try:
            await method.handler(self._requests(stream, method.request_type), context)
            self.finish(stream, grpc.StatusCode.OK, "")
        except BaseException as e:
            self._failed(stream, e)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise

    async def _requests(self, stream: Stream, request_type: Any) -> AsyncIterator[Any]:
        inbox = stream.inbox
        assert inbox is not None
        while True:
            item = await inbox.get()
            if type(item) is bytes:
                self._consumed(stream, PREFIX_SIZE + len(item))
                if len(item) < OFFLOAD_PROTOBUF_BYTES:
                    yield request_type.FromString(item)
                else:
                    yield await self._parse_off_loop(stream.encoding, 0, item, request_type)
            elif item is _END:
                return
            elif isinstance(item, Exception):
                raise item
            else:
                assert isinstance(item, Compressed)
                self._consumed(stream, PREFIX_SIZE + len(item.data))
                yield await self._parse_off_loop(stream.encoding, 1, item.data, request_type)

    def _consumed(self, stream: Stream, n: int) -> None:
        """A streaming call's handler took an `n`-byte message: its window comes back."""
        if not stream.held and stream.unreturned + n < RETURN_AT:
            stream.unreturned += n  # the common case: returned later, in a batch
            return
        updates = self.budget.consumed(stream, n)
        if updates and not self.dead:
            self._window_updates(updates)

    def _failed(self, stream: Stream, exc: BaseException) -> None:
        if isinstance(exc, AbortError):
            self.finish(stream, exc.code, exc.details)
        elif isinstance(exc, asyncio.CancelledError):
            if stream.timed_out:
                self.finish(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            else:
                self.finish(stream, grpc.StatusCode.CANCELLED, "the call was cancelled")
        else:
            if not isinstance(exc, (ValueError, DecodeError)):  # not a malformed request
                log.error("unexpected error in a gRPC handler", exc_info=exc)
            self.finish(stream, grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ writing

    def _write(self, data: bytes | memoryview) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out, self.out = self.out, []
        if self.transport is not None and out:
            self.transport.write(b"".join(out))

    def send_message(self, stream: Stream, message: bytes) -> None:
        if stream.local_closed or self.dead:
            return
        if not stream.headers_sent:
            stream.headers_sent = True
            self._write(h2.frame(h2.HEADERS, h2.END_HEADERS, stream.id, h2.RESPONSE_HEADERS))
        self._send(stream, False, MESSAGE_PREFIX.pack(0, len(message)) + message)

    def finish(self, stream: Stream, code: grpc.StatusCode, message: str) -> None:
        """End the stream with its status: trailers after the data, or trailers only."""
        if stream.local_closed:
            return
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if self.reset_debt and stream.task is not None:
            self.reset_debt -= 1  # an answered call pays for one the client reset
        status = code.value[0]
        if status and log.isEnabledFor(logging.DEBUG):  # --log-verbose >= 1
            path = next((v for k, v in stream.headers if k == ":path"), "?")
            log.debug("gRPC %s failed: %s %s", path, code.name, message)
        block = h2.TRAILERS_OK if status == 0 else h2.status_block(status, message)
        if not stream.headers_sent:
            stream.headers_sent = True
            block = h2.RESPONSE_HEADERS + block
        self._send(stream, True, block)
        if stream.inbox is None:
            self._stop_upload(stream)
        self._end_flow(stream)
        self._local_end(stream)

    def _end_flow(self, stream: Stream) -> None:
        """The call ended: what it held of the connection's budget comes back."""
        if not (stream.held or stream.wanted):
            stream.ended = True  # nothing to give back, and nobody waits behind it
            return
        updates = self.budget.end(stream)
        if updates and not self.dead:
            self._window_updates(updates)

    def _stop_upload(self, stream: Stream) -> None:
        """Answered before the request ended (refused, unknown method, deadline): tell the
        client to stop sending, and drop whatever of it still arrives."""
        if not stream.remote_closed:
            self._write(h2.rst_stream(stream.id, h2.NO_ERROR))
            stream.remote_closed = stream.upload_stopped = True
            stream.chunks = []

    def _send(self, stream: Stream, trailers: bool, data: bytes | memoryview) -> None:
        if stream.pending:
            stream.pending.append((trailers, data))
            self._queued(stream, len(data))
            return
        if trailers:
            self._write(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, stream.id, data))
            return
        rest = self._send_data(stream, data)
        if rest is not None:
            stream.pending.append((False, rest))
            self._queued(stream, len(rest))
            self.blocked[stream.id] = stream

    def _queued(self, stream: Stream, n: int) -> None:
        """`n` bytes more (or fewer, when negative) wait for the client's window."""
        stream.queued += n
        self.queued += n
        if self.queued > SEND_QUEUE_BYTES:
            self.can_send.clear()
        elif not self.writing_paused and not self.can_send.is_set():
            self.can_send.set()

    def _send_data(self, stream: Stream, data: bytes | memoryview) -> memoryview | None:
        """Send as much as both windows allow; return what is left."""
        view = memoryview(data)
        while view:
            n = min(len(view), self.send_window, stream.send_window, self.peer_max_frame)
            if n <= 0:
                return view
            self._write(h2.FRAME_HEADER.pack(n << 8 | h2.DATA, 0, stream.id))
            self._write(view[:n])
            view = view[n:]
            self.send_window -= n
            stream.send_window -= n
        return None

    def _unblock(self) -> None:
        for sid, stream in list(self.blocked.items()):
            while stream.pending:
                trailers, data = stream.pending[0]
                if trailers:
                    stream.pending.popleft()
                    self._queued(stream, -len(data))
                    self._write(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, sid, data))
                    continue
                rest = self._send_data(stream, data)
                if rest is not None:
                    self._queued(stream, len(rest) - len(data))
                    stream.pending[0] = (False, rest)
                    break
                self._queued(stream, -len(data))
                stream.pending.popleft()
            if not stream.pending:
                del self.blocked[sid]
                if stream.local_closed and stream.remote_closed:
                    self.streams.pop(sid, None)
            if self.send_window <= 0:
                return

    def _settings(self, payload: memoryview) -> None:
        self.handshaken = True
        for key, value in h2.settings(payload):
            if key == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > h2.MAX_WINDOW:
                    raise h2.ProtocolError(h2.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > h2.MAX_WINDOW:  # RFC 9113 6.9.2
                        raise h2.ProtocolError(h2.FLOW_CONTROL_ERROR, "a stream window overflows")
            elif key == h2.SETTINGS_ENABLE_PUSH:
                if value > 1:
                    raise h2.ProtocolError(h2.PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
            elif key == h2.SETTINGS_MAX_FRAME_SIZE:
                if not h2.DEFAULT_MAX_FRAME <= value < 1 << 24:
                    raise h2.ProtocolError(h2.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
        self._write(h2.frame(h2.SETTINGS, h2.ACK, 0))
        self._unblock()

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise h2.ProtocolError(h2.FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = int.from_bytes(payload) & 0x7FFFFFFF
        if sid == 0:
            if not increment:
                raise h2.ProtocolError(h2.PROTOCOL_ERROR, "WINDOW_UPDATE with a zero increment")
            self.send_window += increment
            if self.send_window > h2.MAX_WINDOW:
                raise h2.ProtocolError(h2.FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self.streams.get(sid)
            if stream is None:
                if sid > self.last_stream_id:
                    raise h2.ProtocolError(h2.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
                self._count_control()  # a stream already closed: nothing to do
                return
            if not increment:  # stream errors (RFC 9113 6.9, 6.9.1)
                self._reset(stream, h2.PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > h2.MAX_WINDOW:
                self._reset(stream, h2.FLOW_CONTROL_ERROR)
                return
        self._unblock()

    # ------------------------------------------------------------------ ending

    def _local_end(self, stream: Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed and not stream.pending:
            self.streams.pop(stream.id, None)
        if self.refusing and not self.streams:
            self._close_now()

    def _reset(self, stream: Stream, code: int) -> None:
        """A stream error: RST_STREAM with `code`, and the stream ends on our side too."""
        self._write(h2.rst_stream(stream.id, code))
        self.streams.pop(stream.id, None)
        self._drop(stream)

    def _drop(self, stream: Stream) -> None:
        """The client reset the stream (or went away): stop its work, send nothing more."""
        stream.local_closed = stream.remote_closed = True
        self.blocked.pop(stream.id, None)
        if stream.pending:
            stream.pending.clear()
            self._queued(stream, -stream.queued)
        self._end_flow(stream)
        if stream.timer is not None:
            stream.timer.cancel()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    def closing_when_idle(self) -> None:
        """No new streams (they are refused); close once the open ones have ended."""
        if not self.refusing:
            self.refusing = True
            self._write(h2.goaway(self.last_stream_id, h2.NO_ERROR))
        if not self.streams:
            self._close_now()

    def close(self, code: int, message: str, *, quiet: bool = False) -> None:
        """A connection error: GOAWAY naming it, and close (logged unless `quiet`: what a flood
        of connections causes must not flood the log)."""
        if not quiet:
            log.info("closing a gRPC connection: %s", message)
        self._write(h2.goaway(self.last_stream_id, code, message.encode()[:256]))
        self.refusing = True
        self._close_now()
        self.dead = True

    def _close_now(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()


_HEADER_FLAG = " (SETTINGS_MAX_HEADER_LIST_SIZE; --grpc-max-header-list-size)"


def _too_large_message(length: int | None, limit: int) -> str:
    """grpc-core's words for RESOURCE_EXHAUSTED on a large message, and the flag to change."""
    size = "more" if length is None else str(length)
    return (
        f"Received message larger than max ({size} vs. {limit}); "
        "use --grpc-max-message-size to raise the limit"
    )
