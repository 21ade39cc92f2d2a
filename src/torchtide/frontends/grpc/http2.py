"""The HTTP/2 pieces a gRPC server needs (RFC 9113, RFC 7541), and nothing more.

Frames are packed with one `struct` call; request header blocks are decoded by `hpack` behind a
cache (a client sends the same few header blocks again and again once its HPACK table is warm);
response header blocks are constant bytes built once, since our encoder never indexes.
"""

from __future__ import annotations

import struct
from typing import Final

import hpack
from hpack.table import HeaderTable

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id
FRAME_HEADER_SIZE: Final = 9

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# settings
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

DEFAULT_WINDOW: Final = 65_535
DEFAULT_MAX_FRAME: Final = 16_384
MAX_WINDOW: Final = 2**31 - 1

# Large frames, so a big tensor arrives in few frames; the bench client's receive windows (large,
# so responses never wait on WINDOW_UPDATE round trips). The server's windows, which bound what a
# client may make it buffer, are in frontends/limits.py.
OUR_WINDOW: Final = 1 << 24
OUR_CONNECTION_WINDOW: Final = 1 << 30
OUR_MAX_FRAME: Final = 1 << 20


class ProtocolError(Exception):
    """An HTTP/2 connection error: the peer gets a GOAWAY with this code, then the connection
    closes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def unpad(flags: int, payload: memoryview) -> memoryview:
    """A DATA or HEADERS payload without its padding (RFC 9113 6.1)."""
    if flags & PADDED:
        if not payload:
            raise ProtocolError(PROTOCOL_ERROR, "padded frame without pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise ProtocolError(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1 : len(payload) - pad]
    return payload


def settings(payload: memoryview) -> list[tuple[int, int]]:
    """A SETTINGS frame's (identifier, value) pairs."""
    if len(payload) % 6:
        raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
    return [struct.unpack_from(">HI", payload, i) for i in range(0, len(payload), 6)]


def frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    return FRAME_HEADER.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def settings_frame(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in values.items()))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


# ---------------------------------------------------------------------------- HPACK encoding


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(value: bytes) -> bytes:
    """A string literal without Huffman coding (RFC 7541 5.2)."""
    return _hpack_int(len(value), 7) + value


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + hpack_string(name) + hpack_string(value)


# `:status 200` is static entry 8; `content-type` is static entry 31 (literal value).
STATUS_200: Final = b"\x88"
CONTENT_TYPE_GRPC: Final = b"\x0f\x10" + _hpack_int(16, 7) + b"application/grpc"
RESPONSE_HEADERS: Final = (
    STATUS_200 + CONTENT_TYPE_GRPC + literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
)
TRAILERS_OK: Final = literal(b"grpc-status", b"0")


def percent_encode(message: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, every other byte as %XX."""
    out = bytearray()
    for b in message.encode("utf-8", "replace"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def status_block(code: int, message: str) -> bytes:
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    return block


# ---------------------------------------------------------------------------- HPACK decoding


class _CountingTable(HeaderTable):
    """hpack's dynamic table, counting its changes so cached decodes know when they are stale."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    @HeaderTable.maxsize.setter  # type: ignore[attr-defined,untyped-decorator]
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


Headers = list[tuple[str, str]]
CACHE_ENTRIES: Final = 64


class HeaderDecoder:
    """One connection's HPACK decoder. A block decoded while the table stayed the same can be
    reused for identical bytes as long as the table has not changed since."""

    def __init__(self, max_header_list_size: int = 1 << 16) -> None:
        # Past the limit (name + value + 32 per field, RFC 9113 6.5.2) hpack raises
        # OversizedHeaderListError mid-block: the table is then out of step, the connection ends.
        self._decoder = hpack.Decoder(max_header_list_size)
        self._table = _CountingTable()
        self._decoder.header_table = self._table
        self._cache: dict[bytes, tuple[int, Headers]] = {}

    def decode(self, block: bytes) -> Headers:
        gen = self._table.generation
        hit = self._cache.get(block)
        if hit is not None and hit[0] == gen:
            return hit[1]
        headers: Headers = [(str(k), str(v)) for k, v in self._decoder.decode(block)]
        if self._table.generation == gen:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[block] = (gen, headers)
        return headers
