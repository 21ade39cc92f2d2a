"""Hostile tensors (issue 14), on both protocols: shapes no array can have, element counts and
BYTES length prefixes that claim more than the request holds, JSON nested past any tensor's
rank, and outputs large enough that encoding them must not stall the event loop. Each refusal is
one 400 / INVALID_ARGUMENT naming the input; nothing of the claimed size is ever allocated (a
4 TiB allocation would fail as 500 / INTERNAL, or take the process down)."""

from __future__ import annotations

import gzip
import json
import struct
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.http_util import request
from tests.test_hostile_http import ThreadSpy
from torchtide.app import AppThread
from torchtide.errors import ServerError
from torchtide.frontends.grpc import convert
from torchtide.frontends.grpc.service import InferenceService
from torchtide.frontends.http import decode, encode, routes
from torchtide.frontends.http.decode import ShmAccess
from torchtide.frontends.limits import OFFLOAD_OUTPUT_BYTES
from torchtide.types import InferTensor
from torchtide.wire import MAX_ELEMENTS, MAX_RANK

HUGE = 2**62
# (what, datatype, shape, binary data, the refusal's words)
CASES = [
    ("zero-beside-huge", "FP32", [0, HUGE, HUGE], b"", "non-zero dimensions multiply to 2^60"),
    ("rank-65", "FP32", [1] * 65, b"\0" * 4, "has 65 dimensions; at most 64"),
    ("2^40-elements", "FP32", [2**40], b"\0" * 16, "4398046511104"),
    ("2^40-bytes-elements", "BYTES", [2**40], b"\0" * 8, "can hold at most 2"),
    ("length-prefix", "BYTES", [1], struct.pack("<I", 2**32 - 1) + b"abcd", "declares 4294967295"),
]
IDS = [c[0] for c in CASES]


@pytest.fixture
def http_port(served: AppThread) -> int:
    return int(served.app.port("http"))


@pytest.fixture
def stub(served: AppThread) -> Iterator[Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{served.app.port('grpc')}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _http_infer(port: int, doc: dict[str, Any], blob: bytes = b"") -> Any:
    head = json.dumps(doc).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))} if blob else {}
    return request(port, "POST", "/v2/models/identity/infer", head + blob, headers)


@pytest.mark.parametrize(("what", "datatype", "shape", "data", "words"), CASES, ids=IDS)
def test_a_hostile_shape_is_refused_over_http(
    http_port: int, what: str, datatype: str, shape: list[int], data: bytes, words: str
) -> None:
    doc = {
        "inputs": [
            {
                "name": f"IN_{datatype}",
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    }
    r = _http_infer(http_port, doc, data)
    assert r.status == 400 and words in r.error and f"IN_{datatype}" in r.error


@pytest.mark.parametrize(("what", "datatype", "shape", "data", "words"), CASES, ids=IDS)
def test_a_hostile_shape_is_refused_over_grpc(
    stub: Any, what: str, datatype: str, shape: list[int], data: bytes, words: str
) -> None:
    req = pb.ModelInferRequest(model_name="identity")
    req.inputs.add(name=f"IN_{datatype}", datatype=datatype, shape=shape)
    req.raw_input_contents.append(data)
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in e.value.details() and f"IN_{datatype}" in e.value.details()


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_json_data_nested_past_any_rank_is_refused(http_port: int, datatype: str) -> None:
    leaf = '"a"' if datatype == "BYTES" else "1"
    for depth, ok in ((MAX_RANK, True), (MAX_RANK + 1, False)):
        data = "[" * depth + leaf + "]" * depth
        body = (
            f'{{"inputs":[{{"name":"IN_{datatype}","datatype":"{datatype}","shape":[1,1],'
            f'"data":{data}}}],"outputs":[{{"name":"OUT_{datatype}"}}]}}'
        )
        r = request(http_port, "POST", "/v2/models/identity/infer", body.encode())
        if ok:  # one element, nested as deep as a tensor may be: served
            assert r.status == 200, r.body
        else:
            assert r.status == 400 and f"nested more than {MAX_RANK} levels deep" in r.error


def test_a_json_document_deeper_than_the_parser_allows_is_refused(http_port: int) -> None:
    """orjson parses at most 1024 levels (without recursion in Python); deeper is a 400 before
    anything is built. An unknown field is ignored at any depth within that."""
    doc = json.dumps(
        {
            "inputs": [
                {"name": "IN_INT32", "datatype": "INT32", "shape": [1, 1], "data": [7]}
            ],
            "outputs": [{"name": "OUT_INT32"}],
            "x": "DEEP",
        }
    )
    for depth, ok in ((1023, True), (1024, False)):  # the document itself is one level
        body = doc.replace('"DEEP"', "[" * depth + "]" * depth).encode()
        r = request(http_port, "POST", "/v2/models/identity/infer", body)
        if ok:
            assert r.status == 200, r.body
        else:
            assert r.status == 400 and "depth limit exceeded" in r.error


# ---------------------------------------------------------------------------- at the edges


def _http_decode(shape: list[int], data: Any = None, blob: bytes = b"") -> Any:
    spec: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": shape}
    if data is None:
        spec["parameters"] = {"binary_data_size": len(blob)}
    else:
        spec["data"] = data
    head = orjson.dumps({"inputs": [spec]})
    shm = ShmAccess(None, False)  # type: ignore[arg-type]
    return decode.decode_request(head + blob, len(head) if data is None else None, "m", "", shm)


def _grpc_decode(shape: list[int], blob: bytes = b"") -> Any:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP32", shape=shape)
    req.raw_input_contents.append(blob)
    return convert.decode_request(req, None)


@pytest.mark.parametrize("decoder", [_http_decode, _grpc_decode], ids=["http", "grpc"])
def test_shape_limits_at_the_edge(decoder: Any) -> None:
    decoder([1] * MAX_RANK, blob=b"\0" * 4)  # as many dimensions as numpy allows
    decoder([0, MAX_ELEMENTS - 1])  # huge beside a zero: an empty array numpy can make
    for shape, blob in (([1] * (MAX_RANK + 1), b"\0" * 4), ([0, MAX_ELEMENTS], b"")):
        with pytest.raises(ServerError) as e:
            decoder(shape, blob=blob)
        assert "input 'x'" in e.value.message


def test_json_data_depth_at_the_edge() -> None:
    data: Any = [1.0]
    for _ in range(MAX_RANK - 1):
        data = [data]
    req, _ = _http_decode([1], data)  # MAX_RANK levels
    assert req.inputs[0].data.size == 1
    with pytest.raises(ServerError, match="nested more than 64"):
        _http_decode([1], [data])


# ---------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    "datatype", ["BOOL", "INT8", "UINT8", "INT16", "INT64", "FP16", "FP32", "FP64", "BF16"]
)
def test_json_text_of_an_output_is_at_most_8x_its_binary_size(datatype: str) -> None:
    """What the README promises: a JSON reply is bounded by the outputs' size."""
    from torchtide import dtypes

    dt = dtypes.BY_WIRE[datatype]
    rng = np.random.default_rng(0)
    if datatype == "BOOL":
        arr = np.zeros(10000, np.bool_)  # "false," is the longest
    else:
        arr = rng.integers(0, 256, 10000 * dt.itemsize, dtype=np.uint8).view(dt.numpy)
        if arr.dtype.kind == "f":
            arr = arr[np.isfinite(arr)]
        if arr.dtype.kind == "i":
            arr = np.concatenate([arr, np.full(100, np.iinfo(arr.dtype).min, arr.dtype)])
    text = orjson.dumps(encode._to_json(InferTensor("o", datatype, arr)), option=encode._DUMPS_OPTS)
    assert len(text) <= 8 * arr.nbytes + 2


def _big_input(n: int) -> tuple[dict[str, Any], bytes]:
    x = np.arange(n, dtype=np.float32)
    doc = {
        "inputs": [
            {
                "name": "IN_FP32",
                "datatype": "FP32",
                "shape": [1, n],
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [{"name": "OUT_FP32", "parameters": {"binary_data": False}}],
    }
    return doc, x.tobytes()


def test_large_http_outputs_are_encoded_and_compressed_off_the_loop(
    http_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = ThreadSpy(routes.encode_response)
    monkeypatch.setattr(routes, "encode_response", spy)
    n = OFFLOAD_OUTPUT_BYTES // 4 + 1
    for size in (300, n):  # both large enough to be compressed
        doc, blob = _big_input(size)
        head = json.dumps(doc).encode()
        headers = {"Inference-Header-Content-Length": str(len(head)), "Accept-Encoding": "gzip"}
        r = request(http_port, "POST", "/v2/models/identity/infer", head + blob, headers)
        assert r.status == 200 and r.headers["content-encoding"] == "gzip"
        out = json.loads(gzip.decompress(r.body))["outputs"][0]["data"]
        np.testing.assert_array_equal(out, np.arange(size, dtype=np.float32))
    small, large = spy.threads
    assert small == "torchtide-app" and large != "torchtide-app"


def test_large_grpc_outputs_are_serialized_off_the_loop(
    stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = InferenceService._serialized

    def spy(self: InferenceService, *args: Any) -> bytes:
        threads.append(threading.current_thread().name)
        return real(self, *args)

    monkeypatch.setattr(InferenceService, "_serialized", spy)
    n = OFFLOAD_OUTPUT_BYTES // 4 + 1
    req = pb.ModelInferRequest(model_name="identity")
    req.inputs.add(name="IN_FP32", datatype="FP32", shape=[1, n])
    req.raw_input_contents.append(np.arange(n, dtype=np.float32).tobytes())
    req.outputs.add(name="OUT_FP32")
    for answer in (
        stub.ModelInfer(req, timeout=60),
        next(iter(stub.ModelStreamInfer(iter([req]), timeout=60))).infer_response,
    ):
        out = np.frombuffer(answer.raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(out, np.arange(n, dtype=np.float32))
    assert len(threads) == 2 and "torchtide-app" not in threads
