"""`torchtide bench`: input generation, the wire formats it sends, and whole runs over real
sockets against a stub V2 server (tests/v2stub.py) and, when the front-ends exist, the real one."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.v2stub import MODELS, StubServer
from torchtide.bench import inputs as inp
from torchtide.bench.command import cmd_bench, parse_url
from torchtide.bench.httpclient import HttpConnection, _dechunk, infer_body
from torchtide.bench.serverstats import ServerCounters, ServerSplit
from torchtide.bench.transport import ShmPlacement, ShmRef
from torchtide.cli import main as cli_main

FAST = ["--warmup", "0.2", "--duration", "0.6", "-q"]


def add_sub_info(max_batch_size: int | None = 64) -> inp.ModelInfo:
    meta = {"name": "add_sub", **{k: MODELS["add_sub"][k] for k in ("inputs", "outputs")}}
    return inp.ModelInfo.from_metadata(meta, "", max_batch_size)


def var_info(max_batch_size: int | None) -> inp.ModelInfo:
    return inp.ModelInfo(
        "var",
        "",
        [inp.TensorSpec("X", "FP32", [-1, -1, 3]), inp.TensorSpec("S", "BYTES", [-1, 1])],
        [inp.TensorSpec("Y", "FP32", [-1, 4]), inp.TensorSpec("Z", "FP32", [-1, -1])],
        max_batch_size,
    )


# ------------------------------------------------------------------ inputs from metadata


def test_random_inputs_for_a_batched_model() -> None:
    info = add_sub_info()
    b = inp.Batching.decide(info, None, {})
    [tensors] = inp.random_sets(info, b)
    assert [(t.name, t.datatype, t.shape) for t in tensors] == [
        ("INPUT0", "INT32", [1, 16]),
        ("INPUT1", "INT32", [1, 16]),
    ]
    assert len(tensors[0].raw) == 64 and tensors[0].array.dtype == np.int32
    b4 = inp.Batching.decide(info, 4, {})
    assert inp.random_sets(info, b4)[0][0].shape == [4, 16]
    with pytest.raises(inp.WorkloadError, match="exceeds the model's max_batch_size 64"):
        inp.Batching.decide(info, 65, {})
    with pytest.raises(inp.WorkloadError, match="at least 1"):
        inp.Batching.decide(info, 0, {})


def test_variable_dims_take_shape_overrides_or_one() -> None:
    info = var_info(8)
    b = inp.Batching.decide(info, 2, inp.parse_shape_overrides(["X:5,3"]))
    x, s = inp.random_sets(info, b, string_length=7)[0]
    assert x.shape == [2, 5, 3] and x.array.dtype == np.float32
    assert s.shape == [2, 1] and s.datatype == "BYTES"
    # BYTES on the wire: a 4-byte little-endian length before each element
    assert s.raw == b"".join(struct.pack("<I", 7) + v for v in s.array.reshape(-1))
    assert inp.random_sets(info, inp.Batching.decide(info, None, {}))[0][0].shape == [1, 1, 3]
    with pytest.raises(inp.WorkloadError, match="does not fit"):
        inp.random_sets(info, inp.Batching.decide(info, 1, inp.parse_shape_overrides(["X:5,4"])))
    with pytest.raises(inp.WorkloadError, match="unknown input 'Q'"):
        inp.Batching.decide(info, 1, {"Q": [1]})
    for bad in ("X", "X:a", "X:-1", ":3"):
        with pytest.raises(inp.WorkloadError, match="--shape expects"):
            inp.parse_shape_overrides([bad])


def test_non_batched_and_unknown_batching() -> None:
    info = var_info(0)  # max_batch_size 0: shapes are the full shapes
    b = inp.Batching.decide(info, None, {"X": [2, 4, 3]})
    assert inp.random_sets(info, b)[0][0].shape == [2, 4, 3]
    with pytest.raises(inp.WorkloadError, match="does not support batching"):
        inp.Batching.decide(info, 2, {})
    unknown = var_info(None)  # no config endpoint (MLServer): batched only if -b is given
    assert not inp.Batching.decide(unknown, None, {}).batched
    b3 = inp.Batching.decide(unknown, 3, {})
    assert b3.batched and inp.random_sets(unknown, b3)[0][0].shape == [3, 1, 3]


def test_every_datatype_serialises() -> None:
    rng = np.random.default_rng(0)
    for dt, size in [("BOOL", 1), ("UINT8", 1), ("INT16", 2), ("UINT64", 8), ("FP16", 2),
                     ("FP64", 8), ("BF16", 2)]:
        t = inp.Tensor("T", dt, [2, 3], inp.random_array(dt, [2, 3], rng))
        assert len(t.raw) == 6 * size, dt
    bf = inp.Tensor("T", "BF16", [1], inp.random_array("BF16", [1], rng))
    with pytest.raises(inp.WorkloadError, match="BF16 has no JSON form"):
        bf.json_data()
    assert inp.Tensor("T", "BYTES", [2], np.array([b"ab", b"c"], dtype=object)).json_data() == ["ab", "c"]


def test_output_shared_memory_sizes() -> None:
    info = var_info(8)
    b = inp.Batching.decide(info, 2, {})
    y, z = info.outputs
    assert inp.output_byte_size(y, b, 999) == 2 * 4 * 4
    assert inp.output_byte_size(z, b, 999) == 999  # a -1 dim: the default size


# ------------------------------------------------------------------ data files


def test_perf_analyzer_data_file(tmp_path: Path) -> None:
    f = tmp_path / "data.json"
    raw1 = np.arange(16, dtype="<i4").tobytes()
    f.write_text(json.dumps({"data": [
        {"INPUT0": list(range(16)), "INPUT1": [1] * 16},
        {"INPUT0": {"content": [[2] * 16], "shape": [16]}, "INPUT1": {"b64": base64.b64encode(raw1).decode()}},
    ]}))
    info = add_sub_info()
    sets = inp.data_file_sets(info, inp.Batching.decide(info, None, {}), f)
    assert len(sets) == 2
    assert sets[0][0].shape == [1, 16] and sets[0][0].array.tolist() == [list(range(16))]
    assert sets[1][0].array.tolist() == [[2] * 16]
    assert sets[1][1].raw == raw1
    # batch size 3: each entry repeated along the batch dim
    sets3 = inp.data_file_sets(info, inp.Batching.decide(info, 3, {}), f)
    assert sets3[0][0].shape == [3, 16] and (sets3[0][0].array == np.arange(16)).all()


def test_data_file_variable_dims_and_errors(tmp_path: Path) -> None:
    info = var_info(8)
    b = inp.Batching.decide(info, None, {})
    f = tmp_path / "d.json"
    f.write_text(json.dumps({"data": [
        {"X": [0.5] * 12, "S": ["hello"]},  # 12 elements, [-1,3]: the -1 is inferred as 4
        {"X": {"content": [1.0] * 6, "shape": [2, 3]}, "S": {"content": ["a", "b"], "shape": [2]}},
    ]}))
    sets = inp.data_file_sets(info, b, f)
    assert sets[0][0].shape == [1, 4, 3] and sets[0][1].raw == struct.pack("<I", 5) + b"hello"
    assert sets[1][0].shape == [1, 2, 3] and sets[1][1].shape == [1, 2]
    bad = tmp_path / "bad.json"
    for doc, msg in [
        ({"data": [{"X": [1.0] * 3}]}, "no data for input 'S'"),
        ({"data": []}, "expected"),
        ({"rows": 1}, "expected"),
        ({"data": [{"X": {"content": [1.0] * 5, "shape": [2, 3]}, "S": ["a"]}]}, "has 5 elements"),
        ({"data": [{"X": [1.0] * 5, "S": ["a"]}]}, "cannot infer the shape"),
    ]:
        bad.write_text(json.dumps(doc))
        with pytest.raises(inp.WorkloadError, match=msg):
            inp.data_file_sets(info, b, bad)
    bad.write_text("{not json")
    with pytest.raises(inp.WorkloadError, match="--input-data"):
        inp.data_file_sets(info, b, bad)


def test_text_file_gives_one_set_per_line(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("the first sentence\n\nsecond one, with ünïcode\n")
    info = var_info(8)
    b = inp.Batching.decide(info, 2, {})
    sets = inp.text_sets(info, b, f)
    assert len(sets) == 2
    x0, s0 = sets[0]
    x1, s1 = sets[1]
    assert x0 is x1  # the non-text inputs are generated once
    assert s0.shape == [2, 1] and s0.array.reshape(-1).tolist() == [b"the first sentence"] * 2
    line = "second one, with ünïcode".encode()
    assert s1.raw == (struct.pack("<I", len(line)) + line) * 2
    with pytest.raises(inp.WorkloadError, match="no BYTES input"):
        inp.text_sets(add_sub_info(), inp.Batching.decide(add_sub_info(), None, {}), f)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(inp.WorkloadError, match="no non-empty lines"):
        inp.text_sets(info, b, tmp_path / "empty.txt")


# ------------------------------------------------------------------ wire pieces


def _split_body(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    n = int(headers.get("Inference-Header-Content-Length", len(body)))
    return orjson.loads(body[:n]), body[n:]


def test_infer_bodies() -> None:
    info = add_sub_info()
    [tensors] = inp.random_sets(info, inp.Batching.decide(info, 2, {}))
    body, headers = infer_body(tensors, None, binary=True)
    doc, blob = _split_body(body, headers)
    assert headers["Content-Type"] == "application/octet-stream"
    assert doc["parameters"] == {"binary_data_output": True}
    assert [i["parameters"]["binary_data_size"] for i in doc["inputs"]] == [128, 128]
    assert blob == tensors[0].raw + tensors[1].raw
    body, headers = infer_body(tensors, None, binary=False)
    doc, blob = _split_body(body, headers)
    assert blob == b"" and doc["inputs"][0]["data"] == tensors[0].array.reshape(-1).tolist()
    shm = ShmPlacement(
        [ShmRef("INPUT0", "in", 0, 128), ShmRef("INPUT1", "in", 128, 128)],
        [ShmRef("OUTPUT0", "out", 0, 128)],
    )
    doc = orjson.loads(infer_body(tensors, shm, binary=True)[0])
    assert doc["inputs"][1]["parameters"] == {
        "shared_memory_region": "in", "shared_memory_offset": 128, "shared_memory_byte_size": 128}
    assert doc["outputs"][0]["parameters"]["shared_memory_region"] == "out"
    assert "data" not in doc["inputs"][0]


def test_parse_url() -> None:
    assert parse_url(None, "grpc") == ("localhost", 8001)
    assert parse_url("http://h:9000/", "http") == ("h", 9000)
    assert parse_url("h", "http") == ("h", 8000)
    assert parse_url("[::1]:8001", "grpc") == ("::1", 8001)


def test_server_counters_and_split() -> None:
    doc = MODELS and {"model_stats": [{
        "name": "m", "version": "1", "inference_count": 40, "execution_count": 10,
        "inference_stats": {"success": {"count": 20, "ns": 1}, "fail": {"count": 1, "ns": 0},
                            "queue": {"count": 20, "ns": 2_000_000},
                            "compute_input": {"count": 20, "ns": 400_000},
                            "compute_infer": {"count": 20, "ns": 8_000_000},
                            "compute_output": {"count": 20, "ns": 200_000}}}]}
    after = ServerCounters.from_json(doc)
    assert after is not None and ServerCounters.from_json(doc, "2") == ServerCounters()
    split = ServerSplit.between(ServerCounters(), after)
    assert split is not None
    assert (split.queue_us, split.compute_infer_us, split.batch_size) == (100.0, 400.0, 4.0)
    assert ServerSplit.between(after, after) is None  # nothing served in the step
    assert ServerCounters.from_json({"error": "x"}) is None


def test_dechunk() -> None:
    buf = bytearray(b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\nNEXT")
    assert _dechunk(buf, 0) == (b"Wikipedia", len(buf) - 4)
    assert _dechunk(bytearray(b"4\r\nWi"), 0) is None


async def test_http_client_reads_chunked_and_reconnects_after_close() -> None:
    """Against a raw socket server: a chunked response with Connection: close, then a second
    request on a fresh connection, then a request the server drops."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n")[0])
        if b"/drop" in head:
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = HttpConnection("127.0.0.1", port)
    req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    assert (await conn.send(req)).body == b"abcde"
    assert (await conn.send(req)).status == 200
    err = await conn.infer(b"GET /drop HTTP/1.1\r\nHost: x\r\n\r\n")
    assert err is not None and "ConnectionError" in err
    assert len(seen) == 3
    conn.close()
    server.close()
    await server.wait_closed()


# ------------------------------------------------------------------ whole runs, stub server


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(grpc=True) as s:
        yield s


def test_sweep_writes_table_and_files(stub: StubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = {k: tmp_path / f"r.{k}" for k in ("csv", "json", "png")}
    rc = cli_main(["bench", "add_sub", "-u", f"127.0.0.1:{stub.http_port}", "--concurrency", "1,4",
                   "--warmup", "0.2", "--duration", "1", "--csv", str(out["csv"]),
                   "--json", str(out["json"]), "--plot", str(out["png"])])
    assert rc == 0
    assert all(p.stat().st_size > 0 for p in out.values())
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = orjson.loads(out["json"].read_bytes())
    assert doc["protocol"] == "http" and doc["tensor_format"] == "binary"
    steps = doc["steps"]
    assert [s["value"] for s in steps] == [1, 4]
    for s in steps:
        assert s["throughput"] > 0 and s["requests"] > 0 and s["errors"] == 0
        assert s["p50_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert s["client_cpu_us_per_request"] > 0
        # the stub's statistics: 1 µs queue, 2 µs input, 3 µs output per request, batch 1
        assert s["server_queue_us"] == 1.0 and s["server_compute_output_us"] == 3.0
        assert s["server_batch_size"] == 1.0
    assert "binary" in stub.core.seen_formats
    rows = out["csv"].read_text().splitlines()
    assert rows[0].startswith("mode,value,") and len(rows) == 3
    text = capsys.readouterr().out
    assert "infer/s" in text and "c=4" in text and "µs CPU per request" in text


def test_errors_are_counted_and_exit_1(stub: StubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stub.core.fail_every = 3
    rc = cmd_bench(["add_sub", "-u", f"127.0.0.1:{stub.http_port}", "--json", str(tmp_path / "r.json"), *FAST])
    assert rc == 1
    [step] = orjson.loads((tmp_path / "r.json").read_bytes())["steps"]
    assert step["errors"] > 0 and step["requests"] > 0
    # every third request fails; one at a time, so only the window's two edges may shift it
    assert abs(step["errors"] - (step["errors"] + step["requests"]) / 3) <= 2
    assert list(step["error_messages"]) == ["HTTP 400: stub: request rejected on purpose"]
    assert "request rejected on purpose" in capsys.readouterr().out


def test_open_loop_issues_about_the_asked_rate(stub: StubServer, tmp_path: Path) -> None:
    rc = cmd_bench(["add_sub", "-u", f"127.0.0.1:{stub.http_port}", "--request-rate", "200",
                    "--warmup", "0.2", "--duration", "1.5", "-q", "--json", str(tmp_path / "r.json")])
    assert rc == 0
    [step] = orjson.loads((tmp_path / "r.json").read_bytes())["steps"]
    assert step["mode"] == "rate"
    assert 100 < step["offered_rate"] < 400
    assert 100 < step["throughput"] < 400


@pytest.mark.parametrize(("client", "batch"), [("native", 4), ("grpcio", 4)])
def test_grpc_sweep_with_statistics(stub: StubServer, tmp_path: Path, client: str, batch: int) -> None:
    """Both gRPC clients against grpcio's own server."""
    rc = cmd_bench(["add_sub", "-i", "grpc", "-u", f"127.0.0.1:{stub.grpc_port}", "--concurrency", "1,2",
                    "-b", str(batch), "--grpc-client", client, "--json", str(tmp_path / "r.json"),
                    *FAST])
    assert rc == 0
    doc = orjson.loads((tmp_path / "r.json").read_bytes())
    assert doc["tensor_format"] == "raw" and doc["batch_size"] == batch
    for s in doc["steps"]:
        assert s["throughput"] > 0 and s["errors"] == 0 and s["server_batch_size"] == batch
        assert s["server_compute_input_us"] == 2.0
    assert stub.core.seen_formats == {"grpc"}


def test_json_tensors_and_no_statistics(stub: StubServer, tmp_path: Path) -> None:
    stub.core.stats = False
    rc = cmd_bench(["add_sub", "-u", f"127.0.0.1:{stub.http_port}", "--json-tensors",
                    "--json", str(tmp_path / "r.json"), *FAST])
    assert rc == 0
    assert stub.core.seen_formats == {"json"}
    [step] = orjson.loads((tmp_path / "r.json").read_bytes())["steps"]
    assert step["throughput"] > 0 and step["server_queue_us"] is None


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory(stub: StubServer, protocol: str) -> None:
    port = stub.http_port if protocol == "http" else stub.grpc_port
    rc = cmd_bench(["add_sub", "-i", protocol, "-u", f"127.0.0.1:{port}", "--shared-memory", "system", *FAST])
    assert rc == 0
    assert stub.core.seen_formats == {"shm"}
    assert stub.core.regions == {}  # unregistered at the end
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"torchtide_bench_{os.getpid()}")]


def test_shared_memory_refused_by_the_server(stub: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    stub.core.allow_shm = False
    rc = cmd_bench(["add_sub", "-u", f"127.0.0.1:{stub.http_port}", "--shared-memory", "system", *FAST])
    assert rc == 2
    assert "HTTP 403: client shared memory is disabled" in capsys.readouterr().err
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"torchtide_bench_{os.getpid()}")]


def test_text_file_and_data_file_runs(stub: StubServer, tmp_path: Path) -> None:
    text = tmp_path / "s.txt"
    text.write_text("a short sentence\nanother, longer sentence for the model\n")
    assert cmd_bench(["text", "-u", f"127.0.0.1:{stub.http_port}", "--text-file", str(text), *FAST]) == 0
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"data": [{"INPUT0": [1] * 16, "INPUT1": [2] * 16}]}))
    assert cmd_bench(["add_sub", "-u", f"127.0.0.1:{stub.http_port}", "--input-data", str(data),
                      "--json-tensors", *FAST]) == 0


def test_usage_errors_and_unreachable(stub: StubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"127.0.0.1:{stub.http_port}"
    assert cmd_bench(["--help"]) == 0
    assert "--request-rate" in capsys.readouterr().out
    for argv in (
        [],
        ["add_sub", "--concurrency", "0"],
        ["add_sub", "--concurrency", "1.5"],
        ["add_sub", "--concurrency", "1", "--request-rate", "5"],
        ["add_sub", "-i", "grpc", "--json-tensors"],
        ["add_sub", "--input-data", str(tmp_path / "missing.json")],
        ["add_sub", "-u", "host:notaport"],
        ["add_sub", "-u", url, "-b", "100", *FAST],
        ["add_sub", "-u", url, "--text-file", __file__, *FAST],
    ):
        assert cmd_bench(argv) == 2, argv
    capsys.readouterr()
    assert cmd_bench(["nosuch", "-u", url, *FAST]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    from tests.conftest import free_port

    dead = free_port()
    assert cmd_bench(["add_sub", "-u", f"127.0.0.1:{dead}", *FAST]) == 2
    assert "cannot reach the HTTP server" in capsys.readouterr().err
    assert cmd_bench(["add_sub", "-i", "grpc", "-u", f"127.0.0.1:{dead}", "--timeout", "2", *FAST]) == 2
    assert "cannot reach the gRPC server" in capsys.readouterr().err


# ------------------------------------------------------------------ the real server


@pytest.mark.skipif(
    importlib.util.find_spec("torchtide.frontends.http") is None,
    reason="the HTTP front-end is not in this checkout",
)
def test_against_the_served_app(tmp_path: Path) -> None:
    from tests.conftest import start_app
    from tests.models import write_add_sub

    write_add_sub(tmp_path / "repo")
    grpc = importlib.util.find_spec("torchtide.frontends.grpc") is not None
    app = start_app(tmp_path / "repo", grpc=grpc, allow_client_shm=True)
    try:
        url = f"127.0.0.1:{app.app.port('http')}"
        rc = cmd_bench(["add_sub", "-u", url, "--concurrency", "1,8", "--json", str(tmp_path / "r.json"), *FAST])
        assert rc == 0
        steps = orjson.loads((tmp_path / "r.json").read_bytes())["steps"]
        assert all(s["throughput"] > 0 and s["errors"] == 0 for s in steps)
        assert all(s["server_batch_size"] is not None and s["server_batch_size"] >= 1 for s in steps)
        assert cmd_bench(["add_sub", "-u", url, "--shared-memory", "system", *FAST]) == 0
        if grpc:
            gurl = f"127.0.0.1:{app.app.port('grpc')}"
            assert cmd_bench(["add_sub", "-i", "grpc", "-u", gurl, "--concurrency", "4", *FAST]) == 0
    finally:
        app.stop()
    assert not math.isnan(steps[0]["p50_ms"])


def _window_server(sock: socket.socket, got: list[tuple[int, bool]]) -> None:
    """A scripted HTTP/2 server on a plain socket granting a 100-byte stream window; it records
    each DATA frame (length, whether it came after its WINDOW_UPDATE) and echoes the message."""
    from torchtide.frontends.grpc import http2 as h2

    conn, _ = sock.accept()
    with conn:
        stream = conn.makefile("rb")
        stream.read(len(h2.PREFACE))
        conn.sendall(h2.settings_frame({h2.SETTINGS_INITIAL_WINDOW_SIZE: 100}))
        body, updated, ended, sid = b"", False, False, 0
        while not ended:
            head, flags, sid = h2.FRAME_HEADER.unpack(stream.read(9))
            payload = stream.read(head >> 8)
            if head & 0xFF != h2.DATA:
                continue
            got.append((len(payload), updated))
            body += payload
            ended = bool(flags & h2.END_STREAM)
            if len(body) == 100 and not updated:
                time.sleep(0.2)  # were the window not respected, more would come now
                updated = True
                conn.sendall(h2.window_update(sid, 1 << 20))
        conn.sendall(
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, h2.RESPONSE_HEADERS)
            + h2.frame(h2.DATA, 0, sid, body)
            + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, sid, h2.TRAILERS_OK)
        )
        stream.read()  # until the client closes


async def test_native_grpc_client_honours_the_servers_windows() -> None:
    """The client sends the window's 100 bytes, stops, and sends the rest only after the
    server's WINDOW_UPDATE."""
    from torchtide.bench.h2client import H2GrpcClient

    got: list[tuple[int, bool]] = []
    sock = socket.create_server(("127.0.0.1", 0))
    server = threading.Thread(target=_window_server, args=(sock, got), daemon=True)
    server.start()
    client = await H2GrpcClient.connect("127.0.0.1", sock.getsockname()[1])
    try:
        # until the server's SETTINGS (a 100-byte window) has arrived
        deadline = asyncio.get_running_loop().time() + 60
        while client.peer_initial_window != 100:
            assert asyncio.get_running_loop().time() < deadline, "no SETTINGS from the server"
            await asyncio.sleep(0.01)
        result = await asyncio.wait_for(client.unary("/x.Y/Z", b"m" * 1000), 10)
    finally:
        client.close()
    await asyncio.to_thread(server.join, 10)
    sock.close()
    assert result == (0, "")
    sizes = [n for n, _ in got]
    after_update = [after for _, after in got]
    assert sum(sizes) == 1005  # the 5-byte prefix and the message
    assert sizes[0] == 100 and not after_update[0]  # the window's worth, then a stop
    assert all(after_update[1:])  # nothing past the window before the update
