"""What one client may make a front-end hold or do, and the shared capped decompressor.

Each limit refuses one request, one stream or one connection, never the server. The defaults
are the `serve` flags' defaults (cli.py); README.md's "Limits" table lists them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final

MiB: Final = 2**20

# Bodies and messages whose decoding may take milliseconds are decoded off the event loop
# (asyncio.to_thread); smaller ones are decoded in place, where a thread hop would cost more.
OFFLOAD_JSON_BYTES: Final = 1 * MiB  # HTTP: JSON text of an infer or control request
OFFLOAD_PROTOBUF_BYTES: Final = 4 * MiB  # gRPC: a request message
OFFLOAD_TYPED_ELEMENTS: Final = 16384  # gRPC: typed `contents` elements (~1 ms to convert)
FLOOD_WINDOW_S: Final = 10.0  # the window over which gRPC control frames are counted


@dataclass(slots=True, frozen=True)
class GrpcLimits:
    max_message_size: int = 64 * MiB  # a request message, after decompression too
    max_header_list_size: int = 64 * 1024  # a header block as received, and decoded
    max_concurrent_streams: int = 256  # open streams per connection; more: REFUSED_STREAM
    max_control_frames: int = 1000  # SETTINGS, PING, PRIORITY, ... per FLOOD_WINDOW_S
    max_resets: int = 200  # streams reset by the client while we work, beyond those answered


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
