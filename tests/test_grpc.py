"""The gRPC front-end, driven by the real tritonclient (sync, aio, stream) and by raw stubs for
what the client library will not send (typed contents, malformed raw contents)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.utils.shared_memory as shm
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests import probe
from tests.conftest import start_app
from tests.models import (
    ADD_SUB_CONFIG,
    ADD_SUB_PY,
    IDENTITY_TYPES,
    standard_repository,
    write_model,
)
from tests.wire_vectors import VECTORS, Vector
from torchtide.app import AppThread

# What Triton answers for each core status (triton-observed.md §6), written out independently of
# the front-end's table so that the table is what is tested.
EXPECTED_CODE = {
    "INVALID_ARG": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "INTERNAL": grpc.StatusCode.INTERNAL,
    "UNSUPPORTED": grpc.StatusCode.UNIMPLEMENTED,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "UNKNOWN": grpc.StatusCode.UNKNOWN,
}

SLOW_CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ count: 1 kind: KIND_CPU }]
"""

# Sleeps INPUT0 seconds, then echoes it; a negative INPUT0 (GATED) waits for probe.GATE instead,
# so a test decides when the request returns, whatever the machine's load.
SLOW_PY = """
import time
import triton_python_backend_utils as pb_utils
from tests import probe


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            seconds = float(x.reshape(-1)[0])
            if seconds < 0:
                probe.ENTERED.set()
                probe.GATE.wait(60)
            else:
                time.sleep(seconds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return responses
"""
GATED = -1.0


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Closed: GATED requests wait in the model until the test sets it (or the test ends)."""
    probe.reset()
    probe.GATE.clear()
    yield probe.GATE
    probe.GATE.set()

# Raises when INPUT0 is negative.
FAIL_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if x.reshape(-1)[0] < 0:
                raise ValueError("negative input refused by the model")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return responses
"""

I16 = np.arange(16, dtype=np.int32).reshape(1, 16)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = standard_repository(tmp_path_factory.mktemp("grpc") / "repo")
    write_model(r, "slow", SLOW_CONFIG, {"1/model.py": SLOW_PY})
    write_model(r, "add_sub_copy", ADD_SUB_CONFIG, {"1/model.py": ADD_SUB_PY})
    write_model(r, "fail", SLOW_CONFIG, {"1/model.py": FAIL_PY})
    return r


@pytest.fixture(scope="module")
def app(repo: Path) -> Iterator[AppThread]:
    a = start_app(repo, http=False, allow_client_shm=True, control_mode="explicit",
                  startup_models=["*"])
    yield a
    a.stop()


@pytest.fixture(scope="module")
def url(app: AppThread) -> str:
    return f"127.0.0.1:{app.app.port('grpc')}"


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(url: str) -> Iterator[Any]:
    ch = grpc.insecure_channel(url)
    yield pb_grpc.GRPCInferenceServiceStub(ch)
    ch.close()


def expect_error(fn: Callable[[], Any], code: grpc.StatusCode, *fragments: str) -> str:
    """Run a tritonclient call that must fail with `code`; its message must hold `fragments`."""
    with pytest.raises(InferenceServerException) as ei:
        fn()
    assert ei.value.status() == str(code), ei.value
    msg = str(ei.value.message())
    for f in fragments:
        assert f in msg, msg
    return msg


def expect_rpc_error(fn: Callable[[], Any], code: grpc.StatusCode, *fragments: str) -> str:
    """The same for a raw-stub call."""
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    err: Any = ei.value
    assert err.code() == code, err.details()
    for f in fragments:
        assert f in err.details(), err.details()
    return str(err.details())


def infer_input(name: str, data: np.ndarray, datatype: str | None = None) -> grpcclient.InferInput:
    dt = datatype or (
        "BYTES" if data.dtype == np.object_ else grpcclient.np_to_triton_dtype(data.dtype))
    return grpcclient.InferInput(name, list(data.shape), dt).set_data_from_numpy(data)


def add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    return [infer_input("INPUT0", a), infer_input("INPUT1", b)]


def assert_healthy(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    r = client.infer("add_sub", add_sub_inputs(I16, I16))
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), I16 * 2)


def test_status_table_matches_triton() -> None:
    from torchtide.errors import Status
    from torchtide.frontends.grpc.convert import GRPC_CODES, grpc_code

    assert {s.name: c for s, c in GRPC_CODES.items()} == EXPECTED_CODE
    assert all(grpc_code(s) == EXPECTED_CODE[s.name] for s in Status)


# ---------------------------------------------------------------------------- health, metadata


def test_live_ready_and_metadata(client: grpcclient.InferenceServerClient, app: AppThread) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "triton"
    assert meta["extensions"] == app.app.server.metadata()["extensions"]
    m = client.get_model_metadata("add_sub", as_json=True)
    assert m["name"] == "add_sub" and m["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in m["inputs"]] == [
        ("INPUT0", "INT32", ["-1", "16"]),
        ("INPUT1", "INT32", ["-1", "16"]),
    ]
    assert client.get_model_metadata("add_sub", "1").versions == ["1"]
    expect_error(lambda: client.get_model_metadata("nope"), grpc.StatusCode.NOT_FOUND,
                 "Request for unknown model: 'nope' is not found")


def test_model_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("nope")  # Triton: OK with ready=false
    assert not client.is_model_ready("add_sub", "3")
    assert not client.is_model_ready("add_sub", "0")  # well formed, never served
    # Triton's words (triton-observed.md §3); "1_0", " 1" and a number past int64 are not
    # versions either (Python's int() would read the first as 10)
    bad = {"-1": "invalid model version specified '-1' , version should be an integral value > 0"}
    for v in ("abc", "1_0", " 1", "9" * 30):
        bad[v] = (f"failed to get model version from specified version string '{v}' "
                  "(details: stol), version should be an integral value > 0")
    for version, message in bad.items():
        for call in (client.is_model_ready, client.get_model_metadata, client.get_model_config):
            expect_error(functools.partial(call, "add_sub", version),
                         grpc.StatusCode.INVALID_ARGUMENT, message)


def test_model_config(client: grpcclient.InferenceServerClient, app: AppThread) -> None:
    cfg = client.get_model_config("add_sub").config
    assert cfg == app.app.server.model_config("add_sub")  # the same ModelConfig message
    assert cfg.max_batch_size == 64 and cfg.HasField("dynamic_batching")
    as_json = client.get_model_config("add_sub", as_json=True)["config"]
    assert as_json["input"][0]["data_type"] == "TYPE_INT32"
    expect_error(lambda: client.get_model_config("nope"), grpc.StatusCode.NOT_FOUND,
                 "Request for unknown model: 'nope' is not found")


def test_statistics(client: grpcclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("add_sub").model_stats[0]
    client.infer("add_sub", add_sub_inputs(np.tile(I16, (4, 1)), np.tile(I16, (4, 1))))
    s = client.get_inference_statistics("add_sub", "1").model_stats[0]
    assert (s.name, s.version) == ("add_sub", "1")
    assert s.inference_count == before.inference_count + 4
    assert s.execution_count == before.execution_count + 1
    assert s.inference_stats.success.count == before.inference_stats.success.count + 1
    assert s.last_inference > 0
    assert any(b.batch_size == 4 for b in s.batch_stats)
    everything = client.get_inference_statistics().model_stats
    assert {"add_sub", "identity", "linear"} <= {m.name for m in everything}
    expect_error(lambda: client.get_inference_statistics("nope"), grpc.StatusCode.INVALID_ARGUMENT,
                 "requested model 'nope' is not available")
    expect_error(lambda: client.get_inference_statistics("add_sub", "9"),
                 grpc.StatusCode.INVALID_ARGUMENT, "requested model version is not available")


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    entry = next(e for e in index if e["name"] == "add_sub")
    assert entry == {"name": "add_sub", "version": "1", "state": "READY"}
    ready = client.get_model_repository_index().models
    assert all(m.state == "READY" for m in ready)


def test_health_service(url: str, app: AppThread) -> None:
    with grpc.insecure_channel(url) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest()).status == serving
        req = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert health.Check(req).status == serving
        expect_rpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope")),
                         grpc.StatusCode.NOT_FOUND)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == serving
        watch.cancel()


# ---------------------------------------------------------------------------- inference


def test_add_sub_echoes_id_and_batches(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(64, dtype=np.int32).reshape(4, 16)
    b = np.ones((4, 16), np.int32)
    r = client.infer("add_sub", add_sub_inputs(a, b), request_id="req-7")
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
    resp = r.get_response()
    assert (resp.id, resp.model_name, resp.model_version) == ("req-7", "add_sub", "1")
    assert len(resp.raw_output_contents) == 2 and not resp.outputs[0].HasField("contents")
    # Only the requested output, and no id when none was given.
    r = client.infer("add_sub", add_sub_inputs(a, b),
                     outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in r.get_response().outputs] == ["OUTPUT1"]
    assert r.get_response().id == ""


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client: grpcclient.InferenceServerClient, algorithm: str) -> None:
    r = client.infer("add_sub", add_sub_inputs(I16, I16), compression_algorithm=algorithm)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), 2 * I16)


def _identity_data(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "BYTES":
        return np.array([[b"", "héllo wörld ✓".encode(), b"\xff\xfe\x00abc", b"plain"]],
                        dtype=np.object_)
    if dtype == "BOOL":
        return np.array([[True, False, True]])
    if dtype == "BF16":
        return np.array([[1.5, -2.0, 0.0, 3.0e38]], dtype=ml_dtypes.bfloat16)
    np_type = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(dtype)
    if np_type is not None:
        return rng.standard_normal((2, 5)).astype(np_type)
    info = np.iinfo(getattr(np, dtype.lower()))
    return np.array([[info.min, 0, 1, info.max]], dtype=info.dtype)


@pytest.mark.parametrize("dtype", IDENTITY_TYPES)
def test_identity_every_datatype(client: grpcclient.InferenceServerClient, dtype: str) -> None:
    data = _identity_data(dtype)
    r = client.infer("identity", [infer_input(f"IN_{dtype}", data, dtype)],
                     outputs=[grpcclient.InferRequestedOutput(f"OUT_{dtype}")])
    out = r.as_numpy(f"OUT_{dtype}")
    assert r.get_output(f"OUT_{dtype}").datatype == dtype
    assert out.shape == data.shape
    if dtype == "BYTES":
        assert out.tolist() == data.tolist()
    else:
        np.testing.assert_array_equal(out.view(np.uint8), data.view(np.uint8))


def test_bf16_raw_bits_and_empty_tensors(stub: Any) -> None:
    bits = np.array([0x3FC0, 0xC000, 0x7F80, 0x0001], dtype="<u2")  # 1.5, -2, inf, denormal
    req = pb.ModelInferRequest(model_name="identity")
    req.inputs.add(name="IN_BF16", datatype="BF16", shape=[1, 4])
    req.outputs.add(name="OUT_BF16")
    req.raw_input_contents.append(bits.tobytes())
    resp = stub.ModelInfer(req)
    assert resp.outputs[0].datatype == "BF16"
    assert resp.raw_output_contents[0] == bits.tobytes()
    for dt, raw in (("FP32", b""), ("BYTES", b"")):
        req = pb.ModelInferRequest(model_name="identity")
        req.inputs.add(name=f"IN_{dt}", datatype=dt, shape=[1, 0])
        req.outputs.add(name=f"OUT_{dt}")
        req.raw_input_contents.append(raw)
        resp = stub.ModelInfer(req)
        assert list(resp.outputs[0].shape) == [1, 0] and resp.raw_output_contents[0] == b""


def test_large_tensor_beyond_grpc_default(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(2 * 2**20, dtype=np.float32).reshape(1, -1)  # 8 MiB
    r = client.infer("identity", [infer_input("IN_FP32", data)],
                     outputs=[grpcclient.InferRequestedOutput("OUT_FP32")])
    np.testing.assert_array_equal(r.as_numpy("OUT_FP32"), data)


TYPED = [
    ("BOOL", "bool_contents", [True, False, True], np.bool_),
    ("INT8", "int_contents", [-128, 0, 127], np.int8),
    ("INT16", "int_contents", [-32768, 5, 32767], np.int16),
    ("INT32", "int_contents", [-(2**31), 0, 2**31 - 1], np.int32),
    ("INT64", "int64_contents", [-(2**63), 0, 2**63 - 1], np.int64),
    ("UINT8", "uint_contents", [0, 7, 255], np.uint8),
    ("UINT16", "uint_contents", [0, 7, 65535], np.uint16),
    ("UINT32", "uint_contents", [0, 7, 2**32 - 1], np.uint32),
    ("UINT64", "uint64_contents", [0, 7, 2**64 - 1], np.uint64),
    ("FP32", "fp32_contents", [1.5, -0.25, 3.0], np.float32),
    ("FP64", "fp64_contents", [1.5, -0.25, 1e300], np.float64),
]


@pytest.mark.parametrize(("dtype", "field", "values", "np_type"), TYPED, ids=[t[0] for t in TYPED])
def test_typed_contents(stub: Any, dtype: str, field: str, values: list[Any], np_type: Any) -> None:
    req = pb.ModelInferRequest(model_name="identity", id="typed")
    t = req.inputs.add(name=f"IN_{dtype}", datatype=dtype, shape=[1, 3])
    req.outputs.add(name=f"OUT_{dtype}")
    getattr(t.contents, field).extend(values)
    resp = stub.ModelInfer(req)
    assert resp.id == "typed" and resp.outputs[0].name == f"OUT_{dtype}"
    out = np.frombuffer(resp.raw_output_contents[0], dtype=np_type)
    np.testing.assert_array_equal(out, np.array(values, dtype=np_type))


def test_typed_bytes_contents(stub: Any) -> None:
    values = [b"", "ünïcode".encode(), b"\x00\xff"]
    req = pb.ModelInferRequest(model_name="identity")
    t = req.inputs.add(name="IN_BYTES", datatype="BYTES", shape=[1, 3])
    req.outputs.add(name="OUT_BYTES")
    t.contents.bytes_contents.extend(values)
    raw = stub.ModelInfer(req).raw_output_contents[0]
    expected = b"".join(len(v).to_bytes(4, "little") + v for v in values)
    assert raw == expected


def test_classification(client: grpcclient.InferenceServerClient) -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    raw = client.infer("linear", [infer_input("INPUT__0", x)]).as_numpy("OUTPUT__0")[0]
    r = client.infer("linear", [infer_input("INPUT__0", x)],
                     outputs=[grpcclient.InferRequestedOutput("OUTPUT__0", class_count=2)])
    out = r.as_numpy("OUTPUT__0")
    assert out.shape == (1, 2) and r.get_output("OUTPUT__0").datatype == "BYTES"
    best = int(np.argmax(raw))
    value, index = out[0][0].decode().split(":")
    assert int(index) == best and abs(float(value) - raw[best]) < 1e-5


def test_request_parameters(client: grpcclient.InferenceServerClient) -> None:
    r = client.infer("add_sub", add_sub_inputs(I16, I16), priority=1, timeout=10_000_000,
                     parameters={"custom": "x", "flag": True, "n": 3})
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), np.zeros_like(I16))
    # As Triton: request parameters are int64, bool or string (double is refused).
    expect_error(lambda: client.infer("add_sub", add_sub_inputs(I16, I16), parameters={"f": 0.5}),
                 grpc.StatusCode.INVALID_ARGUMENT, "invalid value type for 'f' parameter")


async def test_200_concurrent_requests_aio(url: str) -> None:
    async with aioclient.InferenceServerClient(url) as c:
        async def one(i: int) -> None:
            a = np.full((1, 16), i, np.int32)
            b = np.arange(16, dtype=np.int32).reshape(1, 16)
            ins = [aioclient.InferInput("INPUT0", [1, 16], "INT32").set_data_from_numpy(a),
                   aioclient.InferInput("INPUT1", [1, 16], "INT32").set_data_from_numpy(b)]
            r = await c.infer("add_sub", ins, request_id=str(i))
            assert r.get_response().id == str(i)
            np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)

        await asyncio.gather(*(one(i) for i in range(200)))


# ---------------------------------------------------------------------------- streaming


def test_stream_many_requests_with_an_error_in_the_middle(
    client: grpcclient.InferenceServerClient,
) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        n = 40
        for i in range(n):
            a = np.full((1, 16), i, np.int32)
            bad = i == n // 2  # this one has the wrong shape
            ins = add_sub_inputs(a[:, :15], a[:, :15]) if bad else add_sub_inputs(a, I16)
            client.async_stream_infer("add_sub", ins, request_id=f"s{i}")
        got = [results.get(timeout=30) for _ in range(n)]
        errors = [e for _, e in got if e is not None]
        assert len(errors) == 1 and "unexpected shape for input 'INPUT0'" in errors[0].message()
        ok = {r.get_response().id: r for r, e in got if e is None}
        assert len(ok) == n - 1
        for i in range(n):
            if i != n // 2:
                np.testing.assert_array_equal(ok[f"s{i}"].as_numpy("OUTPUT0"), i + I16)
        # The stream stays open after the error.
        client.async_stream_infer("add_sub", add_sub_inputs(I16, I16), request_id="after")
        r, e = results.get(timeout=30)
        assert e is None and r.get_response().id == "after"
    finally:
        client.stop_stream()


async def test_stream_serves_requests_concurrently(url: str, gate: threading.Event) -> None:
    """A slow request first, a fast one second: the fast answer must not wait for the slow
    (which returns only once the other two have been answered)."""
    async with aioclient.InferenceServerClient(url) as c:
        async def requests() -> Any:
            slow = aioclient.InferInput("INPUT0", [1], "FP32").set_data_from_numpy(
                np.array([GATED], np.float32))
            yield {"model_name": "slow", "inputs": [slow], "request_id": "slow"}
            yield {"model_name": "add_sub", "inputs": [
                aioclient.InferInput("INPUT0", [1, 16], "INT32").set_data_from_numpy(I16),
                aioclient.InferInput("INPUT1", [1, 16], "INT32").set_data_from_numpy(I16),
            ], "request_id": "fast"}
            yield {"model_name": "nope", "inputs": [slow], "request_id": "bad"}

        order = []
        async for result, error in c.stream_infer(requests()):
            if error is not None:
                assert "unknown model: 'nope'" in error.message()
                order.append("bad")
            else:
                order.append(result.get_response().id)
            if sorted(order) == ["bad", "fast"]:
                gate.set()
            if len(order) == 3:
                break
        assert order.index("fast") < order.index("slow")


def test_stream_error_id_and_strict_header(stub: Any) -> None:
    bad = pb.ModelInferRequest(model_name="nope", id="x1")
    good = pb.ModelInferRequest(model_name="add_sub", id="x2")
    for name in ("INPUT0", "INPUT1"):
        good.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        good.raw_input_contents.append(I16.tobytes())
    responses = list(stub.ModelStreamInfer(iter([bad])))
    assert len(responses) == 1
    assert "unknown model: 'nope'" in responses[0].error_message
    assert responses[0].infer_response.id == "x1"
    # With triton_grpc_error the error ends the stream with a gRPC status, as Triton does.
    call = stub.ModelStreamInfer(iter([good, bad]), metadata=[("triton_grpc_error", "true")])
    with pytest.raises(grpc.RpcError) as ei:
        list(call)
    err: Any = ei.value
    assert err.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------------- shared memory


def test_system_shared_memory(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, np.int32)
    nbytes = a.nbytes
    kin, kout = f"/tt_grpc_in_{os.getpid()}", f"/tt_grpc_out_{os.getpid()}"
    ip = shm.create_shared_memory_region("in", kin, 2 * nbytes)
    op = shm.create_shared_memory_region("out", kout, 2 * nbytes)
    try:
        shm.set_shared_memory_region(ip, [a])
        shm.set_shared_memory_region(ip, [b], offset=nbytes)
        client.register_system_shared_memory("in", kin, 2 * nbytes)
        client.register_system_shared_memory("out", kout, 2 * nbytes)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert status["in"]["key"] == kin and status["in"]["byte_size"] == str(2 * nbytes)
        assert list(client.get_system_shared_memory_status("out").regions) == ["out"]
        expect_error(lambda: client.register_system_shared_memory("in", kin, nbytes),
                     grpc.StatusCode.ALREADY_EXISTS, "shared memory region 'in' already in manager")
        expect_error(lambda: client.get_system_shared_memory_status("nope"),
                     grpc.StatusCode.NOT_FOUND,
                     "Unable to find system shared memory region: 'nope'")
        ins = [grpcclient.InferInput("INPUT0", [1, 16], "INT32").set_shared_memory("in", nbytes),
               grpcclient.InferInput("INPUT1", [1, 16], "INT32").set_shared_memory(
                   "in", nbytes, offset=nbytes)]
        outs = [grpcclient.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
        outs[0].set_shared_memory("out", nbytes)
        outs[1].set_shared_memory("out", nbytes, offset=nbytes)
        r = client.infer("add_sub", ins, outputs=outs)
        assert r.get_response().raw_output_contents == [b"", b""]
        o0 = r.get_output("OUTPUT0")
        assert list(o0.shape) == [1, 16]
        np.testing.assert_array_equal(shm.get_contents_as_numpy(op, np.int32, [1, 16]), a + b)
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(op, np.int32, [1, 16], offset=nbytes), a - b)
        # Errors: a region that is not registered, a span past the region, a too small output.
        bad = [grpcclient.InferInput("INPUT0", [1, 16], "INT32").set_shared_memory("nope", nbytes),
               ins[1]]
        expect_error(lambda: client.infer("add_sub", bad), grpc.StatusCode.NOT_FOUND,
                     "Unable to find shared memory region: 'nope'")
        past = [grpcclient.InferInput("INPUT0", [1, 16], "INT32").set_shared_memory(
            "in", nbytes, offset=nbytes + 4), ins[1]]
        expect_error(lambda: client.infer("add_sub", past), grpc.StatusCode.INVALID_ARGUMENT,
                     "Invalid offset + byte size for shared memory region: 'in'")
        short = [grpcclient.InferInput("INPUT0", [1, 16], "INT32").set_shared_memory("in", 32),
                 ins[1]]
        expect_error(lambda: client.infer("add_sub", short), grpc.StatusCode.INVALID_ARGUMENT,
                     "input byte size mismatch for input 'INPUT0'", "Expected 64, got 32")
        small = grpcclient.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory("out", 16)
        expect_error(lambda: client.infer("add_sub", ins, outputs=[small]),
                     grpc.StatusCode.INTERNAL, "should be at least 64 bytes")
        client.unregister_system_shared_memory("in")
        client.unregister_system_shared_memory("nope")  # unknown: not an error
        assert list(client.get_system_shared_memory_status().regions) == ["out"]
        client.unregister_system_shared_memory()
        assert not client.get_system_shared_memory_status().regions
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(ip)
        shm.destroy_shared_memory_region(op)
    assert_healthy(client)


def test_cuda_shared_memory_is_refused_clearly(client: grpcclient.InferenceServerClient) -> None:
    assert not client.get_cuda_shared_memory_status().regions
    expect_error(lambda: client.get_cuda_shared_memory_status("r"), grpc.StatusCode.NOT_FOUND,
                 "Unable to find cuda shared memory region: 'r'")
    expect_error(lambda: client.register_cuda_shared_memory("r", b"\x00" * 64, 0, 64),
                 grpc.StatusCode.UNIMPLEMENTED, "CUDA shared memory is not supported")
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("r")


# ---------------------------------------------------------------------------- trace, logging


def test_trace_setting_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    expect_error(lambda: client.get_trace_settings(), grpc.StatusCode.UNIMPLEMENTED,
                 "trace settings are not supported")


def test_log_settings(client: grpcclient.InferenceServerClient) -> None:
    s = client.get_log_settings(as_json=True)["settings"]
    assert s["log_info"] == {"bool_param": True}
    assert s["log_verbose_level"] == {"uint32_param": 0}
    assert s["log_format"] == {"string_param": "default"}
    changed = client.update_log_settings({"log_verbose_level": 1, "log_warning": True},
                                         as_json=True)["settings"]
    assert changed["log_verbose_level"] == {"uint32_param": 1}
    client.update_log_settings({"log_verbose_level": 0})
    expect_error(lambda: client.update_log_settings({"log_format": "xml"}),
                 grpc.StatusCode.INVALID_ARGUMENT, "invalid log_format")
    expect_error(lambda: client.update_log_settings({"nope": True}),
                 grpc.StatusCode.INVALID_ARGUMENT, "unknown logging setting 'nope'")


# ---------------------------------------------------------------------------- model control


def test_unload_and_load(client: grpcclient.InferenceServerClient) -> None:
    client.unload_model("add_sub_copy")
    assert not client.is_model_ready("add_sub_copy")
    expect_error(lambda: client.infer("add_sub_copy", add_sub_inputs(I16, I16)),
                 grpc.StatusCode.NOT_FOUND, "'add_sub_copy' has no available versions")
    client.unload_model("never_heard_of")  # Triton: not an error
    client.load_model("add_sub_copy")
    assert client.is_model_ready("add_sub_copy")
    cfg = client.get_model_config("add_sub_copy", as_json=True)["config"]
    cfg["max_batch_size"] = 32
    cfg["dynamic_batching"]["preferred_batch_size"] = [32]
    client.load_model("add_sub_copy", config=json.dumps(cfg))
    assert client.get_model_config("add_sub_copy").config.max_batch_size == 32
    expect_error(lambda: client.load_model("nope"), grpc.StatusCode.INTERNAL,
                 "failed to load 'nope'")
    expect_error(lambda: client.load_model("add_sub_copy", config="{not json"),
                 grpc.StatusCode.INVALID_ARGUMENT)
    assert client.is_model_ready("add_sub_copy")
    assert_healthy(client)


def test_load_with_files(client: grpcclient.InferenceServerClient, repo: Path) -> None:
    config = {
        "name": "from_files", "backend": "python", "max_batch_size": 64,
        "input": [{"name": n, "data_type": "TYPE_INT32", "dims": [16]}
                  for n in ("INPUT0", "INPUT1")],
        "output": [{"name": n, "data_type": "TYPE_INT32", "dims": [16]}
                   for n in ("OUTPUT0", "OUTPUT1")],
    }
    client.load_model("from_files", config=json.dumps(config),
                      files={"file:1/model.py": ADD_SUB_PY.encode()})
    assert client.is_model_ready("from_files")
    assert (repo / "from_files" / "1" / "model.py").read_text() == ADD_SUB_PY
    r = client.infer("from_files", add_sub_inputs(I16, I16))
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), 2 * I16)
    client.unload_model("from_files")


def test_repository_name_unsupported(stub: Any) -> None:
    expect_rpc_error(lambda: stub.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="r")),
                     grpc.StatusCode.UNIMPLEMENTED, "'repository_name' specification")


# ---------------------------------------------------------------------------- errors


def _vector_inputs(v: Vector) -> list[grpcclient.InferInput]:
    return [infer_input(name, data, dt) for name, (dt, data) in v.inputs.items()]


@pytest.mark.parametrize("vector", VECTORS, ids=[v.id for v in VECTORS])
def test_wire_vectors(client: grpcclient.InferenceServerClient, vector: Vector) -> None:
    outputs = None if vector.outputs is None else [
        grpcclient.InferRequestedOutput(o) for o in vector.outputs]
    expect_error(
        lambda: client.infer(vector.model, _vector_inputs(vector), model_version=vector.version,
                             outputs=outputs, parameters=vector.parameters or None),
        EXPECTED_CODE[vector.status], vector.message,
    )
    assert_healthy(client)


def test_model_error_is_internal_with_its_message(
    client: grpcclient.InferenceServerClient, stub: Any,
) -> None:
    bad = [infer_input("INPUT0", np.array([-1.0], np.float32))]
    expect_error(lambda: client.infer("fail", bad), grpc.StatusCode.INTERNAL,
                 "negative input refused by the model")
    req = pb.ModelInferRequest(model_name="fail", id="f1")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    req.raw_input_contents.append(np.array([-1.0], np.float32).tobytes())
    (answer,) = list(stub.ModelStreamInfer(iter([req])))
    assert "negative input refused by the model" in answer.error_message
    assert answer.infer_response.id == "f1"
    ok = client.infer("fail", [infer_input("INPUT0", np.array([2.0], np.float32))])
    assert ok.as_numpy("OUTPUT0")[0] == np.float32(2.0)
    assert_healthy(client)


def _raw(*inputs: tuple[str, str, list[int]], raws: list[bytes], model: str = "add_sub") -> Any:
    req = pb.ModelInferRequest(model_name=model)
    for name, dt, shape in inputs:
        req.inputs.add(name=name, datatype=dt, shape=shape)
    req.raw_input_contents.extend(raws)
    return req


_B = I16.tobytes()
_IN2 = (("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16]))


def _both_contents() -> Any:
    req = _raw(*_IN2, raws=[_B, _B])
    req.inputs[1].contents.int_contents.extend(range(16))
    return req


def _wrong_field() -> Any:
    req = _raw(("INPUT0", "INT32", [1, 16]), raws=[])
    req.inputs[0].contents.fp32_contents.extend([0.0] * 16)
    return req


def _fp16_typed() -> Any:
    req = pb.ModelInferRequest(model_name="identity")
    req.inputs.add(name="IN_FP16", datatype="FP16", shape=[1, 1]).contents.fp32_contents.append(1)
    return req


def _typed_count() -> Any:
    req = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(
            range(15 if name == "INPUT1" else 16))
    return req


def _shm_without_region() -> Any:
    req = _raw(*_IN2, raws=[_B])
    req.inputs[1].parameters["shared_memory_byte_size"].int64_param = 64
    return req


def _bytes_input(raw: bytes, n: int) -> Any:
    req = _raw(("IN_BYTES", "BYTES", [1, n]), raws=[raw], model="identity")
    req.outputs.add(name="OUT_BYTES")
    return req


MALFORMED: list[tuple[str, Callable[[], Any], list[str]]] = [
    ("fewer-raw-than-inputs", lambda: _raw(*_IN2, raws=[_B]),
     ["unable to find data for input tensor 'INPUT1'"]),
    ("more-raw-than-inputs", lambda: _raw(*_IN2, raws=[_B, _B, _B]), ["3 raw_input_contents"]),
    ("byte-count-short", lambda: _raw(*_IN2, raws=[_B, _B[:-4]]),
     ["input byte size mismatch for input 'INPUT1'", "Expected 64, got 60"]),
    ("byte-count-long", lambda: _raw(*_IN2, raws=[_B + b"\0", _B]),
     ["input byte size mismatch for input 'INPUT0'"]),
    ("negative-dim", lambda: _raw(("INPUT0", "INT32", [1, -16]), _IN2[1], raws=[_B, _B]),
     ["input 'INPUT0'", "negative"]),
    ("absurd-shape", lambda: _raw(("INPUT0", "INT32", [2**31, 2**31]), _IN2[1], raws=[_B, _B]),
     ["input byte size mismatch for input 'INPUT0'"]),
    ("absurd-bytes-shape", lambda: _bytes_input(b"\0\0\0\0", 2**40), ["input 'IN_BYTES'"]),
    ("unknown-datatype", lambda: _raw(("INPUT0", "FLOAT", [1, 16]), _IN2[1], raws=[_B, _B]),
     ["invalid datatype 'FLOAT' for input 'INPUT0'"]),
    ("bytes-prefix-past-end", lambda: _bytes_input(b"\x10\0\0\0abc", 1),
     ["input 'IN_BYTES': BYTES element 0 declares 16 bytes, but only 3 remain"]),
    ("bytes-too-few-elements", lambda: _bytes_input(b"\x01\0\0\0a", 2),
     ["input 'IN_BYTES': shape [2] needs 2 BYTES elements, but 5 bytes can hold at most 1"]),
    ("bytes-trailing-garbage", lambda: _bytes_input(b"\x01\0\0\0ab", 1),
     ["input 'IN_BYTES': BYTES element 1 has a truncated 4-byte length prefix"]),
    ("contents-and-raw", _both_contents,
     ["contents field must not be specified when using raw_input_contents for 'INPUT1'"]),
    ("contents-wrong-field", _wrong_field,
     ["unexpected explicit tensor data for input tensor 'INPUT0'", "of type 'FP32'"]),
    ("contents-fp16", _fp16_typed, ["input 'IN_FP16'", "raw_input_contents"]),
    ("contents-count", _typed_count, ["input 'INPUT1'", "contents hold 15"]),
    ("shm-without-region", _shm_without_region,
     ["'shared_memory_byte_size' can not be specified without 'shared_memory_region'",
      "'INPUT1'"]),
]


@pytest.mark.parametrize(("build", "fragments"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_raw_requests(
    stub: Any, client: grpcclient.InferenceServerClient, build: Callable[[], Any],
    fragments: list[str],
) -> None:
    expect_rpc_error(lambda: stub.ModelInfer(build()), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert_healthy(client)


def test_reserved_parameter_prefix(stub: Any) -> None:
    req = _raw(*_IN2, raws=[_B, _B])
    req.parameters["triton_secret"].bool_param = True
    expect_rpc_error(lambda: stub.ModelInfer(req), grpc.StatusCode.INVALID_ARGUMENT,
                     "parameter keys starting with 'triton_' are reserved")


# ---------------------------------------------------------------------------- cancellation


def _slow_inputs(seconds: float) -> list[grpcclient.InferInput]:
    return [infer_input("INPUT0", np.array([seconds], np.float32))]


def _slow_stats(client: grpcclient.InferenceServerClient) -> Any:
    return client.get_inference_statistics("slow").model_stats[0]


def wait_running(client: grpcclient.InferenceServerClient, queued_before: int) -> None:
    """Until the slow model has taken a request (the scheduler counts queue time at dispatch)."""
    deadline = time.monotonic() + 10
    while _slow_stats(client).inference_stats.queue.count <= queued_before:
        assert time.monotonic() < deadline, "the slow request never started"


def test_deadline_drops_a_queued_request(
    client: grpcclient.InferenceServerClient, gate: threading.Event
) -> None:
    """A request whose deadline passes while it is queued never reaches the model."""
    before = _slow_stats(client)
    first: list[Any] = []
    t = threading.Thread(target=lambda: first.append(client.infer("slow", _slow_inputs(GATED))))
    t.start()
    wait_running(client, before.inference_stats.queue.count)
    expect_error(lambda: client.infer("slow", _slow_inputs(0.0), client_timeout=0.3),
                 grpc.StatusCode.DEADLINE_EXCEEDED)
    gate.set()  # the first request returns only now, after the second one's deadline
    t.join(30)
    assert first and first[0].as_numpy("OUTPUT0")[0] == np.float32(GATED)
    client.infer("slow", _slow_inputs(0.0))
    after = _slow_stats(client)
    assert after.execution_count - before.execution_count == 2  # the timed-out one never ran
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1


def test_cancelled_stream_drops_its_queued_requests(
    client: grpcclient.InferenceServerClient, stub: Any, app: AppThread, gate: threading.Event
) -> None:
    before = _slow_stats(client)
    sends: queue.Queue[Any] = queue.Queue()
    call = stub.ModelStreamInfer(iter(sends.get, None))
    for rid, seconds in (("running", GATED), ("queued", 0.0)):
        req = pb.ModelInferRequest(model_name="slow", id=rid)
        req.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
        req.raw_input_contents.append(np.array([seconds], np.float32).tobytes())
        sends.put(req)
    wait_running(client, before.inference_stats.queue.count)
    stats = app.app.server.resolve("slow").stats  # in-process: is the second one queued yet?
    deadline = time.monotonic() + 10
    while stats.pending < 1:
        assert time.monotonic() < deadline, "the second request never reached the queue"
        time.sleep(0.001)
    call.cancel()
    sends.put(None)
    scheduler = app.app.server.resolve("slow").scheduler

    async def cancel_seen() -> bool:  # on the server's loop: the stream's requests are cancelled
        return any(p.work.cancelled for q in scheduler.queues for p in q)

    while not app.call(cancel_seen()):
        assert time.monotonic() < deadline + 50, "the cancel never reached the server"
        time.sleep(0.001)
    gate.set()  # the running request returns only after the server saw the cancel
    client.infer("slow", _slow_inputs(0.0))  # runs after the cancelled one finishes
    after = _slow_stats(client)
    # Only the last request counts as executed: the running one ends CANCELED when the model
    # returns, and the queued one never reaches the model.
    assert after.execution_count - before.execution_count == 1
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 2


# ---------------------------------------------------------------------------- stop, refusal


def test_refusal_without_client_shm_and_graceful_stop(
    tmp_path: Path, gate: threading.Event
) -> None:
    repo = tmp_path / "repo"
    two_instances = SLOW_CONFIG.replace("count: 1", "count: 2")
    write_model(repo, "slow", two_instances, {"1/model.py": SLOW_PY})
    app = start_app(repo, http=False)  # allow_client_shm defaults to False
    stopped = False
    try:
        url = f"127.0.0.1:{app.app.port('grpc')}"
        c = grpcclient.InferenceServerClient(url)
        for call in (lambda: c.register_system_shared_memory("r", "/k", 8),
                     lambda: c.unregister_system_shared_memory()):
            expect_error(call, grpc.StatusCode.UNIMPLEMENTED, "--allow-client-shm")
        assert not c.get_system_shared_memory_status().regions  # answered, as over HTTP
        req = [grpcclient.InferInput("INPUT0", [1], "FP32").set_shared_memory("r", 4)]
        expect_error(lambda: c.infer("slow", req), grpc.StatusCode.UNIMPLEMENTED,
                     "--allow-client-shm")

        # In flight when the stop begins: a unary request and one on a stream left open.
        in_flight: list[Any] = []
        worker = threading.Thread(
            target=lambda: in_flight.append(c.infer("slow", _slow_inputs(GATED))))
        worker.start()
        sends: queue.Queue[Any] = queue.Queue()
        channel = grpc.insecure_channel(url)
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(sends.get, None))
        sreq = pb.ModelInferRequest(model_name="slow", id="streamed")
        sreq.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
        sreq.raw_input_contents.append(np.array([GATED], np.float32).tobytes())
        sends.put(sreq)
        wait_running(c, 1)  # both are executing (two instances)
        deadline = time.monotonic() + 10
        stopper = threading.Thread(target=app.stop)
        stopper.start()
        stopped = True
        other = grpcclient.InferenceServerClient(url)
        while other.is_server_ready():
            assert time.monotonic() < deadline
        assert not other.is_server_live()
        expect_error(lambda: other.infer("slow", _slow_inputs(0.0)), grpc.StatusCode.UNAVAILABLE,
                     "shutting down")
        expect_error(lambda: other.get_server_metadata(), grpc.StatusCode.UNAVAILABLE)
        gate.set()  # the two in-flight requests finish only after the refusals were seen
        worker.join(30)
        # The open stream answers its request, then ends with OK though the client never closed.
        answers = list(stream)
        assert [(a.error_message, a.infer_response.id) for a in answers] == [("", "streamed")]
        sends.put(None)
        channel.close()
        stopper.join(30)
        assert in_flight and in_flight[0].as_numpy("OUTPUT0")[0] == np.float32(GATED)
        with pytest.raises(InferenceServerException):
            other.is_server_live()  # the listener is closed
    finally:
        if not stopped:
            app.stop()


async def test_frontend_binds_free_port_and_refuses_a_taken_one(tmp_path: Path) -> None:
    from torchtide.frontends.grpc import GrpcFrontend
    from torchtide.server import InferenceServer, ServerOptions

    server = InferenceServer(ServerOptions([tmp_path]))
    fe = GrpcFrontend(server, "127.0.0.1", 0)
    await fe.start()
    try:
        assert fe.port > 0
        # SO_REUSEPORT is off: a second server on the same port fails instead of sharing it.
        with pytest.raises(OSError, match="could not listen"):
            await GrpcFrontend(server, "127.0.0.1", fe.port).start()
    finally:
        await fe.stop(0)
