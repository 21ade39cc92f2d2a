"""What one client may make a front-end hold or do, and the shared capped decompressor.

Each limit refuses one request, one stream or one connection, never the server. The defaults
are the `serve` flags' defaults (cli.py); README.md's "Limits" table lists them.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

MiB: Final = 2**20
SWEEP_S: Final = 1.0  # how often timeouts are checked, at most (a quarter of the shortest)


class TimedConnection(Protocol):
    def check_timeouts(self, now: float) -> None: ...


class TimeoutSweeper:
    """One task per listener that checks every connection's timeouts now and then, so reads
    and frames pay nothing for them (both front-ends' hubs use it)."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(
        self, timeouts: Iterable[float], connections: Callable[[], Iterable[TimedConnection]]
    ) -> None:
        """Start sweeping when any of `timeouts` is on (not 0); `connections` lists the live
        connections at each sweep."""
        active = [t for t in timeouts if t]
        if active and self._task is None:
            interval = min(SWEEP_S, min(active) / 4)
            self._task = asyncio.get_running_loop().create_task(self._sweep(interval, connections))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @staticmethod
    async def _sweep(interval: float, connections: Callable[[], Iterable[TimedConnection]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(connections()):
                conn.check_timeouts(now)

# Bodies and messages whose decoding may take milliseconds are decoded off the event loop
# (asyncio.to_thread); smaller ones are decoded in place, where a thread hop would cost more.
OFFLOAD_JSON_BYTES: Final = 1 * MiB  # HTTP: JSON text of an infer or control request
OFFLOAD_PROTOBUF_BYTES: Final = 4 * MiB  # gRPC: a request message
OFFLOAD_TYPED_ELEMENTS: Final = 16384  # gRPC: typed `contents` elements (~1 ms to convert)
OFFLOAD_OUTPUT_BYTES: Final = 1 * MiB  # both: outputs' nbytes, to encode, serialize, compress
FLOOD_WINDOW_S: Final = 10.0  # the window over which gRPC control frames are counted

# gRPC flow control (frontends/grpc/flow.py). Each stream may send STREAM_WINDOW bytes before we
# return window, which happens as its messages are consumed; a message larger than that is
# granted the rest from its connection's buffer budget (GrpcLimits.max_connection_buffer_size).
STREAM_WINDOW: Final = 1 * MiB  # advertised as SETTINGS_INITIAL_WINDOW_SIZE
CONNECTION_WINDOW: Final = 1 << 30  # returned as data arrives: the streams' windows bound it
# Responses queued for a client whose flow-control window is shut (a slow reader): past this, a
# streaming handler's writes wait for the client, and the stream stops reading requests.
SEND_QUEUE_BYTES: Final = 4 * MiB  # per connection
STREAM_INFLIGHT: Final = 64  # ModelStreamInfer requests read and not yet answered, per stream


@dataclass(slots=True, frozen=True)
class GrpcLimits:
    max_message_size: int = 64 * MiB  # a request message, after decompression too
    max_header_list_size: int = 64 * 1024  # a header block as received, and decoded
    max_concurrent_streams: int = 256  # open streams per connection; more: REFUSED_STREAM
    max_control_frames: int = 1000  # SETTINGS, PING, PRIORITY, ... per FLOOD_WINDOW_S
    max_resets: int = 200  # streams reset by the client while we work, beyond those answered
    max_connection_buffer_size: int = 256 * MiB  # granted beyond stream windows; >= a message
    max_connections: int = 1024  # open connections; more get GOAWAY and are closed
    handshake_timeout_s: float = 30.0  # from connecting to the client's preface and SETTINGS
    idle_timeout_s: float = 300.0  # a connection without a stream this long gets GOAWAY


@dataclass(slots=True, frozen=True)
class HttpLimits:
    header_timeout_s: float = 30.0  # from the request's first byte (or the connection) to headers
    body_timeout_s: float = 30.0  # the longest pause while a request body arrives
    idle_timeout_s: float = 300.0  # a keep-alive connection with nothing to do
    max_connections: int = 1024  # open connections; more are answered 503 and closed


class TooLarge(Exception):
    """Decompressed data would exceed the limit."""


def inflate(data: bytes | memoryview, wbits: int, limit: int) -> bytes:
    """Decompress a zlib/gzip/raw deflate stream (`wbits` as in zlib), producing at most `limit`
    bytes: never more is allocated, however far the data would inflate. Raises TooLarge past the
    limit, zlib.error on corrupt or truncated data."""
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, limit + 1)
    if len(out) > limit:
        raise TooLarge(f"more than {limit} bytes")
    if not d.eof:
        raise zlib.error("the compressed data is truncated")
    return out
