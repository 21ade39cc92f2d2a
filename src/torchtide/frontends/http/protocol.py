"""HTTP/1.1 connections: an `asyncio.Protocol` over the `httptools` (llhttp) parser.

A client's end of stream (EOF) counts as it going away, as in uvicorn: a half-closed socket gets
no answer. Keep-alive and pipelining: requests on one connection are answered strictly in order; a
request that needs the core runs as one task while later ones wait in a small queue (reading
pauses when it fills). Bodies are counted as they arrive and refused past `max_input_size`
before they are buffered whole. A client that goes away cancels its in-flight request.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import httptools
import orjson

from torchtide.frontends.http.errors import REASONS

MAX_PIPELINED = 32  # queued requests per connection before reading pauses
MAX_HEAD_BYTES = 64 * 1024  # request line + headers
MIN_COMPRESS = 1024  # smaller bodies are sent as they are even when the client accepts gzip
LINGER_S = 2.0  # after a refusal, read and drop what the client still sends, then close


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    keep_alive: bool = True
    http10: bool = False  # an HTTP/1.0 client must be told "Connection: keep-alive"
    preset: Response | None = None  # a refusal decided while parsing, answered in order
    recv_start_ns: int = 0  # when its first byte and its last byte were read (monotonic ns),
    recv_end_ns: int = 0  # recorded only while tracing is on


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: bytes = b"application/json"
    blobs: list[bytes | memoryview] = field(default_factory=list)  # binary sections after body
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    close: bool = False
    # Told when the response was handed to the transport (monotonic ns; 0, 0: never sent).
    sent: Callable[[int, int], None] | None = None

    @classmethod
    def error(cls, status: int, message: str, *, close: bool = False) -> Response:
        return cls(status, orjson.dumps({"error": message}), close=close)


Handler = Callable[[Request], "Response | Coroutine[Any, Any, Response]"]


class Switch(Protocol):
    active: bool


class _Off:
    active = False


class Hub:
    """What connections share: the dispatcher and its error mapping, the limits, the live
    connections."""

    def __init__(
        self, dispatch: Handler, on_error: Callable[[Exception], Response], max_input_size: int
    ) -> None:
        self.dispatch = dispatch
        self.on_error = on_error
        self.max_input_size = max_input_size
        self.connections: set[HttpConnection] = set()
        self.timestamps: Switch = _Off()  # while active, requests record when they arrived
        self.stopping = False
        self.all_closed = asyncio.Event()
        self.all_closed.set()

    def add(self, conn: HttpConnection) -> None:
        self.connections.add(conn)
        self.all_closed.clear()

    def discard(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.all_closed.set()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a connection that got a final refusal."""


class HttpConnection(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False  # transport closing or closed: write nothing more
        self.refused = False  # a final refusal is queued: ignore further bytes
        self.reading_paused = False
        self.in_message = False  # a request is partly received
        self.writing_paused = False  # the transport's buffer is full: answer nothing more yet
        self._url = b""
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._size = 0
        self._head = 0  # bytes of request line and headers so far
        self._linger: asyncio.TimerHandle | None = None
        self._recv_start = 0

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.hub.add(self)
        if self.hub.stopping:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()  # the core drops a request still queued
        self.hub.discard(self)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._next()

    def data_received(self, data: bytes) -> None:
        if self.refused or self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(Response.error(400, "HTTP protocol upgrade is not supported", close=True))
        except httptools.HttpParserError as e:
            # httptools wraps what a callback raised (our _Refused after a refusal is queued).
            if not self.refused:
                self._refuse(Response.error(400, f"malformed HTTP request: {e}", close=True))

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._recv_start = time.monotonic_ns() if self.hub.timestamps.active else 0
        self.in_message = True
        self._head = 0
        self._url = b""
        self._headers = {}
        self._chunks = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self._head += n
        if self._head > MAX_HEAD_BYTES:
            msg = f"the request line and headers exceed {MAX_HEAD_BYTES} bytes"
            self._refuse(Response.error(400, msg, close=True))
            raise _Refused

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.hub.max_input_size:
            self._refuse(self._too_large(f"request body of {int(length)} bytes"))
            raise _Refused
        expect = self._headers.get("expect", "").lower() == "100-continue"
        if expect and self.transport and self.task is None and not self.queue:
            # Only when nothing is owed before it: an interim reply must not overtake a reply.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.hub.max_input_size:
            self._refuse(
                self._too_large(f"request body of more than {self._size - len(body)} bytes")
            )
            raise _Refused
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        url = self._url
        q = url.find(b"?")
        path = (url if q < 0 else url[:q]).decode("latin-1")
        parser = self.parser
        self.queue.append(
            Request(
                parser.get_method().decode("ascii"),
                path,
                self._headers,
                body,
                parser.should_keep_alive(),
                parser.get_http_version() == "1.0",
                recv_start_ns=self._recv_start,
                recv_end_ns=time.monotonic_ns() if self._recv_start else 0,
            )
        )
        self._chunks = []
        self.in_message = False
        if self.task is None and not self.writing_paused:
            self._next()
        elif len(self.queue) >= MAX_PIPELINED and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()

    # ------------------------------------------------------------------ dispatch and reply

    def _next(self) -> None:
        """Answer queued requests in order until one needs to wait on the core."""
        while self.queue and self.task is None and not self.writing_paused and not self.closed:
            req = self.queue.popleft()
            if req.preset is not None:
                self._write(req, req.preset)
                continue
            if self.hub.stopping:  # the last queued one closes the connection
                self._write(req, Response.error(503, "the server is shutting down"))
                continue
            result = self.hub.dispatch(req)
            if isinstance(result, Response):
                self._write(req, result)
            else:
                self.task = self.loop.create_task(self._run(req, result))
        if self.reading_paused and len(self.queue) < MAX_PIPELINED // 2 and self.transport:
            self.reading_paused = False
            self.transport.resume_reading()

    async def _run(self, req: Request, pending: Coroutine[Any, Any, Response]) -> None:
        try:
            response = await pending
        except asyncio.CancelledError:
            return  # the client went away
        except Exception as e:
            response = self.hub.on_error(e)
        finally:
            self.task = None
        self._write(req, response)
        self._next()

    def _write(self, req: Request, resp: Response) -> None:
        transport = self.transport
        sent = resp.sent
        if self.closed or transport is None:
            if sent is not None:
                sent(0, 0)
            return
        start = time.monotonic_ns() if sent is not None else 0
        keep = req.keep_alive and not resp.close and not (self.hub.stopping and not self.queue)
        body = resp.body
        blobs = resp.blobs
        head = [
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
            % (resp.status, REASONS.get(resp.status, b""), resp.content_type)
        ]
        for k, v in resp.headers:
            head.append(b"%s: %s\r\n" % (k, v))
        total = len(body) + sum(len(b) for b in blobs)
        accept = req.headers.get("accept-encoding") if total >= MIN_COMPRESS else None
        if accept:
            encoding = _pick_encoding(accept)
            if encoding is not None:
                body = _compress(encoding, [body, *blobs])
                blobs = []
                total = len(body)
                head.append(b"Content-Encoding: %s\r\n" % encoding)
        head.append(b"Content-Length: %d\r\n" % total)
        if not keep:
            head.append(b"Connection: close\r\n")
        elif req.http10:
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        if blobs and total >= 65536:
            transport.writelines([b"".join(head), body, *blobs])
        else:
            head.append(body)
            head.extend(bytes(b) if isinstance(b, memoryview) else b for b in blobs)
            transport.write(b"".join(head))
        if sent is not None:
            sent(start, time.monotonic_ns())
        if not keep:
            self._close()

    # ------------------------------------------------------------------ closing

    def _refuse(self, resp: Response) -> None:
        """Queue a final refusal behind any earlier requests and stop reading this connection."""
        self.refused = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.queue.append(Request("", "", {}, b"", False, preset=resp))
        if self.task is None:
            self._next()

    def _too_large(self, what: str) -> Response:
        return Response.error(
            400,
            f"{what} exceeds the maximum allowed input size of {self.hub.max_input_size} bytes. "
            "Use --http-max-input-size to increase the limit.",
            close=True,
        )

    def shutdown(self) -> None:
        """Server stop: close at once when idle; otherwise the last reply closes it (a request
        still arriving is answered 503)."""
        if self.closed and self.transport is not None:
            self.transport.close()  # stop lingering
        elif self.task is None and not self.queue and not self.in_message:
            self._close()

    def _close(self) -> None:
        transport = self.transport
        if self.closed or transport is None:
            return
        self.closed = True
        if self.refused and transport.can_write_eof():
            # Unread request bytes would make close() send a reset that can destroy the refusal
            # before the client reads it: send FIN, drain for a moment, then close.
            transport.write_eof()
            transport.resume_reading()
            self._linger = self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()


def _pick_encoding(accept: str) -> bytes | None:
    accepted = set()
    for part in accept.lower().split(","):
        coding, _, params = part.partition(";")
        q = params.strip()
        if q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"):
            continue  # explicitly refused
        accepted.add(coding.strip())
    if "gzip" in accepted:
        return b"gzip"
    if "deflate" in accepted:
        return b"deflate"
    return None


def _compress(encoding: bytes, parts: list[bytes | memoryview]) -> bytes:
    # gzip: a gzip member (wbits 31); deflate: the zlib format, as HTTP's "deflate" means.
    c = zlib.compressobj(1, zlib.DEFLATED, 31 if encoding == b"gzip" else 15)
    return b"".join([*(c.compress(p) for p in parts), c.flush()])
