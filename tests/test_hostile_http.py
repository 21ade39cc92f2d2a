"""Hostile clients against the HTTP/1.1 front-end (issue 14): slow or silent clients are timed
out, connections are capped, decompression and large bodies are decoded off the event loop.
Also `torchtide serve` as a process, with the limits set by its flags, living through attacks on
both protocols."""

from __future__ import annotations

import gzip
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import free_port, start_app
from tests.models import write_add_sub
from tests.test_grpc_transport import RawClient, assert_serving, grpc_message
from torchtide.app import AppThread
from torchtide.frontends.grpc import http2 as h2
from torchtide.frontends.http import routes
from torchtide.frontends.limits import HttpLimits

TIMEOUT_S = 2.0  # the tight server's timeouts
TIGHT = HttpLimits(header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S, idle_timeout_s=TIMEOUT_S)
WAIT = 10.0  # how long an offender may take to be cut off
INFER = "/v2/models/add_sub/infer"
DOC = {
    "inputs": [
        {"name": f"INPUT{i}", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
        for i in range(2)
    ]
}


@pytest.fixture(scope="module")
def tight(standard_repo: Path) -> Iterator[int]:
    app = start_app(standard_repo, grpc=False, http_limits=TIGHT)
    yield int(app.app.port("http"))
    app.stop()


@pytest.fixture
def port(served: AppThread) -> int:
    return int(served.app.port("http"))


def well_behaved(port: int) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=WAIT)
    try:
        assert client.is_server_live() and client.is_server_ready()
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [
            httpclient.InferInput(f"INPUT{i}", [1, 16], "INT32").set_data_from_numpy(a)
            for i in range(2)
        ]
        np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a * 2)
    finally:
        client.close()


def under_attack(port: int, attack: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(attack)
        well_behaved(port)
        while not running.done():
            well_behaved(port)
        result = running.result(timeout=60)
    well_behaved(port)
    return result


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


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


def drip(sock: socket.socket, data: bytes, gap: float) -> bytes:
    """Send `data` a byte at a time, `gap` seconds apart, until the server answers; return the
    answer (the rest of `data` is not sent)."""
    for i in range(len(data)):
        sock.sendall(data[i : i + 1])
        if select.select([sock], [], [], gap)[0]:
            break
    return until_closed(sock)


def post(body: bytes, **headers: str) -> bytes:
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


# ---------------------------------------------------------------------------- timeouts


def test_a_stalled_body_is_timed_out(tight: int) -> None:
    """The issue's third finding: a Content-Length larger than the body, then a stall, held the
    connection for as long as the client liked."""

    def attack() -> bytes:
        with connect(tight) as s:
            s.sendall(post(b"x" * 100)[:-90])
            return until_closed(s)

    reply = under_attack(tight, attack)
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout")
    assert b"--http-body-timeout-secs" in reply and b"Connection: close" in reply


def test_a_slow_but_steady_body_is_served(tight: int) -> None:
    """The body timeout is the longest pause, not the whole upload: a body trickling in over
    longer than the timeout, without a long pause, is served."""
    body = json.dumps(DOC).encode()
    request = post(body)
    head = len(request) - len(body)
    with connect(tight) as s:
        s.sendall(request[:head])
        pieces = 12
        step = len(body) // pieces + 1
        for i in range(0, len(body), step):  # ~12 pieces, 0.25 s apart: ~3 s > the timeout
            time.sleep(TIMEOUT_S / 8)
            s.sendall(body[i : i + step])
        s.settimeout(WAIT)
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_slowloris_headers_are_timed_out(tight: int) -> None:
    """Headers dripping in a byte at a time never finish in time: 408 after the header timeout,
    however steady the drip."""

    def attack() -> bytes:
        with connect(tight) as s:
            headers = b"GET /v2/health/live HTTP/1.1\r\n" + b"X-Slow: %s\r\n" % (b"x" * 200)
            return drip(s, headers, 0.05)

    reply = under_attack(tight, attack)
    assert reply.startswith(b"HTTP/1.1 408") and b"--http-header-timeout-secs" in reply


def test_a_silent_connection_is_closed(tight: int) -> None:
    with connect(tight) as s:
        assert until_closed(s) == b""  # closed without a word: it asked nothing
    well_behaved(tight)


def test_an_idle_keep_alive_connection_is_closed(tight: int) -> None:
    with connect(tight) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(WAIT)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert until_closed(s) == b""


# ---------------------------------------------------------------------------- connections


def test_connections_beyond_the_limit_get_503(standard_repo: Path) -> None:
    app = start_app(standard_repo, grpc=False, http_limits=HttpLimits(max_connections=3))
    port = int(app.app.port("http"))
    held: list[socket.socket] = []
    try:
        for _ in range(3):  # the limit: each is served, and stays open
            s = connect(port)
            held.append(s)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        with connect(port) as s:  # one more
            reply = until_closed(s)
        assert reply.startswith(b"HTTP/1.1 503") and b"--http-max-connections" in reply
        held.pop().close()
        deadline = time.monotonic() + WAIT  # the server sees the close a moment later
        while True:
            with connect(port) as s:
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(65536).startswith(b"HTTP/1.1 200"):
                    break
            assert time.monotonic() < deadline, "a freed slot was not given to a new connection"
    finally:
        for s in held:
            s.close()
        app.stop()


# ---------------------------------------------------------------------------- off the loop


class ThreadSpy:
    """Wraps a function and records on which thread it runs."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.threads: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        return self.fn(*args, **kwargs)


def test_decompression_and_large_bodies_are_decoded_off_the_loop(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode = ThreadSpy(routes.decode_request)
    monkeypatch.setattr(routes, "decode_request", decode)
    small = json.dumps(DOC).encode()
    for body, headers in (
        (small, {}),  # the hot path: decoded in place
        (gzip.compress(small), {"Content-Encoding": "gzip"}),
        (small[:-1] + b" " * (2 << 20) + b"}", {}),  # 2 MiB of JSON
    ):
        with connect(port) as s:
            s.sendall(post(body, Connection="close", **headers))
            assert until_closed(s).startswith(b"HTTP/1.1 200")
    loop, *others = decode.threads
    assert loop == "torchtide-app"
    assert len(others) == 2 and "torchtide-app" not in others


def test_http_gzip_bomb_is_bounded(port: int) -> None:
    """~100 KB inflating to 100 MiB: stopped at --http-max-input-size, off the loop."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(c.compress(bytes(1 << 20)) for _ in range(100)) + c.flush()

    def attack() -> bytes:
        with connect(port) as s:
            s.sendall(post(bomb, **{"Content-Encoding": "gzip", "Connection": "close"}))
            return until_closed(s)

    reply = under_attack(port, attack)
    assert reply.startswith(b"HTTP/1.1 400") and b"decompressed request body exceeds" in reply


# ---------------------------------------------------------------------------- the process


def test_serve_process_lives_through_the_attacks(tmp_path: Path) -> None:
    """`torchtide serve` with the limits set by flags: a SETTINGS flood, a length prefix of
    2^32-1, a stalled body; the process lives and serves throughout."""
    write_add_sub(tmp_path)
    http, grpc = free_port(), free_port()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torchtide.cli",
            "serve",
            f"--model-repository={tmp_path}",
            f"--http-port={http}",
            f"--grpc-port={grpc}",
            "--allow-metrics=false",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--http-body-timeout-secs=1",
            "--grpc-max-control-frames=100",
            "--grpc-max-message-size=100000",
            "--grpc-handshake-timeout-secs=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "the server exited at start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)

        raw = RawClient(grpc)
        try:  # 101 control frames: the 101st ends the connection
            raw.send(h2.settings_frame({}) * 100)
            frames = []
            try:
                while (f := raw.frame(WAIT)) is not None:
                    frames.append(f)
            except ConnectionResetError:
                pass
            codes = [int.from_bytes(p[4:8]) for k, _, _, p in frames if k == h2.GOAWAY]
            assert codes in ([], [h2.ENHANCE_YOUR_CALM])
        finally:
            raw.close()
        raw = RawClient(grpc)
        try:
            raw.send(
                h2.frame(
                    h2.HEADERS,
                    h2.END_HEADERS,
                    1,
                    raw.request_headers("/inference.GRPCInferenceService/ModelInfer"),
                )
            )
            raw.send(h2.frame(h2.DATA, 0, 1, grpc_message(b"")[:1] + b"\xff\xff\xff\xff"))
            headers, _ = raw.response(1)
            assert (
                headers["grpc-status"] == "8"
                and "(4294967295 vs. 100000)" in headers["grpc-message"]
            )
        finally:
            raw.close()
        with connect(http) as s:
            s.sendall(post(b"x" * 100)[:-50])
            assert until_closed(s).startswith(b"HTTP/1.1 408")
        with connect(grpc) as s:  # silent: closed after the handshake timeout
            assert b"--grpc-handshake-timeout-secs" in until_closed(s)
        assert proc.poll() is None
        assert_serving(grpc)
        well_behaved(http)
    finally:
        proc.terminate()
        proc.wait(30)


def test_limit_flags_are_checked() -> None:
    from torchtide.cli import serve_parser

    args = serve_parser().parse_args(["--http-idle-timeout-secs=0", "--grpc-max-resets=5"])
    assert args.http_idle_timeout_secs == 0 and args.grpc_max_resets == 5  # 0: no timeout
    assert args.grpc_max_message_size == 64 * 2**20 and args.http_max_connections == 1024
    assert args.grpc_max_connections == 1024 and args.grpc_idle_timeout_secs == 300
    assert args.grpc_handshake_timeout_secs == 30
    assert args.grpc_max_connection_buffer_size == 256 * 2**20
    for bad in (
        "--grpc-max-message-size=0",
        "--http-body-timeout-secs=-1",
        "--grpc-max-resets=x",
        "--grpc-max-connections=0",
        "--grpc-idle-timeout-secs=-1",
    ):
        with pytest.raises(SystemExit):
            serve_parser().parse_args([bad])
