"""The HTTP/2 transport under the gRPC front-end, driven frame by frame: what grpc clients do
rarely (padding, CONTINUATION, tiny windows, pings) and what broken clients do (HTTP/1.1 on the
gRPC port, bad frames, bad header blocks). Each bad connection is closed alone; the server keeps
serving everyone else."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb

from torchtide.app import AppThread
from torchtide.frontends.grpc import http2 as h2
from torchtide.frontends.limits import STREAM_WINDOW

SERVICE = "/inference.GRPCInferenceService/"
Frame = tuple[int, int, int, bytes]


class RawClient:
    """A minimal HTTP/2 client on a plain socket: frames in, frames out, nothing hidden."""

    def __init__(self, port: int, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.sock.sendall(h2.PREFACE + h2.settings_frame(settings or {}))

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, timeout: float = 60.0) -> Frame | None:
        """The next frame, or None when the server closed the connection."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 9:
                head, flags, sid = h2.FRAME_HEADER.unpack_from(self.buf)
                length = head >> 8
                if len(self.buf) >= 9 + length:
                    payload, self.buf = self.buf[9 : 9 + length], self.buf[9 + length :]
                    return head & 0xFF, flags, sid & 0x7FFFFFFF, payload
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self.buf += chunk

    def request_headers(self, path: str, content_type: str = "application/grpc") -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", content_type),
                ("te", "trailers"),
            ]
        )

    def call(self, sid: int, path: str, message: bytes) -> None:
        self.send(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, self.request_headers(path)))
        self.send(h2.frame(h2.DATA, h2.END_STREAM, sid, grpc_message(message)))

    def response(self, sid: int) -> tuple[dict[str, str], bytes]:
        """Headers (trailers merged in) and body of stream `sid`, skipping connection frames."""
        headers: dict[str, str] = {}
        body = b""
        while True:
            f = self.frame()
            assert f is not None, "connection closed before the response ended"
            kind, flags, fsid, payload = f
            if fsid != sid:
                continue
            if kind == h2.HEADERS:
                headers.update((str(k), str(v)) for k, v in self.decoder.decode(payload))
            elif kind == h2.DATA:
                body += payload
            if kind in (h2.HEADERS, h2.DATA) and flags & h2.END_STREAM:
                return headers, body

    def until_closed(self) -> list[Frame]:
        frames = []
        while (f := self.frame()) is not None:
            frames.append(f)
        return frames


def grpc_message(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def open_call(raw: RawClient, sid: int, path: str = SERVICE + "ServerLive", **extra: str) -> None:
    """HEADERS for a call whose request message has not been sent yet."""
    block = raw.encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra.items(),
        ]
    )
    raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block))


def padded(size: int) -> bytes:
    """A `size`-byte protobuf message every request type parses: one unknown bytes field (15)."""
    for varint in (1, 2, 3, 4):
        payload = size - 1 - varint
        encoded = _varint(payload)
        if len(encoded) == varint:
            return b"\x7a" + encoded + b"x" * payload
    raise ValueError(size)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def add_sub_request() -> bytes:
    req = pb.ModelInferRequest(model_name="add_sub", id="raw")
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        req.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
    return bytes(req.SerializeToString())


@pytest.fixture
def port(served: AppThread) -> int:
    return int(served.app.port("grpc"))


@pytest.fixture
def raw(port: int) -> Iterator[RawClient]:
    c = RawClient(port)
    yield c
    c.close()


def assert_serving(port: int) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [
            grpcclient.InferInput(n, [1, 16], "INT32").set_data_from_numpy(a)
            for n in ("INPUT0", "INPUT1")
        ]
        np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a * 2)
    finally:
        client.close()


def goaway_code(frames: list[Frame]) -> int:
    codes = [struct.unpack(">II", p[:8])[1] for k, _, _, p in frames if k == h2.GOAWAY]
    assert codes, f"no GOAWAY among {[f[0] for f in frames]}"
    return codes[-1]


def test_settings_and_ping_are_acknowledged(raw: RawClient) -> None:
    raw.send(h2.frame(h2.PING, 0, 0, b"12345678"))
    seen: list[Any] = []
    while not (("settings-ack" in seen) and ("ping" in seen)):
        f = raw.frame()
        assert f is not None
        kind, flags, _, payload = f
        if kind == h2.SETTINGS and flags & h2.ACK:
            seen.append("settings-ack")
        elif kind == h2.PING:
            assert flags & h2.ACK and payload == b"12345678"
            seen.append("ping")


def test_padding_and_continuation(raw: RawClient) -> None:
    block = raw.request_headers(SERVICE + "ServerLive")
    half = len(block) // 2
    # HEADERS with 3 bytes of padding and half the block, the rest in a CONTINUATION.
    raw.send(h2.frame(h2.HEADERS, h2.PADDED, 1, bytes([3]) + block[:half] + b"\0\0\0"))
    raw.send(h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[half:]))
    raw.send(
        h2.frame(h2.DATA, h2.PADDED | h2.END_STREAM, 1, bytes([2]) + grpc_message(b"") + b"\0\0")
    )
    headers, body = raw.response(1)
    assert headers[":status"] == "200" and headers["grpc-status"] == "0"
    assert pb.ServerLiveResponse.FromString(body[5:]).live


def test_a_tiny_client_window_gets_the_response_in_pieces(port: int) -> None:
    raw = RawClient(port, {h2.SETTINGS_INITIAL_WINDOW_SIZE: 40})
    try:
        raw.call(1, SERVICE + "ModelInfer", add_sub_request())
        body = b""
        while len(body) < 40:  # the first 40 bytes of the message, then nothing
            f = raw.frame()
            assert f is not None
            if f[0] == h2.DATA and f[2] == 1:
                body += f[3]
                assert not f[1] & h2.END_STREAM
        assert len(body) == 40
        with pytest.raises(TimeoutError):
            while True:
                f = raw.frame(timeout=0.3)
                assert f is not None and not (f[2] == 1 and f[0] in (h2.DATA, h2.HEADERS))
        raw.send(h2.window_update(1, 1 << 20))
        headers, rest = raw.response(1)
        assert headers["grpc-status"] == "0"
        resp = pb.ModelInferResponse.FromString((body + rest)[5:])
        out = np.frombuffer(resp.raw_output_contents[0], np.int32)
        np.testing.assert_array_equal(out, np.arange(16, dtype=np.int32) * 2)
        assert resp.id == "raw"
    finally:
        raw.close()


def test_a_message_larger_than_the_stream_window_is_granted_the_rest(raw: RawClient) -> None:
    """The stream window is 1 MiB; a 3 MiB message's prefix earns a WINDOW_UPDATE for the rest
    of it (from the connection's buffer budget), and no more."""
    message = grpc_message(padded(3 * STREAM_WINDOW))
    open_call(raw, 1, SERVICE + "ServerLive")
    raw.send(h2.frame(h2.DATA, 0, 1, message[:STREAM_WINDOW]))  # all the window allows
    while True:
        f = raw.frame()
        assert f is not None
        if f[0] == h2.WINDOW_UPDATE and f[2] == 1:
            assert struct.unpack(">I", f[3])[0] == len(message) - STREAM_WINDOW
            break
    rest = message[STREAM_WINDOW:]
    for i in range(0, len(rest), h2.OUR_MAX_FRAME):
        last = i + h2.OUR_MAX_FRAME >= len(rest)
        raw.send(h2.frame(h2.DATA, h2.END_STREAM if last else 0, 1, rest[i : i + h2.OUR_MAX_FRAME]))
    headers, _ = raw.response(1)
    assert headers["grpc-status"] == "0"


def test_unknown_method_and_wrong_content_type(raw: RawClient, port: int) -> None:
    raw.call(1, SERVICE + "NoSuchRpc", b"")
    headers, body = raw.response(1)
    assert headers["grpc-status"] == "12" and body == b""
    assert "NoSuchRpc" in headers["grpc-message"]
    raw.send(
        h2.frame(
            h2.HEADERS,
            h2.END_HEADERS | h2.END_STREAM,
            3,
            raw.request_headers(SERVICE + "ServerLive", content_type="text/plain"),
        )
    )
    headers, _ = raw.response(3)
    assert headers[":status"] == "415"
    assert_serving(port)


def test_http1_on_the_grpc_port_is_refused_alone(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert b"not an HTTP/2 client preface" in data  # the GOAWAY's debug data says why
    assert_serving(port)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (h2.frame(h2.DATA, 0, 0, b"x"), h2.PROTOCOL_ERROR),  # DATA on stream 0
        (h2.frame(h2.HEADERS, h2.END_HEADERS, 2, b"\x82"), h2.PROTOCOL_ERROR),  # even stream id
        (h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\xff\xff\xff\xff"), h2.COMPRESSION_ERROR),
        (h2.frame(h2.SETTINGS, 0, 0, b"\0\0\0"), h2.FRAME_SIZE_ERROR),
        (h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, b""), h2.PROTOCOL_ERROR),
        (h2.FRAME_HEADER.pack((h2.OUR_MAX_FRAME + 1) << 8 | h2.DATA, 0, 1), h2.FRAME_SIZE_ERROR),
    ],
)
def test_protocol_errors_close_only_that_connection(port: int, bad: bytes, code: int) -> None:
    raw = RawClient(port)
    try:
        raw.send(bad)
        assert goaway_code(raw.until_closed()) == code
    finally:
        raw.close()
    assert_serving(port)


def test_client_reset_ends_the_stream_quietly(raw: RawClient, port: int) -> None:
    raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, raw.request_headers(SERVICE + "ModelInfer")))
    raw.send(h2.rst_stream(1, h2.CANCEL))
    raw.call(3, SERVICE + "ServerLive", b"")
    headers, body = raw.response(3)
    assert headers["grpc-status"] == "0" and pb.ServerLiveResponse.FromString(body[5:]).live
    assert_serving(port)
