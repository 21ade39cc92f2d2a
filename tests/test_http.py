"""The HTTP front-end, driven by the real tritonclient.http (+ aio) and by raw HTTP."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.conftest import start_app
from tests.http_util import (
    add_sub_inputs,
    binary_body,
    http_code,
    raw_exchange,
    request,
    serialize_bytes,
    split_binary,
)
from tests.models import IDENTITY_TYPES, write_add_sub, write_identity, write_model
from tests.wire_vectors import VECTORS
from torchtide.app import AppThread
from torchtide.logsettings import LogSettings

# ------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def app(standard_repo: Path) -> Iterator[AppThread]:
    """The standard repository over HTTP only (no dependency on the gRPC front-end)."""
    a = start_app(standard_repo, grpc=False, allow_client_shm=True)
    yield a
    a.stop()


@pytest.fixture(scope="module")
def port(app: AppThread) -> int:
    return app.app.port("http")


@pytest.fixture(scope="module")
def client(port: int) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    yield c
    c.close()


def assert_live(port: int) -> None:
    assert request(port, "GET", "/v2/health/live").status == 200


def infer_add_sub(client: httpclient.InferenceServerClient, rows: int = 1, **kw: Any) -> Any:
    data = add_sub_inputs(rows)
    inputs = []
    for name, arr in data.items():
        i = httpclient.InferInput(name, list(arr.shape), "INT32")
        i.set_data_from_numpy(arr, binary_data=kw.pop(f"binary_{name}", True))
        inputs.append(i)
    return client.infer("add_sub", inputs, **kw), data


# ------------------------------------------------------------ health, metadata


def test_health_and_server_metadata(port: int, client: httpclient.InferenceServerClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):
        r = request(port, "GET", path)
        assert (r.status, r.body, r.headers["content-type"]) == (200, b"", "text/plain")
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "triton" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_ready_config(port: int, client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("add_sub")
    assert meta["versions"] == ["1"] and meta["platform"] == "python"
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    assert client.get_model_metadata("add_sub", "1")["versions"] == ["1"]
    assert client.is_model_ready("add_sub") and client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("add_sub", "2")
    r = request(port, "GET", "/v2/models/nope/ready")
    assert (r.status, r.error) == (400, "Model version not ready")
    cfg = client.get_model_config("add_sub")
    assert cfg["name"] == "add_sub" and cfg["max_batch_size"] == 64
    assert cfg["input"][0]["data_type"] == "TYPE_INT32"
    assert request(port, "GET", "/v2/models/add_sub/versions/1/config").json() == cfg
    r = request(port, "GET", "/v2/models/nope")
    assert (r.status, r.error) == (404, "Request for unknown model: 'nope' is not found")
    r = request(port, "GET", "/v2/models/add_sub/versions/3")
    assert r.status == 404 and "version 3 is not found" in r.error


def test_unknown_route_and_wrong_method(port: int) -> None:
    for path in ("/v2/nope", "/v2/models/add_sub/versions/abc/ready", "/", "/v2/models/a/generate"):
        r = request(port, "GET", path)
        assert (r.status, r.json()) == (404, {"error": "Not Found"}), path
    for method, path in (
        ("GET", "/v2/models/add_sub/infer"),
        ("POST", "/v2/health/live"),
        ("DELETE", "/v2"),
        ("GET", "/v2/repository/index"),
    ):
        r = request(port, method, path)
        assert (r.status, r.json()) == (405, {"error": "Method Not Allowed"}), path


# ------------------------------------------------------------ inference


def test_infer_binary_and_json(client: httpclient.InferenceServerClient) -> None:
    result, data = infer_add_sub(client, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data["INPUT0"] + 1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), data["INPUT0"] - 1)
    resp = result.get_response()
    assert resp["id"] == "req-7" and resp["model_version"] == "1"
    # JSON inputs, one output requested as JSON: the response is plain JSON.
    result, data = infer_add_sub(
        client,
        binary_INPUT0=False,
        binary_INPUT1=False,
        outputs=[httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)],
    )
    resp = result.get_response()
    assert [o["name"] for o in resp["outputs"]] == ["OUTPUT1"] and "id" not in resp
    assert resp["outputs"][0]["data"] == (data["INPUT0"] - 1).reshape(-1).tolist()


def test_infer_curl_style_json(port: int) -> None:
    doc = {
        "inputs": [
            {
                "name": "INPUT0",
                "datatype": "INT32",
                "shape": [2, 16],
                "data": [list(range(16)), list(range(16))],
            },  # nested
            {"name": "INPUT1", "datatype": "INT32", "shape": [2, 16], "data": [1] * 32},  # flat
        ],
        "parameters": {"custom": "x", "n": 3},
    }
    r = request(port, "POST", "/v2/models/add_sub/infer", doc)
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    out = r.json()
    assert "id" not in out and out["model_name"] == "add_sub" and out["model_version"] == "1"
    assert out["outputs"][0] == {
        "name": "OUTPUT0",
        "datatype": "INT32",
        "shape": [2, 16],
        "data": [i + 1 for i in range(16)] * 2,
    }
    r = request(port, "POST", "/v2/models/add_sub/versions/1/infer", {**doc, "id": "abc"})
    assert r.json()["id"] == "abc"


def test_infer_batch(client: httpclient.InferenceServerClient) -> None:
    result, data = infer_add_sub(client, rows=5)
    assert result.as_numpy("OUTPUT0").shape == (5, 16)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data["INPUT0"] + 1)


def _identity_values(t: str, binary: bool) -> np.ndarray[Any, Any]:
    if t == "BYTES":
        vals = [b"", "h\u00e9llo \u2713".encode(), b"plain", b"x" * 300]
        if binary:
            vals[2] = b"\xff\xfe\x00abc"  # not UTF-8
        return np.array(vals[:4] + vals[:2], dtype=np.object_).reshape(2, 3)
    if t == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if t == "BF16":
        return np.array([[1.5, -2.0, 3.25], [0.0, 1e30, -7.0]], dtype=ml_dtypes.bfloat16)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(t)
    if dtype is not None:
        return np.array([[1.5, -2.25, 3.0], [0.0, 65504.0, -1e-3]], dtype=dtype)
    np_dtype = np.dtype(t.lower())
    info = np.iinfo(np_dtype)
    return np.array([[info.min, info.max, 0], [1, 2, 3]], dtype=np_dtype)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("t", IDENTITY_TYPES)
def test_identity_every_datatype(
    client: httpclient.InferenceServerClient, t: str, binary: bool
) -> None:
    if t == "BF16" and not binary:
        pytest.skip("tritonclient refuses BF16 as JSON; covered by test_bf16_json_raw")
    arr = _identity_values(t, binary)
    inp = httpclient.InferInput(f"IN_{t}", list(arr.shape), t)
    inp.set_data_from_numpy(arr, binary_data=binary)
    out = httpclient.InferRequestedOutput(f"OUT_{t}", binary_data=binary)
    result = client.infer("identity", [inp], outputs=[out])
    got = result.as_numpy(f"OUT_{t}")
    assert got.shape == arr.shape
    if t == "BYTES" and not binary:
        got = np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(got)
    np.testing.assert_array_equal(got, arr)
    has_binary = "binary_data_size" in str(result.get_response())
    assert has_binary == binary


def test_bf16_json_raw(port: int) -> None:
    doc = {
        "inputs": [
            {"name": "IN_BF16", "datatype": "BF16", "shape": [1, 3], "data": [1.5, -2.0, 0.1]}
        ],
        "outputs": [{"name": "OUT_BF16"}],
    }
    r = request(port, "POST", "/v2/models/identity/infer", doc)
    assert r.status == 200, r.body
    out = r.json()["outputs"][0]
    assert out["datatype"] == "BF16" and out["shape"] == [1, 3]
    np.testing.assert_allclose(out["data"], [1.5, -2.0, 0.1], rtol=1e-2)
    # The binary form carries the raw bits.
    body, headers = binary_body(
        {
            "inputs": [
                {
                    "name": "IN_BF16",
                    "datatype": "BF16",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": 4},
                }
            ],
            "outputs": [{"name": "OUT_BF16", "parameters": {"binary_data": True}}],
        },
        np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16).tobytes(),
    )
    _, blobs = split_binary(request(port, "POST", "/v2/models/identity/infer", body, headers))
    assert np.frombuffer(blobs["OUT_BF16"], ml_dtypes.bfloat16).tolist() == [1.5, -2.0]


def test_non_utf8_bytes_requested_as_json_come_back_binary(
    client: httpclient.InferenceServerClient,
) -> None:
    arr = np.array([[b"\xff\xfe\x00abc", "\u00e9".encode()]], dtype=np.object_)
    inp = httpclient.InferInput("IN_BYTES", [1, 2], "BYTES")
    inp.set_data_from_numpy(arr)
    result = client.infer(
        "identity", [inp], outputs=[httpclient.InferRequestedOutput("OUT_BYTES", binary_data=False)]
    )
    np.testing.assert_array_equal(result.as_numpy("OUT_BYTES"), arr)


def test_raw_binary_request(port: int) -> None:
    x = np.arange(4, dtype=np.float32)
    r = request(
        port,
        "POST",
        "/v2/models/linear/infer",
        x.tobytes(),
        {"Inference-Header-Content-Length": "0"},
    )
    assert r.status == 200, r.body
    doc, blobs = split_binary(r)
    assert doc["outputs"][0]["shape"] == [1, 2]
    assert np.frombuffer(blobs["OUTPUT__0"], np.float32).shape == (2,)
    r = request(
        port,
        "POST",
        "/v2/models/identity/infer",
        b"\0" * 4,
        {"Inference-Header-Content-Length": "0"},
    )
    assert r.status == 400 and "exactly one input" in r.error


def test_classification(client: httpclient.InferenceServerClient) -> None:
    x = np.array([[1, 2, 3, 4], [-1, 0, 5, 2]], dtype=np.float32)
    inp = httpclient.InferInput("INPUT__0", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    raw = client.infer("linear", [inp]).as_numpy("OUTPUT__0")
    result = client.infer(
        "linear", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT__0", class_count=1)]
    )
    cls = result.as_numpy("OUTPUT__0")
    assert cls.shape == (2, 1)
    for row, entry in zip(raw, cls[:, 0], strict=True):
        value, index = entry.decode().split(":")[:2]
        assert int(index) == int(np.argmax(row)) and float(value) == pytest.approx(row.max(), 1e-5)


async def test_200_concurrent_requests_aio(port: int) -> None:
    async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as c:

        async def one(i: int) -> None:
            a = np.full((1, 16), i, dtype=np.int32)
            ins = [
                aioclient.InferInput("INPUT0", [1, 16], "INT32"),
                aioclient.InferInput("INPUT1", [1, 16], "INT32"),
            ]
            ins[0].set_data_from_numpy(a)
            ins[1].set_data_from_numpy(a)
            r = await c.infer("add_sub", ins, request_id=str(i))
            assert r.get_response()["id"] == str(i)
            np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a * 2)
            np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a * 0)

        await asyncio.gather(*(one(i) for i in range(200)))


def test_compression(port: int, client: httpclient.InferenceServerClient) -> None:
    for algo in ("gzip", "deflate"):
        result, data = infer_add_sub(
            client, request_compression_algorithm=algo, response_compression_algorithm=algo
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data["INPUT0"] + 1)
    # A large response is compressed when the client accepts it.
    x = np.arange(2000, dtype=np.float32).reshape(1, 2000)
    doc = {
        "inputs": [
            {
                "name": "IN_FP32",
                "datatype": "FP32",
                "shape": [1, 2000],
                "data": x.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "OUT_FP32"}],
    }
    for enc, decompress in (("gzip", gzip.decompress), ("deflate", zlib.decompress)):
        body = (
            gzip.compress(json.dumps(doc).encode())
            if enc == "gzip"
            else zlib.compress(json.dumps(doc).encode())
        )
        r = request(
            port,
            "POST",
            "/v2/models/identity/infer",
            body,
            {"Content-Encoding": enc, "Accept-Encoding": enc},
        )
        assert r.status == 200 and r.headers["content-encoding"] == enc
        out = json.loads(decompress(r.body))["outputs"][0]
        assert out["data"] == x.reshape(-1).tolist()
    big = json.dumps(doc).encode()
    r = request(port, "POST", "/v2/models/identity/infer", big, {"Accept-Encoding": "gzip;q=0"})
    assert r.status == 200 and "content-encoding" not in r.headers
    r = request(
        port, "POST", "/v2/models/identity/infer", b"not gzip", {"Content-Encoding": "gzip"}
    )
    assert r.status == 400 and "gzip" in r.error


BIG = 1200  # past the old 1 KiB compression threshold
LONG_ADD_SUB = "add_sub_" + "s" * 200


@pytest.fixture
def big_app(tmp_path: Path) -> Iterator[AppThread]:
    """Explicit mode, a long server name and many long model names: every non-infer route can
    answer with a body of more than 1 KiB."""
    write_add_sub(tmp_path)
    write_add_sub(tmp_path, LONG_ADD_SUB)
    write_identity(tmp_path)
    for k in range(8):
        (tmp_path / f"unloaded_{k}_{'x' * 200}").mkdir()
    a = start_app(
        tmp_path,
        grpc=False,
        allow_client_shm=True,
        control_mode="explicit",
        startup_models=["add_sub", "identity", LONG_ADD_SUB],
        server_name="triton-" + "n" * BIG,
    )
    a.app.server.log_settings = LogSettings(
        logging.getLogger("tests.big_app"), file="/tmp/" + "l" * BIG
    )
    yield a
    a.stop()


async def test_aio_client_reads_every_non_infer_route(big_app: AppThread) -> None:
    """aiohttp always sends Accept-Encoding: gzip, deflate and tritonclient's aio session does
    not decompress; Triton compresses only successful infer replies, so must we."""
    port = big_app.app.port("http")
    key = f"/tt_aio_{port}"
    handle = shm.create_shared_memory_region("r", key, 64)
    async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as c:
        try:
            assert await c.is_server_live() and await c.is_server_ready()
            meta = await c.get_server_metadata()
            assert meta["name"] == "triton-" + "n" * BIG
            assert len((await c.get_model_metadata("identity"))["inputs"]) == len(IDENTITY_TYPES)
            assert await c.is_model_ready("identity")
            assert (await c.get_model_config("identity"))["name"] == "identity"
            assert (await c.get_model_config("identity", "1"))["name"] == "identity"
            stats = await c.get_inference_statistics()
            assert len(stats["model_stats"]) == 3 and len(json.dumps(stats)) > BIG
            assert (await c.get_inference_statistics("identity"))["model_stats"]
            index = await c.get_model_repository_index()
            assert len(index) == 11 and len(json.dumps(index)) > BIG
            assert (await c.get_log_settings())["log_file"].endswith("l" * BIG)
            assert (await c.update_log_settings({"log_info": True}))["log_info"] is True
            for k in range(12):
                await c.register_system_shared_memory(f"region_{k}_{'r' * 100}", key, 64)
            status = await c.get_system_shared_memory_status()
            assert len(status) == 12 and len(json.dumps(status)) > BIG
            assert await c.get_cuda_shared_memory_status() == []
            await c.unregister_cuda_shared_memory()
            await c.unregister_system_shared_memory()
            await c.load_model("add_sub")
            await c.unload_model("add_sub")
            # Error replies are never compressed either (Triton sends them as they are).
            # (model names are bounded at 255 bytes; a long input name makes a long error)
            unknown = "m" * 255
            with pytest.raises(InferenceServerException, match="Request for unknown model"):
                await c.get_model_metadata(unknown)
            with pytest.raises(InferenceServerException, match="Request for unknown model"):
                await c.get_model_config(unknown)
            x = np.arange(2000, dtype=np.float32).reshape(1, 2000)
            long_input = aioclient.InferInput("n" * BIG, [1, 2000], "FP32")
            long_input.set_data_from_numpy(x)
            with pytest.raises(InferenceServerException, match="unexpected inference input"):
                await c.infer("identity", [long_input])
            i = aioclient.InferInput("IN_FP32", [1, 2000], "FP32")
            i.set_data_from_numpy(x)
            # The infer reply itself is compressed when asked, and read by the client.
            out = [aioclient.InferRequestedOutput("OUT_FP32")]
            r = await c.infer("identity", [i], outputs=out, response_compression_algorithm="gzip")
            np.testing.assert_array_equal(r.as_numpy("OUT_FP32"), x)
        finally:
            shm.destroy_shared_memory_region(handle)
    for path in ("/v2", "/v2/models/identity", "/v2/models/identity/config"):
        r = request(port, "GET", path, headers={"Accept-Encoding": "gzip, deflate"})
        assert r.status == 200 and len(r.body) > BIG and "content-encoding" not in r.headers


def test_infer_reply_encoding_follows_triton(port: int) -> None:
    """Triton picks the accepted gzip / deflate / identity with the highest q (the first on a
    tie); anything else, or no header, gets the reply as it is."""
    x = np.arange(2000, dtype=np.float32)
    doc = {
        "inputs": [{"name": "IN_FP32", "datatype": "FP32", "shape": [1, 2000], "data": x.tolist()}],
        "outputs": [{"name": "OUT_FP32"}],
    }
    for accept, expected in (
        ("gzip, deflate", "gzip"),
        ("deflate, gzip", "deflate"),
        ("gzip;q=0.5, deflate", "deflate"),
        ("gzip; q=0.9, deflate;q=0.8", "gzip"),
        ("identity, gzip", None),
        ("identity;q=0.1, gzip", "gzip"),
        ("br, *", None),
        ("gzip;q=0, deflate;q=0", None),
        ("gzip;q=abc", None),
    ):
        r = request(port, "POST", "/v2/models/identity/infer", doc, {"Accept-Encoding": accept})
        assert r.status == 200 and r.headers.get("content-encoding") == expected, accept
        body = {"gzip": gzip.decompress, "deflate": zlib.decompress, None: bytes}[expected](r.body)
        assert json.loads(body)["outputs"][0]["data"] == x.tolist()


# ------------------------------------------------------------ errors


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_wire_vectors(port: int, client: httpclient.InferenceServerClient, v: Any) -> None:
    for binary in (True, False):
        inputs = []
        for name, (dt, arr) in v.inputs.items():
            i = httpclient.InferInput(name, list(arr.shape), dt)
            i.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(i)
        outputs = [httpclient.InferRequestedOutput(o) for o in v.outputs] if v.outputs else None
        with pytest.raises(InferenceServerException) as ei:
            client.infer(
                v.model,
                inputs,
                model_version=v.version,
                outputs=outputs,
                parameters=v.parameters or None,
            )
        assert ei.value.status() == str(http_code(v.status))
        assert v.message in ei.value.message()
        assert_live(port)


_I16 = {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16]}
_I16B = {**_I16, "parameters": {"binary_data_size": 64}}
_IN1 = {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}
_B64 = bytes(64)


def _bin(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    return binary_body(header, *blobs)


MALFORMED: list[tuple[str, str, bytes, dict[str, str], str]] = [
    ("not-json", "add_sub", b"{nope", {}, "failed to parse the request JSON"),
    ("json-not-object", "add_sub", b"[1, 2]", {}, "must be an object"),
    ("no-inputs", "add_sub", b"{}", {}, "has no 'inputs' array"),
    (
        "id-not-string",
        "add_sub",
        json.dumps({"id": 5, "inputs": []}).encode(),
        {},
        "'id' must be a string",
    ),
    (
        "unknown-datatype",
        "add_sub",
        json.dumps({"inputs": [{**_I16, "datatype": "FLOAT", "data": [0] * 16}]}).encode(),
        {},
        "invalid datatype for input INPUT0",
    ),
    (
        "negative-shape",
        "add_sub",
        json.dumps({"inputs": [{**_I16, "shape": [-1, 16], "data": [0] * 16}]}).encode(),
        {},
        "input 'INPUT0': invalid shape [-1, 16]",
    ),
    (
        "shape-not-list",
        "add_sub",
        json.dumps({"inputs": [{**_I16, "shape": "1,16", "data": [0] * 16}]}).encode(),
        {},
        "input 'INPUT0': 'shape' must be a list",
    ),
    (
        "data-count",
        "add_sub",
        json.dumps({"inputs": [{**_I16, "data": [0] * 15}, _IN1]}).encode(),
        {},
        "input 'INPUT0': 'data' holds 15 elements, but shape [1,16] needs 16",
    ),
    (
        "absurd-shape-json",
        "add_sub",
        json.dumps({"inputs": [{**_I16, "shape": [2**40, 2**40], "data": [0] * 16}]}).encode(),
        {},
        "input 'INPUT0': 'data' holds 16 elements",
    ),
    (
        "data-wrong-type",
        "add_sub",
        json.dumps({"inputs": [{**_I16, "data": ["x"] * 16}, _IN1]}).encode(),
        {},
        "input 'INPUT0': INT32 'data' must hold integers",
    ),
    (
        "data-ragged",
        "add_sub",
        json.dumps({"inputs": [{**_I16, "data": [[1, 2], [3]]}, _IN1]}).encode(),
        {},
        "input 'INPUT0': 'data' is not a regular array",
    ),
    (
        "int-out-of-range",
        "identity",
        json.dumps(
            {"inputs": [{"name": "IN_UINT8", "datatype": "UINT8", "shape": [1, 1], "data": [300]}]}
        ).encode(),
        {},
        "out of range for UINT8",
    ),
    (
        "data-and-binary",
        "add_sub",
        _bin({"inputs": [{**_I16B, "data": [0] * 16}, _IN1]}, _B64)[0],
        _bin({"inputs": [{**_I16B, "data": [0] * 16}, _IN1]}, _B64)[1],
        "input 'INPUT0' must set exactly one of",
    ),
    (
        "binary-truncated",
        "add_sub",
        *_bin({"inputs": [_I16B, _IN1]}, bytes(60)),
        "unexpected size for input 'INPUT0', expecting 4 additional bytes",
    ),
    (
        "binary-size-vs-shape",
        "add_sub",
        *_bin({"inputs": [{**_I16, "parameters": {"binary_data_size": 60}}, _IN1]}, bytes(60)),
        "input 'INPUT0' has 60 bytes of data, but shape [1,16] of INT32 needs 64 bytes",
    ),
    (
        "absurd-shape-binary",
        "add_sub",
        *_bin({"inputs": [{**_I16B, "shape": [2**40, 2**40]}, _IN1]}, _B64),
        "input 'INPUT0' has 64 bytes of data, but shape",
    ),
    (
        "binary-trailing",
        "add_sub",
        *_bin({"inputs": [_I16B, _IN1]}, _B64, b"xx"),
        "unexpected additional input data for model 'add_sub': 2 bytes",
    ),
    (
        "header-longer-than-body",
        "add_sub",
        b"{}",
        {"Inference-Header-Content-Length": "99"},
        "Inference-Header-Content-Length 99 is larger than the request body of 2 bytes",
    ),
    (
        "header-not-a-number",
        "add_sub",
        b"{}",
        {"Inference-Header-Content-Length": "x"},
        "Inference-Header-Content-Length must be a non-negative integer",
    ),
    (
        "binary-size-negative",
        "add_sub",
        *_bin({"inputs": [{**_I16, "parameters": {"binary_data_size": -4}}]}),
        "input 'INPUT0': 'binary_data_size' must be a non-negative integer",
    ),
    (
        "bytes-bad-prefix",
        "identity",
        *_bin(
            {
                "inputs": [
                    {
                        "name": "IN_BYTES",
                        "datatype": "BYTES",
                        "shape": [1, 1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\x10\x00\x00\x00abcd",
        ),
        "input 'IN_BYTES': BYTES element 0 declares 16 bytes, but only 4 remain",
    ),
    (
        "bytes-truncated-prefix",
        "identity",
        *_bin(
            {
                "inputs": [
                    {
                        "name": "IN_BYTES",
                        "datatype": "BYTES",
                        "shape": [1, 2],
                        "parameters": {"binary_data_size": 10},
                    }
                ]
            },
            serialize_bytes([b"ab"]) + b"\x01\x00\x00\x00",
        ),
        "input 'IN_BYTES': BYTES element 1 declares 1 bytes, but only 0 remain",
    ),
    (
        "bytes-short-prefix",
        "identity",
        *_bin(
            {
                "inputs": [
                    {
                        "name": "IN_BYTES",
                        "datatype": "BYTES",
                        "shape": [1, 2],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            serialize_bytes([b"ab"]) + b"\x01\x00",
        ),
        "input 'IN_BYTES': BYTES element 1 has a truncated 4-byte length prefix",
    ),
    (
        "bytes-count",
        "identity",
        *_bin(
            {
                "inputs": [
                    {
                        "name": "IN_BYTES",
                        "datatype": "BYTES",
                        "shape": [1, 1],
                        "parameters": {"binary_data_size": 12},
                    }
                ]
            },
            serialize_bytes([b"ab", b"cd"]),
        ),
        "input 'IN_BYTES': the data holds more than the 1 BYTES elements",
    ),
    (
        "bool-byte",
        "identity",
        *_bin(
            {
                "inputs": [
                    {
                        "name": "IN_BOOL",
                        "datatype": "BOOL",
                        "shape": [1, 2],
                        "parameters": {"binary_data_size": 2},
                    }
                ]
            },
            b"\x01\x02",
        ),
        "input 'IN_BOOL': BOOL elements must be bytes 0 or 1",
    ),
    (
        "reserved-parameter",
        "add_sub",
        json.dumps({"inputs": [], "parameters": {"triton_x": 1}}).encode(),
        {},
        "parameter keys starting with 'triton_' are reserved",
    ),
    (
        "output-not-object",
        "add_sub",
        json.dumps({"inputs": [{**_I16, "data": [0] * 16}, _IN1], "outputs": ["OUTPUT0"]}).encode(),
        {},
        "outputs[0] must be an object",
    ),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_bodies(port: int, case: tuple[str, str, bytes, dict[str, str], str]) -> None:
    _, model, body, headers, message = case
    r = request(port, "POST", f"/v2/models/{model}/infer", body, headers)
    assert r.status == 400, r.body
    assert message in r.error
    assert_live(port)


def test_model_error_and_unknown_model_codes(port: int) -> None:
    r = request(port, "POST", "/v2/models/nope/infer", {"inputs": []})
    assert (r.status, r.error) == (404, "Request for unknown model: 'nope' is not found")


PARAMS_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", np.array([r.parameters().encode()], dtype=np.object_))]) for r in requests]
"""


def test_request_parameters_reach_the_model(tmp_path: Path) -> None:
    config = """
    backend: "python"
    max_batch_size: 0
    input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
    output [{ name: "OUT" data_type: TYPE_STRING dims: [1] }]
    """
    write_model(tmp_path, "params", config, {"1/model.py": PARAMS_PY})
    app = start_app(tmp_path, grpc=False)
    try:
        doc = {
            "inputs": [{"name": "IN", "datatype": "FP32", "shape": [1], "data": [1]}],
            "parameters": {"custom": "x", "n": 3, "flag": True, "binary_data_output": False},
        }
        r = request(app.app.port("http"), "POST", "/v2/models/params/infer", doc)
        assert r.status == 200, r.body
        seen = json.loads(r.json()["outputs"][0]["data"][0])
        assert seen == {"custom": "x", "n": 3, "flag": True}  # binary_data_output is ours
        doc["parameters"] = {"nested": {"no": 1}}
        r = request(app.app.port("http"), "POST", "/v2/models/params/infer", doc)
        assert r.status == 400 and "request parameter 'nested'" in r.error
    finally:
        app.stop()


# ------------------------------------------------------------ statistics


def test_statistics(port: int, client: httpclient.InferenceServerClient) -> None:
    infer_add_sub(client, rows=4)
    every = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} >= {"add_sub", "identity", "linear"}
    one = client.get_inference_statistics("add_sub")["model_stats"]
    assert len(one) == 1 and one[0]["inference_count"] >= 4
    assert 4 in {b["batch_size"] for b in one[0]["batch_stats"]}
    assert (
        request(port, "GET", "/v2/models/add_sub/versions/1/stats").json()["model_stats"][0][
            "version"
        ]
        == "1"
    )
    r = request(port, "GET", "/v2/models/nope/stats")
    assert (r.status, r.error) == (400, "requested model 'nope' is not available")


# ------------------------------------------------------------ logging


def test_logging_settings(port: int, client: httpclient.InferenceServerClient) -> None:
    before = client.get_log_settings()
    assert before["log_verbose_level"] == 0 and before["log_format"] == "default"
    after = client.update_log_settings({"log_verbose_level": 1, "log_info": True})
    assert after["log_verbose_level"] == 1
    assert client.get_log_settings()["log_verbose_level"] == 1
    client.update_log_settings({"log_verbose_level": 0})
    r = request(port, "POST", "/v2/logging", {"log_verbose_level": "loud"})
    assert r.status == 400 and "log_verbose_level" in r.error
    r = request(port, "POST", "/v2/logging", b"{oops")
    assert r.status == 400 and "logging request JSON" in r.error


# ------------------------------------------------------------ shared memory


def test_system_shared_memory(port: int, client: httpclient.InferenceServerClient) -> None:
    data = add_sub_inputs(2)
    nbytes = data["INPUT0"].nbytes
    key = f"/tt_http_{port}"
    h_in = shm.create_shared_memory_region("in", key + "_in", nbytes * 2)
    h_out = shm.create_shared_memory_region("out", key + "_out", nbytes * 2)
    try:
        shm.set_shared_memory_region(h_in, [data["INPUT0"], data["INPUT1"]])
        client.register_system_shared_memory("in", key + "_in", nbytes * 2)
        client.register_system_shared_memory("out", key + "_out", nbytes * 2)
        status = client.get_system_shared_memory_status()
        assert {s["name"] for s in status} == {"in", "out"}
        assert client.get_system_shared_memory_status("in") == [
            {"name": "in", "key": key + "_in", "offset": 0, "byte_size": nbytes * 2}
        ]
        inputs = [httpclient.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_shared_memory("in", nbytes)
        inputs[1].set_shared_memory("in", nbytes, offset=nbytes)
        outputs = [
            httpclient.InferRequestedOutput(n, binary_data=False) for n in ("OUTPUT0", "OUTPUT1")
        ]
        outputs[0].set_shared_memory("out", nbytes)
        outputs[1].set_shared_memory("out", nbytes, offset=nbytes)
        result = client.infer("add_sub", inputs, outputs=outputs)
        for out in result.get_response()["outputs"]:
            assert set(out) == {"name", "datatype", "shape"}
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(h_out, np.int32, [2, 16]), data["INPUT0"] + 1
        )
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(h_out, np.int32, [2, 16], offset=nbytes), data["INPUT0"] - 1
        )
        # Errors keep Triton's codes.
        with pytest.raises(InferenceServerException) as ei:
            client.register_system_shared_memory("in", key + "_in", nbytes)
        assert ei.value.status() == "400" and "already in manager" in ei.value.message()
        r = request(port, "GET", "/v2/systemsharedmemory/region/zz/status")
        assert r.status == 404 and "Unable to find system shared memory region: 'zz'" in r.error
        inputs[0].set_shared_memory("zz", nbytes)
        with pytest.raises(InferenceServerException) as ei:
            client.infer("add_sub", inputs)
        assert ei.value.status() == "404"
        inputs[0].set_shared_memory("in", nbytes)
        outputs[1].set_shared_memory("out", 8, offset=nbytes)  # too small for the result
        with pytest.raises(InferenceServerException) as ei:
            client.infer("add_sub", inputs, outputs=outputs)
        assert ei.value.status() == "500"
        assert f"should be at least {nbytes} bytes" in ei.value.message()
        client.unregister_system_shared_memory("in")
        assert [s["name"] for s in client.get_system_shared_memory_status()] == ["out"]
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status() == []
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def test_cuda_shared_memory_unsupported(
    port: int, client: httpclient.InferenceServerClient
) -> None:
    assert client.get_cuda_shared_memory_status() == []
    r = request(
        port,
        "POST",
        "/v2/cudasharedmemory/region/g/register",
        {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 16},
    )
    assert r.status == 501 and "CUDA shared memory is not supported" in r.error
    assert request(port, "POST", "/v2/cudasharedmemory/unregister").status == 200


def test_client_shm_refused_when_not_allowed(tmp_path: Path) -> None:
    write_add_sub(tmp_path)
    app = start_app(tmp_path, grpc=False, allow_client_shm=False)
    try:
        p = app.app.port("http")
        c = httpclient.InferenceServerClient(f"127.0.0.1:{p}")
        with pytest.raises(InferenceServerException) as ei:
            c.register_system_shared_memory("r", "/whatever", 64)
        assert ei.value.status() == "501" and "--allow-client-shm" in ei.value.message()
        assert c.get_system_shared_memory_status() == []
        doc = {
            "inputs": [
                {
                    **_I16,
                    "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64},
                },
                _IN1,
            ]
        }
        r = request(p, "POST", "/v2/models/add_sub/infer", doc)
        assert r.status == 501 and "--allow-client-shm" in r.error
        r = request(p, "POST", "/v2/cudasharedmemory/region/g/register", {"byte_size": 1})
        assert r.status == 501 and "--allow-client-shm" in r.error
        c.close()
    finally:
        app.stop()


# ------------------------------------------------------------ repository


def test_repository_index_load_unload(tmp_path: Path) -> None:
    write_add_sub(tmp_path)
    write_add_sub(tmp_path, "other")
    app = start_app(tmp_path, grpc=False, control_mode="explicit", startup_models=["add_sub"])
    try:
        p = app.app.port("http")
        c = httpclient.InferenceServerClient(f"127.0.0.1:{p}")
        index = {(e["name"], e.get("state")) for e in c.get_model_repository_index()}
        assert ("add_sub", "READY") in index and ("other", None) in index
        assert [
            e["name"] for e in request(p, "POST", "/v2/repository/index", {"ready": True}).json()
        ] == ["add_sub"]
        c.load_model("other")
        assert c.is_model_ready("other")
        c.unload_model("other")
        assert not c.is_model_ready("other")
        # Load with a config override, then with a file override.
        cfg = c.get_model_config("add_sub")
        cfg["max_batch_size"] = 4
        cfg["dynamic_batching"]["preferred_batch_size"] = [4]
        c.load_model("add_sub", config=json.dumps(cfg))
        assert c.get_model_config("add_sub")["max_batch_size"] == 4
        model_py = (tmp_path / "add_sub" / "1" / "model.py").read_bytes()
        c.load_model(
            "other",
            config=json.dumps({**cfg, "name": "other"}),
            files={"file:1/model.py": model_py},
        )
        assert c.is_model_ready("other")
        with pytest.raises(InferenceServerException) as ei:
            c.load_model("nope")
        assert ei.value.status() == "500"
        r = request(
            p,
            "POST",
            "/v2/repository/models/other/load",
            {"parameters": {"file:1/model.py": "%%%"}},
        )
        assert r.status == 400 and "base64" in r.error
        r = request(p, "POST", "/v2/repository/myrepo/models/other/load")
        assert r.status == 501 and "'repository_name'" in r.error
        r = request(p, "POST", "/v2/repository/models/other/unload", b"{")
        assert r.status == 400
        c.close()
    finally:
        app.stop()


def test_load_refused_in_control_mode_none(port: int) -> None:
    r = request(port, "POST", "/v2/repository/models/add_sub/load")
    assert r.status == 503 and "model-control-mode" in r.error


# ------------------------------------------------------------ HTTP mechanics


def test_keep_alive_and_pipelining(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(3):
        assert request(port, "GET", "/v2/health/ready", conn=conn).status == 200
    conn.close()
    body = json.dumps({"inputs": [{**_I16, "data": list(range(16))}, _IN1], "id": "%d"})
    reqs = (
        b"".join(
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body % i), (body % i).encode())
            for i in range(5)
        )
        + b"GET /v2/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    raw = raw_exchange(port, reqs)
    ids = [
        json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["id"]
        for part in raw.split(b"HTTP/1.1 200 OK")[1:]
    ]
    assert ids == [str(i) for i in range(5)]
    assert raw.rstrip().endswith(b'{"error":"Not Found"}')


def test_chunked_request_body(port: int) -> None:
    body = json.dumps({"inputs": [{**_I16, "data": list(range(16))}, _IN1]}).encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 10]), body[i : i + 10]) for i in range(0, len(body), 10)
    )
    raw = raw_exchange(
        port,
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 200")
    out = json.loads(raw.split(b"\r\n\r\n", 1)[1])["outputs"][0]
    assert out["data"] == list(range(16))  # + INPUT1 zeros


def test_expect_100_continue(port: int) -> None:
    body = json.dumps({"inputs": [{**_I16, "data": list(range(16))}, _IN1]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")


def test_http10_keep_alive(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(2):
            s.sendall(b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            reply = s.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in reply
    raw = raw_exchange(port, b"GET /v2/health/live HTTP/1.0\r\n\r\n")  # read until closed
    assert raw.startswith(b"HTTP/1.1 200") and b"Connection: close" in raw


def test_malformed_http_is_refused(port: int) -> None:
    raw = raw_exchange(port, b"GARBAGE\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in raw
    huge = b"GET /v2 HTTP/1.1\r\n" + b"X-Pad: %s\r\n" % (b"x" * 1000) * 100 + b"\r\n"
    raw = raw_exchange(port, huge)
    assert raw.startswith(b"HTTP/1.1 400") and b"headers exceed" in raw
    assert raw.count(b"HTTP/1.1") == 1
    assert_live(port)


def test_oversized_body_refused_before_buffering(tmp_path: Path) -> None:
    write_add_sub(tmp_path)
    app = start_app(tmp_path, grpc=False, http_max_input_size=4096)
    try:
        p = app.app.port("http")
        # Content-Length over the limit: answered from the headers alone, body never sent.
        with socket.create_connection(("127.0.0.1", p), timeout=10) as s:
            s.sendall(
                b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100000000\r\n\r\n"
            )
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400") and b"--http-max-input-size" in reply
        assert reply.count(b"HTTP/1.1") == 1 and b"Connection: close" in reply
        # Chunked: counted while reading.
        chunk = b"%x\r\n%s\r\n" % (3000, b"x" * 3000)
        raw = raw_exchange(
            p,
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 400") and b"exceeds the maximum allowed input size" in raw
        assert raw.count(b"HTTP/1.1") == 1
        # gzip bombs are bounded too.
        bomb = gzip.compress(b"{" + b" " * 100000 + b"}")
        r = request(p, "POST", "/v2/models/add_sub/infer", bomb, {"Content-Encoding": "gzip"})
        assert r.status == 400 and "decompressed request body exceeds" in r.error
        # Just under the limit works.
        doc = {"inputs": [{**_I16, "data": list(range(16))}, _IN1]}
        assert request(p, "POST", "/v2/models/add_sub/infer", doc).status == 200
    finally:
        app.stop()


GATE_CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "IN" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [-1] }]
parameters { key: "gate" value { string_value: "%s" } }
"""

# Holds each execution until the test creates the gate file.
GATE_PY = """
import json, os, time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.gate = json.loads(args["model_config"])["parameters"]["gate"]["string_value"]

    def execute(self, requests):
        deadline = time.monotonic() + 120
        while not os.path.exists(self.gate) and time.monotonic() < deadline:
            time.sleep(0.005)
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests]
"""


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[AppThread, Path]]:
    gate = tmp_path / "gate"
    repo = tmp_path / "repo"
    write_model(repo, "gate", GATE_CONFIG % gate, {"1/model.py": GATE_PY})
    app = start_app(repo, grpc=False)
    yield app, gate
    gate.touch()
    if app.loop.is_running():
        app.stop()


def _gate_request(x: float) -> bytes:
    body = json.dumps(
        {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1], "data": [x]}]}
    ).encode()
    return (
        b"POST /v2/models/gate/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body


def _wait_for(cond: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_client_disconnect_cancels_queued_request(gated: tuple[AppThread, Path]) -> None:
    app, gate = gated
    p = app.app.port("http")
    scheduler = app.app.server.models["gate"].served[1].scheduler
    first = socket.create_connection(("127.0.0.1", p), timeout=10)
    first.sendall(_gate_request(1.0))
    _wait_for(lambda: scheduler._running == 1)  # executing, held by the gate
    second = socket.create_connection(("127.0.0.1", p), timeout=10)
    second.sendall(_gate_request(2.0))
    _wait_for(lambda: len(scheduler.queues[0]) == 1)  # queued behind it
    second.close()  # the client goes away while its request is queued
    _wait_for(lambda: scheduler.queues[0][0].work.cancelled)
    gate.touch()
    assert first.recv(65536).startswith(b"HTTP/1.1 200")
    first.close()
    _wait_for(lambda: not scheduler.queues[0])
    stats = app.app.server.statistics("gate")[0]
    assert stats["execution_count"] == 1 and stats["inference_stats"]["success"]["count"] == 1
    assert_live(p)


def test_graceful_stop(gated: tuple[AppThread, Path]) -> None:
    app, gate = gated
    p = app.app.port("http")
    fe = app.app.frontends["http"]
    scheduler = app.app.server.models["gate"].served[1].scheduler
    idle = http.client.HTTPConnection("127.0.0.1", p, timeout=10)
    assert request(p, "GET", "/v2/health/live", conn=idle).status == 200  # now idle, kept alive
    busy = socket.create_connection(("127.0.0.1", p), timeout=10)
    busy.sendall(_gate_request(1.0) + _gate_request(2.0))  # one in flight, one pipelined behind
    _wait_for(lambda: scheduler._running == 1)
    partial = socket.create_connection(("127.0.0.1", p), timeout=10)
    rest = _gate_request(3.0)
    partial.sendall(rest[:-5])  # a request still arriving
    _wait_for(lambda: any(c.in_message for c in fe._hub.connections))
    stopping = threading.Thread(target=lambda: app.call(fe.stop()))
    stopping.start()
    # The idle keep-alive connection is closed at once; new connections are refused.
    assert idle.sock is not None and idle.sock.recv(1) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p), timeout=2).close()
    partial.sendall(rest[-5:])  # completes after stop began: refused, connection closed
    reply = b""
    while chunk := partial.recv(65536):
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 503") and b"Connection: close" in reply
    partial.close()
    gate.touch()  # let the in-flight request finish
    stopping.join(60)
    assert not stopping.is_alive()
    raw = b""
    while chunk := busy.recv(65536):
        raw += chunk
    first, second = raw.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200") and b'"data":[1.0]' in first
    assert second.startswith(b"503") and b"shutting down" in second
    assert b"Connection: close" in second
    busy.close()
    idle.close()
