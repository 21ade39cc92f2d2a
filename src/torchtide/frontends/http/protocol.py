"""HTTP/1.1 connections: an `asyncio.Protocol` over the `httptools` (llhttp) parser.

A client's end of stream (EOF) counts as it going away, as in uvicorn: a half-closed socket gets
no answer. Keep-alive and pipelining: requests on one connection are answered strictly in order; a
request that needs the core runs as one task while later ones wait in a small queue (reading
pauses when it fills). Bodies are counted as they arrive and refused past `max_input_size`
before they are buffered whole. A client that goes away cancels its in-flight request.

Slow and idle clients are bounded (frontends/limits.py, HttpLimits): one sweeper task per
listener closes connections past a timeout (request headers 408, a stalled body 408, an idle
keep-alive connection silently), so the hot path pays one clock read per read; connections past
`max_connections` are answered 503 and closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import httptools
import orjson

from torchtide.frontends.http.errors import REASONS
from torchtide.frontends.limits import HttpLimits, TimeoutSweeper

log = logging.getLogger("torchtide.http")
MAX_PIPELINED = 32  # queued requests per connection before reading pauses
MAX_HEAD_BYTES = 64 * 1024  # request line + headers
MIN_COMPRESS = 1024  # smaller infer replies are sent as they are even when the client accepts gzip
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
    # Compressed per Accept-Encoding. Triton compresses successful infer replies only; every
    # other reply goes as it is (aiohttp, hence tritonclient's aio client, always sends
    # Accept-Encoding but decompresses only infer replies).
    compressible: bool = False
    # Told when the response was handed to the transport (monotonic ns; 0, 0: never sent).
    sent: Callable[[int, int], None] | None = None

    @classmethod
    def error(cls, status: int, message: str, *, close: bool = False) -> Response:
        return cls(status, orjson.dumps({"error": message}), close=close)


Handler = Callable[[Request], "Response | Coroutine[Any, Any, Response]"]
Admit = Callable[[str, dict[str, str]], "Response | None"]  # (path, headers) → a refusal or None


class Switch(Protocol):
    active: bool


class _Off:
    active = False


class Hub:
    """What connections share: the dispatcher and its error mapping, the limits, the live
    connections."""

    def __init__(
        self,
        dispatch: Handler,
        on_error: Callable[[Exception], Response],
        max_input_size: int,
        limits: HttpLimits | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.admit = admit  # access control, asked once the headers are in (before the body)
        self.on_error = on_error
        self.max_input_size = max_input_size
        self.limits = limits or HttpLimits()
        self.connections: set[HttpConnection] = set()
        self.timestamps: Switch = _Off()  # while active, requests record when they arrived
        self.stopping = False
        self.all_closed = asyncio.Event()
        self.all_closed.set()
        self._sweeper = TimeoutSweeper()

    def start(self) -> None:
        """Start enforcing the timeouts (those that are not 0)."""
        lim = self.limits
        timeouts = (lim.header_timeout_s, lim.body_timeout_s, lim.idle_timeout_s)
        self._sweeper.start(timeouts, lambda: self.connections)

    def close(self) -> None:
        self._sweeper.stop()

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
        self._denied: Response | None = None  # refused by access control: the body is dropped
        self._linger: asyncio.TimerHandle | None = None
        # For the timeouts (checked by the hub's sweeper, not by timers per request):
        self.since = self.loop.time()  # connection made, or the request's first byte
        self.active_at = self.since  # last read, or last sweep that found a request in progress
        self.fresh = True  # no request begun yet
        self.headers_done = False
        self._recv_start = 0

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.hub.add(self)
        if self.hub.stopping:
            self._close()
        elif len(self.hub.connections) > self.hub.limits.max_connections:
            n = self.hub.limits.max_connections
            msg = f"the server is at its limit of {n} connections (--http-max-connections)"
            self._refuse(Response.error(503, msg, close=True))

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
        self.active_at = self.loop.time()
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
        self.since = self.active_at
        self.fresh = self.headers_done = False
        self._head = 0
        self._url = b""
        self._headers = {}
        self._chunks = []
        self._size = 0
        self._denied = None

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
        self.headers_done = True
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.hub.max_input_size:
            self._refuse(self._too_large(f"request body of {int(length)} bytes"))
            raise _Refused
        if self.hub.admit is not None:
            self._denied = self.hub.admit(_path(self._url), self._headers)
        expect = self._headers.get("expect", "").lower() == "100-continue"
        expect = expect and self._denied is None
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
        if self._denied is None:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        parser = self.parser
        self.queue.append(
            Request(
                parser.get_method().decode("ascii"),
                _path(self._url),
                self._headers,
                body,
                parser.should_keep_alive(),
                parser.get_http_version() == "1.0",
                self._denied,
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
        if resp.status >= 400 and log.isEnabledFor(logging.DEBUG):
            _log_failure(req, resp)
        body = resp.body
        blobs = resp.blobs
        head = [
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
            % (resp.status, REASONS.get(resp.status, b""), resp.content_type)
        ]
        if resp.compressible and (accept := req.headers.get("accept-encoding")):
            resp = compress_reply(resp, accept)
            body, blobs = resp.body, resp.blobs
        for k, v in resp.headers:
            head.append(b"%s: %s\r\n" % (k, v))
        total = len(body) + sum(len(b) for b in blobs)
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

    # ------------------------------------------------------------------ timeouts

    def check_timeouts(self, now: float) -> None:
        """Called by the hub's sweeper: close what waited on the client for too long."""
        if self.closed or self.refused or self.reading_paused:
            return
        lim = self.hub.limits
        if self.in_message:
            if not self.headers_done:
                if lim.header_timeout_s and now - self.since >= lim.header_timeout_s:
                    self._timed_out("the request headers", lim.header_timeout_s, "header")
            elif lim.body_timeout_s and now - self.active_at >= lim.body_timeout_s:
                self._timed_out("more of the request body", lim.body_timeout_s, "body")
        elif self.task is not None or self.queue:
            self.active_at = now  # answering: the idle time starts after the answer
        elif self.fresh:  # connected, and never a byte of a request
            if lim.header_timeout_s and now - self.since >= lim.header_timeout_s:
                self._close()
        elif lim.idle_timeout_s and now - self.active_at >= lim.idle_timeout_s:
            self._close()

    def _timed_out(self, what: str, seconds: float, flag: str) -> None:
        msg = f"timed out after {seconds:g} s waiting for {what} (--http-{flag}-timeout-secs)"
        self._refuse(Response.error(408, msg, close=True))

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


def _log_failure(req: Request, resp: Response) -> None:
    """--log-verbose >= 1: each failed request and its reason."""
    try:
        reason = str(orjson.loads(resp.body)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        reason = resp.body[:200].decode("utf-8", "replace")
    what = f"{req.method} {req.path}" if req.method else "a malformed request"
    log.debug("HTTP %s failed: %d %s", what, resp.status, reason)


def _path(url: bytes) -> str:
    q = url.find(b"?")
    return (url if q < 0 else url[:q]).decode("latin-1")


def _pick_encoding(accept: str) -> bytes | None:
    """Triton's choice (http_server.cc, CompressionTypeUsed): among gzip, deflate and identity,
    the one with the highest q, the first listed on a tie; q=0, unknown codings and unreadable
    weights count for nothing. None: send the reply as it is."""
    best, weight = "identity", 0.0
    for part in accept.lower().split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip()
        q = 1.0
        key, _, value = params.partition("=")
        if key.strip() == "q":
            try:
                q = float(value)
            except ValueError:
                continue
        elif params.strip():
            continue  # a parameter other than q: not a form Triton reads
        if coding in ("gzip", "deflate", "identity") and q > weight:
            best, weight = coding, q
    return None if best == "identity" else best.encode()


def compress_reply(resp: Response, accept: str) -> Response:
    """`resp` compressed as the client's Accept-Encoding asks, when it is large enough to be worth
    it; else `resp` itself. Large replies are compressed in a worker thread (routes.py)."""
    total = len(resp.body) + sum(len(b) for b in resp.blobs)
    encoding = _pick_encoding(accept) if total >= MIN_COMPRESS else None
    if encoding is None:
        return resp
    return Response(
        resp.status,
        _compress(encoding, [resp.body, *resp.blobs]),
        resp.content_type,
        headers=[*resp.headers, (b"Content-Encoding", encoding)],
        close=resp.close,
    )


def _compress(encoding: bytes, parts: list[bytes | memoryview]) -> bytes:
    # gzip: a gzip member (wbits 31); deflate: the zlib format, as HTTP's "deflate" means.
    c = zlib.compressobj(1, zlib.DEFLATED, 31 if encoding == b"gzip" else 15)
    return b"".join([*(c.compress(p) for p in parts), c.flush()])
