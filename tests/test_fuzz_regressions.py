"""Inputs the fuzzers (fuzz/, atheris) found that made a decoder raise something other than its
documented error; each test fails before its fix. Replaying them needs no fuzzer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb

from tests.http_util import request
from torchtide.app import AppThread
from torchtide.config import ConfigError, parse_text, validate
from torchtide.errors import ServerError, Status
from torchtide.frontends.grpc.convert import decode_request as grpc_decode
from torchtide.frontends.http.decode import ShmAccess, decode_request, header_length
from torchtide.repository import prepare
from torchtide.shm import SharedMemoryRegistry
from torchtide.warmup import sample_inputs
from torchtide.wire import shape_str

NO_SHM = ShmAccess(SharedMemoryRegistry(), allowed=False)

# ---------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("value", ["\u00b2", "6\u00b3\u00b3\u00b30", "\u00b9\u00b9"])
def test_header_length_superscript_digits_are_a_bad_request(value: str) -> None:
    # fuzz/http_infer: str.isdigit() accepts superscripts (a latin-1 header byte 0xB2, 0xB3 or
    # 0xB9 decodes to one), which int() then refuses with a ValueError.
    with pytest.raises(ServerError) as e:
        header_length(value, 100)
    assert e.value.status is Status.INVALID_ARG
    assert "Inference-Header-Content-Length must be a non-negative integer" in e.value.message


def test_header_length_superscript_over_http_is_400(served: AppThread) -> None:
    reply = request(
        served.app.port("http"),
        "POST",
        "/v2/models/add_sub/infer",
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "\u00b2"},  # sent as the byte 0xB2
    )
    assert reply.status == 400, reply.body
    assert "Inference-Header-Content-Length must be a non-negative integer" in reply.error


@pytest.mark.parametrize("datatype", ["INT64", "UINT64", "INT8"])
def test_json_ints_past_int64_and_negative_are_out_of_range(datatype: str) -> None:
    # fuzz/http_infer: a negative value beside one past int64 max made the exact integer retry
    # ask numpy for int64, which raised OverflowError.
    body = (
        b'{"inputs":[{"name":"i","shape":[2],"datatype":"%s","data":[-1,9223372036854775808]}]}'
        % datatype.encode()
    )
    with pytest.raises(ServerError) as e:
        decode_request(body, None, "m", "", NO_SHM)
    value = "-1" if datatype == "UINT64" else "9223372036854775808"
    assert e.value.message == f"input 'i': value {value} is out of range for {datatype}"


# A shape with a 0 has no elements, so every size check passes; but numpy refuses to make even
# an empty array when the other dimensions multiply past 2**63 bytes, or past 64 dimensions.
HUGE_EMPTY_SHAPES = [
    [0, 34359607294, 536870911],  # fuzz/grpc_infer's crash
    [1, 1, 3, 13, 15, 42, 34359607294, 0, 536870911],
    [0, 2**62, 2],
    [0, 2**63 - 1],
    [1] * 65,
]


@pytest.mark.parametrize("shape", HUGE_EMPTY_SHAPES)
@pytest.mark.parametrize("datatype", ["INT8", "FP64", "BYTES"])
def test_grpc_huge_empty_shape_is_invalid(shape: list[int], datatype: str) -> None:
    # fuzz/grpc_infer: np.frombuffer(b"").reshape(shape) raised ValueError ("array is too big").
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b""])
    request.inputs.add(name="i", datatype=datatype, shape=shape)
    with pytest.raises(ServerError) as e:
        grpc_decode(request, None)
    assert e.value.status is Status.INVALID_ARG
    assert e.value.message.startswith(f"input 'i': shape {shape_str(shape)} ")


@pytest.mark.parametrize("shape", [*HUGE_EMPTY_SHAPES, [0, 2**64 - 1]])
@pytest.mark.parametrize("datatype", ["INT8", "FP64", "BYTES"])
@pytest.mark.parametrize("how", ["data", "binary"])
def test_http_huge_empty_shape_is_invalid(shape: list[int], datatype: str, how: str) -> None:
    spec: dict[str, Any] = {"name": "i", "datatype": datatype, "shape": shape}
    if how == "data":
        spec["data"] = []
    else:
        spec["parameters"] = {"binary_data_size": 0}
    with pytest.raises(ServerError) as e:
        decode_request(json.dumps({"inputs": [spec]}).encode(), None, "m", "", NO_SHM)
    assert e.value.status is Status.INVALID_ARG
    assert e.value.message.startswith(f"input 'i': shape {shape_str(shape)} ")


def test_grpc_huge_empty_shape_over_grpc(served: AppThread) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.app.port('grpc')}")
    request = pb.ModelInferRequest(model_name="add_sub", raw_input_contents=[b"", b""])
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[0, 2**40, 2**30])
    with pytest.raises(grpc.RpcError) as e:
        client._client_stub.ModelInfer(request, timeout=30)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "is too large" in str(e.value.details())
    client.close()


# ---------------------------------------------------------------------------- model config

UNKNOWN_TYPE_CONFIG = """
backend: "python"
input: [{name: "a", data_type: %s, dims: [1]}]
output: {name: "c", data_type: %s, dims: 2}
"""


@pytest.mark.parametrize(("inp", "out"), [("84", "TYPE_INT64"), ("TYPE_FP32", "-3")])
def test_config_data_type_without_a_name_is_a_config_error(
    tmp_path: Path, inp: str, out: str
) -> None:
    # fuzz/model_config: proto3 enums take any number; validate let it through and ModelSpec.of
    # raised ValueError from DataType.Name.
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("")
    (model / "config.pbtxt").write_text(UNKNOWN_TYPE_CONFIG % (inp, out))
    with pytest.raises(ConfigError, match=r"data_type: \S+ is not a data type"):
        prepare("m", model, auto_complete=False)


@pytest.mark.parametrize("value", ["66666666666666666666", "-99999999999", "0x100000000"])
def test_config_enum_number_out_of_int32_is_a_config_error(value: str) -> None:
    # fuzz/model_config: protobuf's text_format range-checks integer fields but not enum numbers;
    # the message's setter then raised a bare ValueError instead of a ParseError.
    text = UNKNOWN_TYPE_CONFIG % (value, "TYPE_FP32")
    with pytest.raises(ConfigError, match=r"^config\.pbtxt: syntax error: Value out of range: "):
        parse_text(text, "config.pbtxt")


@pytest.mark.parametrize("value", ["2.5[", "soon", "-1", "nan", "inf"])
def test_config_execute_timeout_not_a_number_is_a_config_error(tmp_path: Path, value: str) -> None:
    # fuzz/model_config: validate let any string through and the scheduler's float() raised
    # ValueError when the model was instantiated.
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("")
    (model / "config.pbtxt").write_text(
        UNKNOWN_TYPE_CONFIG % ("TYPE_FP32", "TYPE_FP32")
        + f'parameters {{ key: "EXECUTE_TIMEOUT_SECS" value {{ string_value: "{value}" }} }}'
    )
    with pytest.raises(ConfigError, match="parameters 'EXECUTE_TIMEOUT_SECS': must be a number"):
        prepare("m", model, auto_complete=False)


@pytest.mark.parametrize(
    ("dims", "kind"),
    [
        ("[ 3, 21474836484 ]", "random_data"),  # fuzz/model_config: 480 GiB, MemoryError
        ("[ 4611686018427387904, 4 ]", "zero_data"),  # numpy: "array is too big"
        ("[ 65536, 65536 ]", "zero_data"),  # 16 GiB that np.zeros would map lazily
    ],
)
def test_config_warmup_sample_too_large_is_a_config_error(
    tmp_path: Path, dims: str, kind: str
) -> None:
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("")
    (model / "config.pbtxt").write_text(
        UNKNOWN_TYPE_CONFIG
        % ("TYPE_FP32", "TYPE_FP32")
        + f'model_warmup {{ name: "w" batch_size: 1 inputs {{ key: "a" value {{ '
        f"data_type: TYPE_FP32 dims: {dims} {kind}: true }} }} }}"
    )
    with pytest.raises(ConfigError, match=r"model_warmup 'w' input 'a' dims: .* at most 2 GiB"):
        prepare("m", model, auto_complete=False)


def test_config_priority_levels_bounded(tmp_path: Path) -> None:
    # Found by reading the harness's path (BatchPolicy.of): one queue per level, made eagerly;
    # 20 million levels took 19 s and 244 MB, the uint32 maximum would exhaust memory.
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("")
    config = UNKNOWN_TYPE_CONFIG % ("TYPE_FP32", "TYPE_FP32")
    (model / "config.pbtxt").write_text(
        config
        + "max_batch_size: 4 dynamic_batching { priority_levels: 4294967295 default_priority_level: 1 }"
    )
    with pytest.raises(ConfigError, match="priority_levels: 4294967295 is more than"):
        prepare("m", model, auto_complete=False)


def test_warmup_data_type_without_a_name_is_a_config_error(tmp_path: Path) -> None:
    cfg = parse_text(
        UNKNOWN_TYPE_CONFIG
        % ("TYPE_FP32", "TYPE_FP32")
        + 'model_warmup { name: "w" batch_size: 1 inputs { key: "a" value { data_type: 77 '
        "dims: 1 zero_data: true } } }",
        "config.pbtxt",
    )
    with pytest.raises(ConfigError, match="data_type"):
        validate(cfg, "config.pbtxt", 0)
    with pytest.raises(ConfigError, match="data_type"):
        sample_inputs(cfg, cfg.model_warmup[0], tmp_path)
