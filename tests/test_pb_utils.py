"""Tests for torchtide's in-process ``triton_python_backend_utils``."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import triton_python_backend_utils as pb_utils

# --------------------------------------------------------------------------- BYTES


def _object_array(items: list[Any], shape: tuple[int, ...] | None = None) -> npt.NDArray[Any]:
    array: npt.NDArray[Any] = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array.reshape(shape) if shape is not None else array


def test_serialize_exact_layout() -> None:
    encoded = pb_utils.serialize_byte_tensor(_object_array([b"ab", b"", b"xyz"]))
    assert encoded == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00xyz"


def test_serialize_encodes_str_as_utf8_and_other_objects_with_str() -> None:
    encoded = pb_utils.serialize_byte_tensor(_object_array(["é€", 42, b"\xff\x00"]))
    assert encoded is not None
    decoded = pb_utils.deserialize_bytes_tensor(encoded)
    assert list(decoded) == ["é€".encode(), b"42", b"\xff\x00"]


def test_serialize_row_major_order_of_2d_and_fortran_arrays() -> None:
    items = [b"a", b"b", b"c", b"d", b"e", b"f"]
    c_order = _object_array(items, (2, 3))
    f_order = np.asfortranarray(c_order)
    assert not f_order.flags.c_contiguous
    expected = b"".join(len(x).to_bytes(4, "little") + x for x in items)
    assert pb_utils.serialize_byte_tensor(c_order) == expected
    assert pb_utils.serialize_byte_tensor(f_order) == expected
    assert pb_utils.serialize_byte_tensor(c_order.T) == b"".join(
        len(x).to_bytes(4, "little") + x for x in [b"a", b"d", b"b", b"e", b"c", b"f"]
    )


def test_serialize_bytes_dtype_and_unsupported_dtype() -> None:
    assert pb_utils.serialize_byte_tensor(np.array([b"hi", b"x"])) == (
        b"\x02\x00\x00\x00hi\x01\x00\x00\x00x"
    )
    assert pb_utils.serialize_byte_tensor(np.array([1, 2], dtype=np.int32)) is None


def test_serialize_empty_tensors() -> None:
    for empty in (np.empty((0,), dtype=np.object_), np.empty((2, 0), dtype=np.object_)):
        assert pb_utils.serialize_byte_tensor(empty) == b""
    decoded = pb_utils.deserialize_bytes_tensor(b"")
    assert decoded.dtype == np.object_
    assert decoded.shape == (0,)


def test_deserialize_accepts_buffers_and_rejects_truncation() -> None:
    encoded = b"\x01\x00\x00\x00z\x00\x00\x00\x00"
    for buffer in (
        encoded,
        bytearray(encoded),
        memoryview(encoded),
        np.frombuffer(encoded, np.uint8),
    ):
        decoded = pb_utils.deserialize_bytes_tensor(buffer)
        assert list(decoded) == [b"z", b""]
        assert all(type(x) is bytes for x in decoded)
    with pytest.raises(pb_utils.TritonModelException, match="incomplete length"):
        pb_utils.deserialize_bytes_tensor(b"\x01\x00")
    with pytest.raises(pb_utils.TritonModelException, match="beyond buffer"):
        pb_utils.deserialize_bytes_tensor(b"\x05\x00\x00\x00abc")


@st.composite
def _bytes_tensors(draw: st.DrawFn) -> tuple[list[bytes], tuple[int, ...]]:
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    count = math.prod(shape)
    items = draw(st.lists(st.binary(max_size=40), min_size=count, max_size=count))
    return items, shape


@settings(database=None, max_examples=200)
@given(_bytes_tensors())
def test_bytes_round_trip_property(case: tuple[list[bytes], tuple[int, ...]]) -> None:
    items, shape = case
    array = _object_array(items, shape)
    encoded = pb_utils.serialize_byte_tensor(array)
    assert encoded is not None
    assert len(encoded) == sum(4 + len(x) for x in items)
    decoded = pb_utils.deserialize_bytes_tensor(encoded)
    assert decoded.dtype == np.object_
    assert decoded.shape == (len(items),)
    assert list(decoded) == items
    assert np.array_equal(decoded.reshape(shape), array)


@settings(database=None, max_examples=100)
@given(st.lists(st.text(max_size=20), max_size=10))
def test_str_round_trip_property(texts: list[str]) -> None:
    encoded = pb_utils.serialize_byte_tensor(_object_array(list(texts)))
    assert encoded is not None
    assert [x.decode("utf-8") for x in pb_utils.deserialize_bytes_tensor(encoded)] == texts


# --------------------------------------------------------------------------- dtypes

_TABLE: list[tuple[str, int, Any]] = [
    ("TYPE_BOOL", 1, np.bool_),
    ("TYPE_UINT8", 2, np.uint8),
    ("TYPE_UINT16", 3, np.uint16),
    ("TYPE_UINT32", 4, np.uint32),
    ("TYPE_UINT64", 5, np.uint64),
    ("TYPE_INT8", 6, np.int8),
    ("TYPE_INT16", 7, np.int16),
    ("TYPE_INT32", 8, np.int32),
    ("TYPE_INT64", 9, np.int64),
    ("TYPE_FP16", 10, np.float16),
    ("TYPE_FP32", 11, np.float32),
    ("TYPE_FP64", 12, np.float64),
    ("TYPE_STRING", 13, np.object_),
]


@pytest.mark.parametrize(("name", "code", "np_type"), _TABLE)
def test_dtype_tables_both_directions(name: str, code: int, np_type: Any) -> None:
    assert pb_utils.triton_to_numpy_type(code) is np_type
    assert pb_utils.numpy_to_triton_type(np_type) == code
    assert pb_utils.numpy_to_triton_type(np.dtype(np_type)) == code
    expected_string_type = bool if name == "TYPE_BOOL" else np_type
    assert pb_utils.triton_string_to_numpy(name) is expected_string_type
    assert pb_utils.numpy_to_triton_type(pb_utils.triton_string_to_numpy(name)) == code


def test_dtype_codes_and_special_cases() -> None:
    codes = [
        pb_utils.TRITONSERVER_TYPE_INVALID,
        pb_utils.TRITONSERVER_TYPE_BOOL,
        pb_utils.TRITONSERVER_TYPE_UINT8,
        pb_utils.TRITONSERVER_TYPE_UINT16,
        pb_utils.TRITONSERVER_TYPE_UINT32,
        pb_utils.TRITONSERVER_TYPE_UINT64,
        pb_utils.TRITONSERVER_TYPE_INT8,
        pb_utils.TRITONSERVER_TYPE_INT16,
        pb_utils.TRITONSERVER_TYPE_INT32,
        pb_utils.TRITONSERVER_TYPE_INT64,
        pb_utils.TRITONSERVER_TYPE_FP16,
        pb_utils.TRITONSERVER_TYPE_FP32,
        pb_utils.TRITONSERVER_TYPE_FP64,
        pb_utils.TRITONSERVER_TYPE_BYTES,
        pb_utils.TRITONSERVER_TYPE_BF16,
    ]
    assert codes == list(range(15))
    # BF16 has no numpy type; INVALID and unknown codes neither.
    assert pb_utils.triton_to_numpy_type(14) is None
    assert pb_utils.triton_to_numpy_type(0) is None
    assert pb_utils.triton_to_numpy_type(99) is None
    with pytest.raises(KeyError):
        pb_utils.triton_string_to_numpy("TYPE_BF16")
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.numpy_to_triton_type(np.dtype("S7")) == 13
    assert pb_utils.numpy_to_triton_type(np.longlong) == 9
    assert pb_utils.numpy_to_triton_type(bool) == 1
    for unsupported in (np.complex64, np.str_, None, "not a dtype"):
        assert pb_utils.numpy_to_triton_type(unsupported) is None


# --------------------------------------------------------------------------- Tensor


def test_tensor_wraps_array_without_copy() -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = pb_utils.Tensor("INPUT0", data)
    assert tensor.as_numpy() is data
    assert tensor.name() == "INPUT0"
    assert tensor.shape() == [3, 4]
    assert tensor.triton_dtype() == pb_utils.TRITONSERVER_TYPE_FP32
    assert tensor.is_cpu()
    data[0, 0] = 42.0
    assert tensor.as_numpy()[0, 0] == 42.0


def test_tensor_readonly_array_and_dlpack_share_memory() -> None:
    raw = bytearray(np.arange(4, dtype=np.int32).tobytes())
    writable = np.frombuffer(raw, dtype=np.int32)
    readonly = np.frombuffer(bytes(raw), dtype=np.int32)
    for array in (writable, readonly):
        tensor = pb_utils.Tensor("x", array)
        assert tensor.as_numpy() is array
        via_capsule = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
        via_protocol = torch.utils.dlpack.from_dlpack(tensor)
        assert via_capsule.data_ptr() == array.ctypes.data
        assert via_protocol.data_ptr() == array.ctypes.data
        assert via_capsule.tolist() == [0, 1, 2, 3]
    assert tensor.__dlpack_device__() == (1, 0)


def test_tensor_from_dlpack_numpy_and_torch_share_memory() -> None:
    array = np.arange(6, dtype=np.int64).reshape(2, 3)
    from_np = pb_utils.Tensor.from_dlpack("a", array)
    assert np.shares_memory(from_np.as_numpy(), array)
    assert from_np.triton_dtype() == 9
    t = torch.ones(5, dtype=torch.float16)
    from_torch = pb_utils.Tensor.from_dlpack("b", t)
    assert from_torch.triton_dtype() == 10
    t[0] = 7
    assert from_torch.as_numpy()[0] == 7
    from_capsule = pb_utils.Tensor.from_dlpack("c", torch.zeros(3, dtype=torch.bool).__dlpack__())
    assert from_capsule.triton_dtype() == 1
    with pytest.raises(pb_utils.TritonModelException, match="not contiguous"):
        pb_utils.Tensor.from_dlpack("d", torch.ones(3, 4).T)
    with pytest.raises(pb_utils.TritonModelException, match="DLPack capsule"):
        pb_utils.Tensor.from_dlpack("e", [1, 2, 3])
    with pytest.raises(pb_utils.TritonModelException, match="empty string"):
        pb_utils.Tensor.from_dlpack("", array)


def test_tensor_validation_and_conversions() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="empty string"):
        pb_utils.Tensor("", np.zeros(1))
    with pytest.raises(pb_utils.TritonModelException, match="not supported"):
        pb_utils.Tensor("x", np.zeros(2, dtype=np.complex64))
    listed = pb_utils.Tensor("x", [[1, 2], [3, 4]])
    assert listed.shape() == [2, 2]
    assert listed.as_numpy().tolist() == [[1, 2], [3, 4]]
    strided = np.arange(10, dtype=np.int32)[::2]
    contiguous = pb_utils.Tensor("x", strided).as_numpy()
    assert contiguous.flags.c_contiguous
    assert contiguous.tolist() == [0, 2, 4, 6, 8]
    strings = pb_utils.Tensor("s", _object_array([b"a", b"b"]))
    assert strings.triton_dtype() == pb_utils.TRITONSERVER_TYPE_BYTES
    with pytest.raises(pb_utils.TritonModelException, match="string tensors"):
        strings.to_dlpack()
    with pytest.raises(pb_utils.TritonModelException, match="not a BF16"):
        strings._bf16_bits()


def test_bf16_dlpack_round_trip_with_torch() -> None:
    values = torch.tensor([[1.5, -2.0], [0.25, 3.0]], dtype=torch.bfloat16)
    tensor = pb_utils.Tensor.from_dlpack("bf", values)
    assert tensor.triton_dtype() == pb_utils.TRITONSERVER_TYPE_BF16
    assert tensor.shape() == [2, 2]
    with pytest.raises(pb_utils.TritonModelException, match="BF16"):
        tensor.as_numpy()
    bits = tensor._bf16_bits()
    assert bits.dtype == np.uint16
    assert bits.tolist() == values.view(torch.int16).numpy().view(np.uint16).tolist()
    back = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
    assert back.dtype == torch.bfloat16
    assert torch.equal(back, values)
    assert back.data_ptr() == values.data_ptr()
    assert torch.equal(torch.utils.dlpack.from_dlpack(tensor), values)
    values[0, 0] = 8.0  # shared memory, no copies
    assert bits[0, 0] == torch.tensor(8.0, dtype=torch.bfloat16).view(torch.int16).item()


def test_bf16_from_raw_bits() -> None:
    expected = torch.tensor([1.0, -0.5, 2.0], dtype=torch.bfloat16)
    raw = expected.view(torch.int16).numpy().tobytes()
    readonly_bits = np.frombuffer(raw, dtype=np.uint16)
    tensor = pb_utils.Tensor._from_bf16_bits("bf", readonly_bits)
    assert tensor._bf16_bits() is readonly_bits
    assert tensor.triton_dtype() == 14
    restored = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
    assert restored.dtype == torch.bfloat16
    assert torch.equal(restored, expected)
    again = pb_utils.Tensor.from_dlpack("bf2", tensor)
    assert again.triton_dtype() == 14
    assert np.shares_memory(again._bf16_bits(), readonly_bits)
    with pytest.raises(TypeError):
        pb_utils.Tensor._from_bf16_bits("bf", np.zeros(2, dtype=np.float32))


# --------------------------------------------------------------------------- requests


def test_inference_request_accessors() -> None:
    x = pb_utils.Tensor("x", np.zeros(2, dtype=np.float32))
    trace = pb_utils.InferenceTrace("ctx")
    request = pb_utils.InferenceRequest(
        model_name="m",
        inputs=[x],
        requested_output_names=["out", "out2"],
        request_id="r1",
        correlation_id=7,
        model_version=3,
        flags=pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
        timeout=100,
        trace=trace,
        parameters={"a": 1, "b": "two", "c": True},
    )
    assert request.inputs() == [x]
    assert request.inputs()[0] is x
    assert request.model_name() == "m"
    assert request.model_version() == 3
    assert request.requested_output_names() == {"out", "out2"}
    assert request.request_id() == "r1"
    assert request.correlation_id() == 7
    assert request.flags() == 1
    assert request.timeout() == 100
    assert request.trace() is trace
    assert request.trace().get_context() == "ctx"
    assert json.loads(request.parameters()) == {"a": 1, "b": "two", "c": True}
    assert pb_utils.get_input_tensor_by_name(request, "x") is x
    assert pb_utils.get_input_tensor_by_name(request, "missing") is None
    request.set_flags(3)
    assert request.flags() == 3
    request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
    assert request._release_flags == 2


def test_inference_request_defaults_and_validation() -> None:
    request = pb_utils.InferenceRequest()
    assert request.parameters() == "{}"
    assert request.inputs() == []
    assert request.requested_output_names() == set()
    assert request.correlation_id() == 0
    assert request.trace().get_context() is None
    assert request._release_flags == pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL
    assert pb_utils.InferenceRequest(correlation_id="seq-1").correlation_id() == "seq-1"
    assert pb_utils.InferenceRequest(parameters='{"k": 1}').parameters() == '{"k": 1}'
    with pytest.raises(pb_utils.TritonModelException, match="Correlation ID"):
        pb_utils.InferenceRequest(correlation_id=1.5)  # type: ignore[arg-type]
    with pytest.raises(pb_utils.TritonModelException, match="values to have type"):
        pb_utils.InferenceRequest(parameters={"k": 1.5})
    with pytest.raises(pb_utils.TritonModelException, match="keys to have type str"):
        pb_utils.InferenceRequest(parameters={1: "v"})  # type: ignore[dict-item]
    with pytest.raises(pb_utils.TritonModelException, match="JSON"):
        pb_utils.InferenceRequest(parameters="[1]")
    with pytest.raises(pb_utils.TritonModelException, match="should not be empty"):
        pb_utils.InferenceRequest(requested_output_names=[""])
    with pytest.raises(TypeError):
        pb_utils.InferenceRequest(inputs=[np.zeros(1)])  # type: ignore[list-item]


def test_is_cancelled_via_hook() -> None:
    request = pb_utils.InferenceRequest()
    assert request.is_cancelled() is False
    cancelled = threading.Event()
    request._cancel_check = cancelled.is_set
    assert request.is_cancelled() is False
    cancelled.set()
    assert request.is_cancelled() is True


def test_response_sender_via_sink() -> None:
    request = pb_utils.InferenceRequest()
    with pytest.raises(pb_utils.TritonModelException, match="decoupled"):
        request.get_response_sender()
    sent: list[tuple[pb_utils.InferenceResponse | None, int]] = []
    request._response_sink = lambda response, flags: sent.append((response, flags))
    request._cancel_check = lambda: True
    sender = request.get_response_sender()
    assert request.get_response_sender() is sender
    assert sender.is_cancelled() is True
    first = pb_utils.InferenceResponse([pb_utils.Tensor("y", np.ones(1))])
    sender.send(first)
    sender.send(pb_utils.InferenceResponse())
    with pytest.raises(pb_utils.TritonModelException, match="Unsupported flag"):
        sender.send(first, flags=4)
    with pytest.raises(pb_utils.TritonModelException, match="must be provided"):
        sender.send()
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    assert [f for _, f in sent] == [0, 0, 1]
    assert sent[0][0] is first
    assert sent[2][0] is None
    assert sender._is_closed()
    with pytest.raises(pb_utils.TritonModelException, match="has been closed"):
        sender.send(first)
    assert len(sent) == 3


def test_non_decoupled_sender_rules() -> None:
    sent: list[int] = []
    sender = pb_utils.InferenceResponseSender(lambda r, f: sent.append(f), decoupled=False)
    assert sender.is_cancelled() is False
    with pytest.raises(pb_utils.TritonModelException, match="before sending a response"):
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    sender.send(pb_utils.InferenceResponse())
    with pytest.raises(pb_utils.TritonModelException, match="more than one response"):
        sender.send(pb_utils.InferenceResponse())
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    assert sent == [0, 1]


def test_bls_requires_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    request = pb_utils.InferenceRequest(model_name="other", requested_output_names=["o"])
    with pytest.raises(pb_utils.TritonModelException, match="BLS is not available"):
        request.exec()
    with pytest.raises(pb_utils.TritonModelException, match="BLS is not available"):
        request.async_exec()

    calls: list[tuple[str, bool]] = []

    def executor(req: pb_utils.InferenceRequest, decoupled: bool) -> pb_utils.InferenceResponse:
        calls.append((req.model_name(), decoupled))
        return pb_utils.InferenceResponse([pb_utils.Tensor("o", np.array([1]))])

    monkeypatch.setattr(pb_utils.InferenceRequest, "_bls_executor", executor)
    response = request.exec()
    out = pb_utils.get_output_tensor_by_name(response, "o")
    assert out is not None
    assert out.as_numpy().tolist() == [1]

    async def run_async() -> Any:
        return await request.async_exec(decoupled=True)

    async_response = asyncio.run(run_async())
    assert isinstance(async_response, pb_utils.InferenceResponse)
    assert calls == [("other", False), ("other", True)]


def test_inference_response() -> None:
    y = pb_utils.Tensor("y", np.ones(3, dtype=np.int32))
    response = pb_utils.InferenceResponse(output_tensors=[y], parameters={"p": "v"})
    assert response.output_tensors() == [y]
    assert not response.has_error()
    assert response.error() is None
    assert json.loads(response.parameters()) == {"p": "v"}
    assert pb_utils.get_output_tensor_by_name(response, "y") is y
    assert pb_utils.get_output_tensor_by_name(response, "z") is None
    failed = pb_utils.InferenceResponse(error=pb_utils.TritonError("boom"))
    assert failed.has_error()
    error = failed.error()
    assert error is not None
    assert error.message() == "boom"
    assert failed.output_tensors() == []
    assert failed.parameters() == "{}"
    with pytest.raises(TypeError):
        pb_utils.InferenceResponse(error="boom")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- errors


def test_triton_error_codes() -> None:
    expected = {
        "UNKNOWN": 0,
        "INTERNAL": 1,
        "NOT_FOUND": 2,
        "INVALID_ARG": 3,
        "UNAVAILABLE": 4,
        "UNSUPPORTED": 5,
        "ALREADY_EXISTS": 6,
        "CANCELLED": 7,
    }
    for name, value in expected.items():
        assert getattr(pb_utils.TritonError, name) == value
        assert pb_utils.TritonError("m", value).code() == value
    default = pb_utils.TritonError("no code")
    assert default.code() == pb_utils.TritonError.INTERNAL
    assert default.message() == "no code"
    assert str(default) == "no code"
    with pytest.raises(ValueError):
        pb_utils.TritonError("bad", 42)
    with pytest.raises(TypeError):
        pb_utils.TritonError(None)  # type: ignore[arg-type]
    assert issubclass(pb_utils.TritonModelException, Exception)


# --------------------------------------------------------------------------- config


def _config() -> dict[str, Any]:
    return {
        "name": "m",
        "max_batch_size": 4,
        "input": [{"name": "IN", "data_type": "TYPE_INVALID", "dims": []}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": ["-1", "3"]}],
    }


def test_model_config_batching() -> None:
    original = _config()
    config = pb_utils.ModelConfig(original)
    config.set_max_batch_size(8)
    assert config.as_dict()["max_batch_size"] == 8
    assert original["max_batch_size"] == 4  # the given dict is copied
    with pytest.raises(ValueError) as excinfo:
        config.set_max_batch_size(2)
    assert str(excinfo.value) == (
        "configuration specified max_batch_size 8, but in auto-complete-config "
        "function for model 'm' specified max_batch_size 2"
    )
    config.set_dynamic_batching()
    assert config.as_dict()["dynamic_batching"] == {}
    sequence = pb_utils.ModelConfig(json.dumps({**_config(), "sequence_batching": {}}))
    with pytest.raises(ValueError) as excinfo:
        sequence.set_dynamic_batching()
    assert str(excinfo.value) == (
        "Configuration specified scheduling_choice as 'sequence_batching', but "
        "auto-complete-config function for model 'm' tries to set scheduling_choice as "
        "'dynamic_batching'"
    )


def test_model_config_add_input_output() -> None:
    config = pb_utils.ModelConfig(_config())
    config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [3], "optional": True})
    config.add_input({"name": "IN2", "data_type": "TYPE_INT64", "dims": [1]})
    config.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1, 3]})
    config.add_output({"name": "OUT2", "data_type": "TYPE_STRING", "dims": [1]})
    as_dict = config.as_dict()
    assert as_dict["input"] == [
        {"name": "IN", "data_type": "TYPE_FP32", "dims": [3], "optional": True},
        {"name": "IN2", "data_type": "TYPE_INT64", "dims": [1]},
    ]
    assert [o["name"] for o in as_dict["output"]] == ["OUT", "OUT2"]
    assert pb_utils.get_input_config_by_name(as_dict, "IN2") == as_dict["input"][1]
    assert pb_utils.get_output_config_by_name(as_dict, "OUT2") == as_dict["output"][1]
    assert pb_utils.get_input_config_by_name(as_dict, "nope") is None
    assert pb_utils.get_output_config_by_name({}, "OUT") is None


@pytest.mark.parametrize(
    ("call", "tensor", "message"),
    [
        (
            "add_input",
            {"name": "IN2", "dims": [1]},
            "input 'IN2' in auto-complete-config function for model 'm' is missing "
            "'data_type' property.",
        ),
        (
            "add_input",
            {"name": "IN2", "data_type": "TYPE_FP32"},
            "input 'IN2' in auto-complete-config function for model 'm' is missing "
            "'dims' property.",
        ),
        (
            "add_input",
            {"data_type": "TYPE_FP32", "dims": [1]},
            "input in auto-complete-config function for model 'm' is missing 'name' property.",
        ),
        (
            "add_input",
            {"name": "IN2", "data_type": "TYPE_FP32", "dims": [1], "format": "x"},
            "input 'IN2' in auto-complete-config function for model 'm' contains property "
            "other than 'name', 'data_type', 'dims' and 'optional'.",
        ),
        (
            "add_output",
            {"name": "O", "data_type": "TYPE_FP32", "dims": [1], "optional": True},
            "output 'O' in auto-complete-config function for model 'm' contains property "
            "other than 'name', 'data_type' and 'dims'.",
        ),
        (
            "add_output",
            {"name": "O", "data_type": "TYPE_FP32"},
            "output 'O' in auto-complete-config function for model 'm' is missing 'dims' property.",
        ),
        (
            "add_output",
            {"name": "OUT", "data_type": "TYPE_INT32", "dims": [-1, 3]},
            "unable to load model 'm', configuration expects datatype TYPE_FP32 for output "
            "'OUT', model provides TYPE_INT32",
        ),
        (
            "add_output",
            {"name": "OUT", "data_type": "TYPE_FP32", "dims": [3]},
            "model 'm', tensor 'OUT': the model expects dims [3] but the model "
            "configuration specifies dims ['-1', '3']",
        ),
    ],
)
def test_model_config_errors(call: str, tensor: dict[str, Any], message: str) -> None:
    config = pb_utils.ModelConfig(_config())
    with pytest.raises(ValueError) as excinfo:
        getattr(config, call)(tensor)
    assert str(excinfo.value) == message


def test_model_config_input_conflicts() -> None:
    config = pb_utils.ModelConfig(_config())
    config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [2], "optional": False})
    with pytest.raises(ValueError, match="configuration expects datatype TYPE_FP32 for input"):
        config.add_input({"name": "IN", "data_type": "TYPE_INT8", "dims": [2]})
    with pytest.raises(ValueError, match="the model expects dims \\[4\\]"):
        config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [4]})
    with pytest.raises(ValueError, match="the model expects optional True"):
        config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [2], "optional": True})


def test_model_config_transaction_policy() -> None:
    config = pb_utils.ModelConfig({"name": "m"})
    assert config.as_dict()["input"] == []
    assert not pb_utils.using_decoupled_model_transaction_policy(config.as_dict())
    config.set_model_transaction_policy({"decoupled": True})
    assert config.as_dict()["model_transaction_policy"] == {"decoupled": True}
    assert pb_utils.using_decoupled_model_transaction_policy(config.as_dict())
    config.set_model_transaction_policy({"decoupled": True})
    with pytest.raises(ValueError) as excinfo:
        config.set_model_transaction_policy({"decoupled": False})
    assert str(excinfo.value) == (
        "trying to change decoupled property in auto-complete-config for model 'm', "
        "which is already set to 'True'."
    )
    with pytest.raises(ValueError, match="contains property other than 'decoupled'"):
        config.set_model_transaction_policy({"other": 1})
    assert not pb_utils.using_decoupled_model_transaction_policy({"model_transaction_policy": {}})


# --------------------------------------------------------------------------- a model


class TritonPythonModel:
    """A Triton-style model, written as it would be for NVIDIA Triton."""

    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        auto_complete_model_config.add_input(
            {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}
        )
        auto_complete_model_config.add_input(
            {"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]}
        )
        auto_complete_model_config.add_output(
            {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}
        )
        auto_complete_model_config.add_output(
            {"name": "UPPER", "data_type": "TYPE_STRING", "dims": [1]}
        )
        auto_complete_model_config.set_max_batch_size(0)
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        out_config = pb_utils.get_output_config_by_name(self.model_config, "OUTPUT0")
        assert out_config is not None
        self.out_dtype = pb_utils.triton_string_to_numpy(out_config["data_type"])
        pb_utils.Logger.log_info("initialized")

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            text = pb_utils.get_input_tensor_by_name(request, "TEXT")
            if in0 is None or text is None:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(
                            "missing input", pb_utils.TritonError.INVALID_ARG
                        )
                    )
                )
                continue
            doubled = (in0.as_numpy() * 2).astype(self.out_dtype)
            upper = np.array([s.upper() for s in text.as_numpy().ravel()], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUTPUT0", doubled),
                        pb_utils.Tensor("UPPER", upper),
                    ]
                )
            )
        return responses


def test_triton_style_model(caplog: pytest.LogCaptureFixture) -> None:
    config = TritonPythonModel.auto_complete_config(pb_utils.ModelConfig({"name": "double"}))
    model = TritonPythonModel()
    with caplog.at_level(logging.INFO, logger="torchtide.model"):
        model.initialize({"model_config": json.dumps(config.as_dict())})
    assert [r.getMessage() for r in caplog.records] == ["initialized"]

    good = pb_utils.InferenceRequest(
        inputs=[
            pb_utils.Tensor("INPUT0", np.array([1.0, 2.5], dtype=np.float32)),
            pb_utils.Tensor("TEXT", _object_array([b"abc"])),
        ]
    )
    bad = pb_utils.InferenceRequest(inputs=[])
    ok, failed = model.execute([good, bad])
    out = pb_utils.get_output_tensor_by_name(ok, "OUTPUT0")
    upper = pb_utils.get_output_tensor_by_name(ok, "UPPER")
    assert out is not None and upper is not None
    assert out.as_numpy().tolist() == [2.0, 5.0]
    assert out.triton_dtype() == pb_utils.TRITONSERVER_TYPE_FP32
    assert list(upper.as_numpy()) == [b"ABC"]
    assert failed.has_error()
    assert failed.error().code() == pb_utils.TritonError.INVALID_ARG


# --------------------------------------------------------------------------- logging


def test_logger_routes_to_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="torchtide.model"):
        pb_utils.Logger.log("plain")
        pb_utils.Logger.log("warned", pb_utils.Logger.WARNING)
        pb_utils.Logger.log("via enum", pb_utils.Logger.LogLevel.ERROR)
        pb_utils.Logger.log_info("info")
        pb_utils.Logger.log_warn("warn")
        pb_utils.Logger.log_error("error")
        pb_utils.Logger.log_verbose("verbose")
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        ("torchtide.model", logging.INFO, "plain"),
        ("torchtide.model", logging.WARNING, "warned"),
        ("torchtide.model", logging.ERROR, "via enum"),
        ("torchtide.model", logging.INFO, "info"),
        ("torchtide.model", logging.WARNING, "warn"),
        ("torchtide.model", logging.ERROR, "error"),
        ("torchtide.model", logging.DEBUG, "verbose"),
    ]
    assert all(r.filename == "test_pb_utils.py" for r in caplog.records)
    with pytest.raises(ValueError):
        pb_utils.Logger.log("bad", 17)


# --------------------------------------------------------------------------- metrics


def test_metric_counter_gauge_histogram() -> None:
    counter_family = pb_utils.MetricFamily(
        "test_requests_total", "requests", pb_utils.MetricFamily.COUNTER
    )
    counter = counter_family.Metric(labels={"model": "m"})
    same = counter_family.Metric(labels={"model": "m"})
    counter.increment(2)
    same.increment(0.5)
    assert counter.value() == 2.5
    with pytest.raises(pb_utils.TritonModelException, match="non-negative"):
        counter.increment(-1)
    with pytest.raises(pb_utils.TritonModelException, match="does not support Set"):
        counter.set(1)
    with pytest.raises(pb_utils.TritonModelException, match="does not support Observe"):
        counter.observe(1)

    gauge = pb_utils.MetricFamily("test_gauge", "g", pb_utils.MetricFamily.GAUGE).Metric()
    gauge.set(10)
    gauge.increment(-3)
    assert gauge.value() == 7

    hist_family = pb_utils.MetricFamily("test_latency", "h", pb_utils.MetricFamily.HISTOGRAM)
    with pytest.raises(pb_utils.TritonModelException, match="Missing required buckets"):
        hist_family.Metric()
    with pytest.raises(pb_utils.TritonModelException, match="Unexpected buckets"):
        counter_family.Metric(buckets=[1.0])
    with pytest.raises(pb_utils.TritonModelException, match="Labels must be a dictionary"):
        counter_family.Metric(labels=["x"])  # type: ignore[arg-type]
    hist = hist_family.Metric(buckets=[1.0, 5.0])
    for v in (0.5, 2.0, 7.0, 1.0):
        hist.observe(v)
    assert hist._histogram() == ([1.0, 5.0], [2, 1, 1], 4, 10.5)
    with pytest.raises(pb_utils.TritonModelException, match="does not support Value"):
        hist.value()
    with pytest.raises(pb_utils.TritonModelException, match="does not support Increment"):
        hist.increment(1)


def test_metric_thread_safety() -> None:
    metric = pb_utils.MetricFamily("test_concurrent", "c", pb_utils.MetricFamily.COUNTER).Metric()

    def work() -> None:
        for _ in range(2000):
            metric.increment(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metric.value() == 16000


# --------------------------------------------------------------------------- model control


def test_model_control_requires_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(pb_utils.TritonModelException, match="not available in torchtide yet"):
        pb_utils.load_model("m")
    with pytest.raises(pb_utils.TritonModelException, match="not available in torchtide yet"):
        pb_utils.unload_model("m")
    with pytest.raises(pb_utils.TritonModelException, match="not available in torchtide yet"):
        pb_utils.is_model_ready("m")
    loaded: list[tuple[str, str, Any]] = []
    hooks = pb_utils.model_control_hooks
    monkeypatch.setattr(hooks, "load_model", lambda n, c, f: loaded.append((n, c, f)))
    monkeypatch.setattr(hooks, "is_model_ready", lambda n, v: n == "m" and v == "1")
    pb_utils.load_model(model_name="m", config="{}")
    assert loaded == [("m", "{}", None)]
    assert pb_utils.is_model_ready(model_name="m", model_version="1") is True
    assert pb_utils.is_model_ready("other") is False
