"""Protobuf <-> core conversions for the gRPC front-end, in one table-driven module.

Inputs arrive as typed `contents` or as `raw_input_contents` (decoded with `np.frombuffer`, no
copy); outputs always leave as `raw_output_contents`. BF16 travels as uint16 raw bits, BYTES as
4-byte little-endian length-prefixed elements. Every malformed tensor is INVALID_ARG naming it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

from torchtide import dtypes
from torchtide.errors import ServerError, Status, invalid_arg
from torchtide.shm import SharedMemoryRegistry
from torchtide.types import Array, InferRequest, InferResponse, InferTensor, RequestedOutput
from torchtide.wire import check_shape, decode_bytes_elements

# The one table from the core's neutral status to the gRPC status code (as Triton maps
# TRITONSERVER_Error codes). Anything not in it is INTERNAL.
GRPC_CODES: dict[Status, grpc.StatusCode] = {
    Status.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Status.INTERNAL: grpc.StatusCode.INTERNAL,
    Status.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    Status.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Status.CANCELLED: grpc.StatusCode.CANCELLED,
    Status.UNKNOWN: grpc.StatusCode.UNKNOWN,
}


def grpc_code(status: Status) -> grpc.StatusCode:
    return GRPC_CODES.get(status, grpc.StatusCode.INTERNAL)


# Which typed `contents` field carries each datatype (FP16 and BF16 have none: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The datatype each contents field is named after (for Triton's mismatch message).
FIELD_TYPE: dict[str, str] = {
    "bool_contents": "BOOL",
    "int_contents": "INT32",
    "int64_contents": "INT64",
    "uint_contents": "UINT32",
    "uint64_contents": "UINT64",
    "fp32_contents": "FP32",
    "fp64_contents": "FP64",
    "bytes_contents": "BYTES",
}

_U32 = struct.Struct("<I")
_SHM_KEYS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")
_RESERVED_PREFIX = "triton_"
_RESERVED = frozenset({"triton_enable_empty_final_response"})


@dataclass(slots=True)
class ShmSpan:
    """A span of a registered region: where an input is read from or an output written to."""

    region: str
    offset: int
    byte_size: int


# ---------------------------------------------------------------------------- parameters


def param_value(p: Any) -> Any:
    """InferParameter / ModelRepositoryParameter -> python value (None when unset)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def params_to_dict(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: param_value(v) for k, v in params.items()}


def set_param(p: Any, value: Any) -> None:
    """python value -> InferParameter (bool before int: bool is an int in python)."""
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        if value >= 2**63:
            p.uint64_param = value
        else:
            p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    elif isinstance(value, bytes):
        p.string_param = value.decode("utf-8", "replace")
    else:
        p.string_param = str(value)


# Triton's typing of request-level parameters (grpc infer_handler.cc SetInferenceRequestMetadata).
_PARAM_TYPES: dict[str, tuple[str, ...]] = {
    "sequence_id": ("int64_param", "string_param"),
    "sequence_start": ("bool_param",),
    "sequence_end": ("bool_param",),
    "priority": ("int64_param", "uint64_param"),
    "timeout": ("int64_param",),
    "triton_enable_empty_final_response": ("bool_param",),
}
_PLAIN_TYPES = ("int64_param", "bool_param", "string_param")


def _request_params(req: Any, rid: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, p in req.parameters.items():
        if key.startswith(_RESERVED_PREFIX) and key not in _RESERVED:
            raise invalid_arg(
                f"[request id: {rid}] parameter keys starting with 'triton_' are reserved for "
                f"Triton usage. Only the following keys starting with 'triton_' are allowed: "
                + " ".join(sorted(_RESERVED))
            )
        which = p.WhichOneof("parameter_choice")
        allowed = _PARAM_TYPES.get(key, _PLAIN_TYPES)
        if which not in allowed:
            expected = (
                allowed[0]
                if len(allowed) == 1
                else (
                    ", ".join(allowed[:-1])
                    + ("," if len(allowed) > 2 else "")
                    + " or "
                    + allowed[-1]
                )
            )
            raise invalid_arg(f"invalid value type for '{key}' parameter, expected {expected}.")
        value = getattr(p, which)
        if key == "priority" and value < 0:
            raise invalid_arg("invalid value for 'priority', expected value >= 0.")
        out[key] = value
    return out


def _shm_params(params: Mapping[str, Any], tensor: str) -> ShmSpan | None:
    """Triton's shared_memory_region / _offset / _byte_size triple, checked as Triton does."""
    region_p = params.get("shared_memory_region")
    if region_p is None:
        for key in _SHM_KEYS[1:]:
            if key in params:
                raise invalid_arg(
                    f"'{key}' can not be specified without 'shared_memory_region' parameter "
                    f"for tensor '{tensor}'"
                )
        return None
    if region_p.WhichOneof("parameter_choice") != "string_param":
        raise invalid_arg(
            f"invalid value type for 'shared_memory_region' parameter for tensor '{tensor}', "
            "expected string_param."
        )
    values = [0, -1]
    for i, key in enumerate(_SHM_KEYS[1:]):
        p = params.get(key)
        if p is None:
            continue
        which = p.WhichOneof("parameter_choice")
        if which not in ("int64_param", "uint64_param"):
            raise invalid_arg(
                f"invalid value type for '{key}' parameter for tensor '{tensor}', "
                "expected int64_param."
            )
        values[i] = getattr(p, which)
    if values[1] < 0:
        raise invalid_arg(
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' "
            f"parameter for tensor '{tensor}'"
        )
    return ShmSpan(region_p.string_param, values[0], values[1])


# ---------------------------------------------------------------------------- inputs


def _count(shape: Any, name: str, model: str) -> int:
    n = 1
    for d in shape:
        if d < 0:
            raise invalid_arg(
                f"unexpected shape for input '{name}' for model '{model}': "
                f"dimension {d} is negative (got [{','.join(map(str, shape))}])"
            )
        n *= d
    check_shape(name, shape)
    return n


def parse_bytes_tensor(buf: bytes | memoryview, count: int, name: str, model: str) -> Array:
    """4-byte little-endian length-prefixed elements -> object array of `bytes` (the same
    decoder and messages as HTTP)."""
    return decode_bytes_elements(name, (count,), buf)


def _from_buffer(
    buf: bytes | memoryview,
    dt: dtypes.DType,
    shape: tuple[int, ...],
    count: int,
    name: str,
    model: str,
) -> Array:
    if dt.itemsize == 0:
        return parse_bytes_tensor(buf, count, name, model).reshape(shape)
    expected = count * dt.itemsize
    if len(buf) != expected:
        raise invalid_arg(
            f"input byte size mismatch for input '{name}' for model '{model}'. "
            f"Expected {expected}, got {len(buf)}"
        )
    return np.frombuffer(buf, dt.numpy).reshape(shape)


def _from_contents(
    contents: Any, dt: dtypes.DType, shape: tuple[int, ...], count: int, name: str, model: str
) -> Array:
    fields = contents.ListFields()
    if len(fields) > 1:
        raise invalid_arg(
            f"unexpected explicit tensor data for input tensor '{name}' for model '{model}': "
            f"more than one contents field is set ({', '.join(f.name for f, _ in fields)})"
        )
    expected = CONTENTS_FIELD.get(dt.wire)
    if expected is None:
        raise invalid_arg(
            f"input '{name}' for model '{model}' has datatype {dt.wire}, which has no typed "
            "contents field; send it in raw_input_contents"
        )
    values: Any = fields[0][1] if fields else ()
    if fields and fields[0][0].name != expected:
        raise invalid_arg(
            f"unexpected explicit tensor data for input tensor '{name}' for model '{model}' of "
            f"type '{FIELD_TYPE[fields[0][0].name]}', expected datatype '{dt.wire}'"
        )
    if len(values) != count:
        raise invalid_arg(
            f"unexpected number of elements for input '{name}' for model '{model}': the shape "
            f"[{','.join(map(str, shape))}] asks for {count}, contents hold {len(values)}"
        )
    if dt.itemsize == 0:
        arr = np.empty(count, dtype=np.object_)
        arr[:] = list(values)
    elif expected in ("int_contents", "uint_contents") and dt.itemsize < 4:
        # Like Triton: the low bytes of each 32-bit element.
        wide = np.asarray(values, dtype=np.int32 if expected == "int_contents" else np.uint32)
        arr = wide.astype(dt.numpy)
    else:
        arr = np.asarray(values, dtype=dt.numpy)
    return arr.reshape(shape)


def decode_request(
    req: Any, shm: SharedMemoryRegistry | None
) -> tuple[InferRequest, dict[str, ShmSpan]]:
    """ModelInferRequest -> InferRequest (+ the outputs the client wants in shared memory).
    `shm` is None when client shared memory is not allowed."""
    model = req.model_name
    raws = req.raw_input_contents
    nraw = len(raws)
    index = 0
    inputs: list[InferTensor] = []
    for t in req.inputs:
        name = t.name
        dt = dtypes.BY_WIRE.get(t.datatype)
        if dt is None:
            raise invalid_arg(
                f"invalid datatype '{t.datatype}' for input '{name}' for model '{model}'"
            )
        shape = tuple(t.shape)
        count = _count(shape, name, model)
        region = _shm_params(t.parameters, name) if t.parameters else None
        if region is not None:
            if t.HasField("contents"):
                raise invalid_arg(
                    f"unexpected 'content' provided when using shared memory for input tensor "
                    f"'{name}' for model '{model}'"
                )
            view = _require_shm(shm).view(region.region, region.offset, region.byte_size)
            data = _from_buffer(view, dt, shape, count, name, model)
        elif t.HasField("contents"):
            if nraw:
                raise invalid_arg(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{name}' for model '{model}'"
                )
            data = _from_contents(t.contents, dt, shape, count, name, model)
        elif index < nraw:
            data = _from_buffer(raws[index], dt, shape, count, name, model)
            index += 1
        else:
            raise invalid_arg(
                f"unable to find data for input tensor '{name}' for model '{model}' in request."
            )
        inputs.append(InferTensor(name, t.datatype, data))
    if index != nraw:
        raise invalid_arg(
            f"the request for model '{model}' has {nraw} raw_input_contents but only {index} "
            "inputs take their data from it"
        )
    rid = req.id
    outputs: list[RequestedOutput] | None = None
    shm_out: dict[str, ShmSpan] = {}
    if req.outputs:
        outputs = []
        for o in req.outputs:
            k = 0
            if o.parameters:
                cp = o.parameters.get("classification")
                if cp is not None:
                    k = int(param_value(cp) or 0)
                region = _shm_params(o.parameters, o.name)
                if region is not None:
                    _require_shm(shm).view(region.region, region.offset, region.byte_size)
                    shm_out[o.name] = region
            outputs.append(RequestedOutput(o.name, k))
    params = _request_params(req, rid or "<id_unknown>") if req.parameters else {}
    request = InferRequest(model, inputs, req.model_version, rid, outputs, params)
    return request, shm_out


def _require_shm(shm: SharedMemoryRegistry | None) -> SharedMemoryRegistry:
    if shm is None:
        raise shm_refused()
    return shm


# The same words as the HTTP front-end's, so the refusal reads the same on both protocols.
CLIENT_SHM_DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm' "
    "(--allow-client-shm=true) to enable it."
)


def shm_refused() -> ServerError:
    return ServerError(Status.UNSUPPORTED, CLIENT_SHM_DISABLED)


# ---------------------------------------------------------------------------- outputs


def tensor_bytes(t: InferTensor) -> bytes:
    """An output's wire bytes: raw little-endian values, or length-prefixed BYTES elements."""
    data = t.data
    if t.datatype == "BYTES":
        parts: list[bytes] = []
        for v in data.reshape(-1):
            b = v if isinstance(v, bytes) else (v.encode() if isinstance(v, str) else bytes(v))
            parts.append(_U32.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return data.tobytes()


def encode_response(
    resp: InferResponse, shm_out: Mapping[str, ShmSpan], shm: SharedMemoryRegistry | None
) -> Any:
    """InferResponse -> ModelInferResponse; outputs bound for shared memory get an empty raw
    entry (so indices stay aligned, as Triton does) and their bytes go to the region."""
    out = pb.ModelInferResponse(
        model_name=resp.model_name, model_version=resp.model_version, id=resp.id
    )
    outputs = out.outputs
    raws = out.raw_output_contents
    for t in resp.outputs:
        outputs.add(name=t.name, datatype=t.datatype, shape=t.data.shape)
        data = tensor_bytes(t)
        region = shm_out.get(t.name) if shm_out else None
        if region is not None:
            _require_shm(shm).write(region.region, region.offset, region.byte_size, data, t.name)
            raws.append(b"")
        else:
            raws.append(data)
    for key, value in resp.parameters.items():
        set_param(out.parameters[key], value)
    return out


# ---------------------------------------------------------------------------- other messages


def parse_dict(d: Any, message: Any) -> Any:
    """A core JSON-shaped dict (Triton's HTTP body) -> the matching gRPC message."""
    return json_format.ParseDict(d, message, ignore_unknown_fields=True)
