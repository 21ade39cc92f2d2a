"""KServe V2 inference request bodies -> the core's InferRequest (+ how to send outputs back).

JSON header + optional binary tensor data (Triton's binary tensor extension), raw binary
requests, and inputs in system shared memory. Only the JSON header is parsed as JSON; binary
tensors become numpy views of the request body (`np.frombuffer`, no copy).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from torchtide import dtypes
from torchtide.config import ModelConfig, ModelSpec
from torchtide.errors import ServerError, Status
from torchtide.frontends.http.errors import CLIENT_SHM_DISABLED, bad_request
from torchtide.shm import SharedMemoryRegistry
from torchtide.types import Array, InferRequest, InferTensor, RequestedOutput
from torchtide.wire import MAX_RANK, check_shape, decode_bytes_elements

LENGTH_PREFIX = struct.Struct("<I")  # BYTES elements on the wire


@dataclass(slots=True)
class OutputPlan:
    """How each output goes back: binary or JSON, or into a shared-memory region."""

    default_binary: bool = False
    binary: dict[str, bool] = field(default_factory=dict)
    shm: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # region, offset, size
    echo_id: bool = False

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.default_binary)


class ShmAccess:
    """What the codec needs to reach client shared memory, and whether it may."""

    __slots__ = ("allowed", "registry")

    def __init__(self, registry: SharedMemoryRegistry, allowed: bool) -> None:
        self.registry = registry
        self.allowed = allowed

    def check(self) -> SharedMemoryRegistry:
        if not self.allowed:
            raise ServerError(Status.UNSUPPORTED, CLIENT_SHM_DISABLED)
        return self.registry


def header_length(header: str | None, size: int) -> int | None:
    """The JSON header's length from Inference-Header-Content-Length: None when the header is
    absent (the body is all JSON), 0 for a raw binary request."""
    if header is None:
        return None
    header = header.strip()
    if not (header.isascii() and header.isdigit()):  # isdigit alone takes '²', int() does not
        raise bad_request(
            f"Inference-Header-Content-Length must be a non-negative integer, got '{header}'"
        )
    length = int(header)
    if length > size:
        raise bad_request(
            f"Inference-Header-Content-Length {length} is larger than the request body "
            f"of {size} bytes"
        )
    return length


def decode_request(
    body: bytes,
    header_length: int | None,
    model: str,
    version: str,
    shm: ShmAccess,
) -> tuple[InferRequest, OutputPlan]:
    """Decode a JSON (+ binary) inference body. `header_length` None: the body is all JSON."""
    size = len(body)
    if header_length is None or header_length == size:
        json_part: bytes | memoryview = body
        header_length = size
    else:
        json_part = memoryview(body)[:header_length]
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"failed to parse the request JSON: {e}") from None
    if not isinstance(doc, dict):
        raise bad_request(f"the request JSON must be an object, got {_kind(doc)}")

    rid = doc.get("id", "")
    if not isinstance(rid, str):
        raise bad_request(f"'id' must be a string, got {_kind(rid)}")
    plan = OutputPlan(echo_id=bool(rid))
    parameters = _request_parameters(doc.get("parameters"), plan)

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        what = "has no 'inputs' array" if raw_inputs is None else f"'inputs' is {_kind(raw_inputs)}"
        raise bad_request(f"the request JSON {what}; expected a list of input tensors")
    pos = header_length
    inputs: list[InferTensor] = []
    view = memoryview(body)
    for i, spec in enumerate(raw_inputs):
        tensor, pos = _decode_input(spec, i, view, pos, model, shm)
        inputs.append(tensor)
    if pos != size:
        raise bad_request(
            f"unexpected additional input data for model '{model}': {size - pos} bytes after "
            "the last binary input (check each input's 'binary_data_size')"
        )
    outputs = _requested_outputs(doc.get("outputs"), plan, shm)
    request = InferRequest(model, inputs, version, rid, outputs, parameters)
    return request, plan


def decode_raw_request(
    body: bytes, model: str, version: str, config: ModelConfig
) -> tuple[InferRequest, OutputPlan]:
    """Triton's raw binary request (`Inference-Header-Content-Length: 0`): the whole body is the
    one input of a single-input model (batch 1 when the model batches); outputs come back binary.
    A BYTES input takes the body as its one element, without a length prefix."""
    spec = ModelSpec.of(config)
    if len(spec.inputs) != 1:
        raise bad_request(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model with exactly "
            f"one input, but model '{model}' has {len(spec.inputs)}"
        )
    (inp,) = spec.inputs.values()
    dt = dtypes.BY_WIRE[inp.datatype]
    batch = (1,) if spec.max_batch_size > 0 else ()
    if dt.wire == "BYTES":
        arr = np.empty(1, dtype=np.object_)
        arr[0] = bytes(body)
        return (
            InferRequest(model, [InferTensor(inp.name, "BYTES", arr.reshape(*batch, 1))], version),
            OutputPlan(default_binary=True),
        )
    dims = list(inp.dims)
    variable = [i for i, d in enumerate(dims) if d < 0]
    if len(variable) > 1:
        raise bad_request(
            f"a raw binary request cannot tell the shape of input '{inp.name}' of model "
            f"'{model}': its dims {_shape_str(dims)} have more than one variable dimension"
        )
    if variable:
        fixed = math.prod(d for d in dims if d >= 0) * dt.itemsize
        if fixed == 0 or len(body) % fixed:
            raise bad_request(
                f"raw binary input '{inp.name}' has {len(body)} bytes, not a multiple of the "
                f"{fixed} bytes per step that its dims {_shape_str(dims)} of {dt.wire} need"
            )
        dims[variable[0]] = len(body) // fixed
    shape = (*batch, *dims)
    arr = _fixed_from_bytes(inp.name, dt, shape, memoryview(body), 0, len(body))
    return InferRequest(model, [InferTensor(inp.name, dt.wire, arr)], version), OutputPlan(
        default_binary=True
    )


def _request_parameters(raw: Any, plan: OutputPlan) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad_request(f"request 'parameters' must be an object, got {_kind(raw)}")
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "binary_data_output":
            if not isinstance(value, bool):
                raise bad_request(
                    f"Unable to parse 'binary_data_output': expected a bool, got {_kind(value)}"
                )
            plan.default_binary = value
            continue
        if key.startswith("triton_"):
            raise bad_request(
                "parameter keys starting with 'triton_' are reserved for Triton usage and should "
                "not be specified."
            )
        if not isinstance(value, (str, int, float, bool)):
            raise bad_request(
                f"request parameter '{key}' must be a string, integer, number or bool, got "
                f"{_kind(value)}"
            )
        params[key] = value
    return params


def _decode_input(
    spec: Any, index: int, body: memoryview, pos: int, model: str, shm: ShmAccess
) -> tuple[InferTensor, int]:
    if not isinstance(spec, dict):
        raise bad_request(f"inputs[{index}] must be an object, got {_kind(spec)}")
    name = spec.get("name")
    if not isinstance(name, str):
        raise bad_request(f"inputs[{index}] has no string 'name'")
    datatype = spec.get("datatype")
    if not isinstance(datatype, str):
        raise bad_request(f"input '{name}' has no string 'datatype'")
    dt = dtypes.from_wire(datatype)
    if dt is None:
        raise bad_request(
            f"invalid datatype for input {name}: '{datatype}' is not one of "
            f"{', '.join(dtypes.BY_WIRE)}"
        )
    shape = _shape(name, spec.get("shape"))
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad_request(f"input '{name}': 'parameters' must be an object, got {_kind(params)}")

    has_data = "data" in spec
    has_binary = "binary_data_size" in params
    has_shm = "shared_memory_region" in params
    if has_data + has_binary + has_shm != 1:
        given = [
            k
            for k, on in (
                ("'data'", has_data),
                ("'binary_data_size'", has_binary),
                ("'shared_memory_region'", has_shm),
            )
            if on
        ]
        raise bad_request(
            f"input '{name}' must set exactly one of 'data', 'binary_data_size' in 'parameters' "
            f"or 'shared_memory_region' in 'parameters', but set "
            + (" and ".join(given) if given else "none of them")
        )
    if has_binary:
        nbytes = _count(params["binary_data_size"], f"input '{name}': 'binary_data_size'")
        end = pos + nbytes
        if end > len(body):
            raise bad_request(
                f"unexpected size for input '{name}', expecting {end - len(body)} additional bytes "
                f"for model '{model}' (binary_data_size {nbytes}, but the body holds only "
                f"{len(body) - pos} bytes for it)"
            )
        return InferTensor(name, dt.wire, _from_bytes(name, dt, shape, body, pos, nbytes)), end
    if has_shm:
        registry = shm.check()
        region = params["shared_memory_region"]
        if not isinstance(region, str):
            raise bad_request(f"input '{name}': 'shared_memory_region' must be a string")
        if "shared_memory_byte_size" not in params:
            raise bad_request(
                f"input '{name}' names a shared memory region but no 'shared_memory_byte_size'"
            )
        nbytes = _count(
            params["shared_memory_byte_size"], f"input '{name}': 'shared_memory_byte_size'"
        )
        offset = _count(
            params.get("shared_memory_offset", 0), f"input '{name}': 'shared_memory_offset'"
        )
        view = registry.view(region, offset, nbytes)
        return InferTensor(name, dt.wire, _from_bytes(name, dt, shape, view, 0, nbytes)), pos
    return InferTensor(name, dt.wire, _from_json(name, dt, shape, spec["data"])), pos


def _requested_outputs(raw: Any, plan: OutputPlan, shm: ShmAccess) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise bad_request(f"'outputs' must be a list, got {_kind(raw)}")
    outputs: list[RequestedOutput] = []
    for i, spec in enumerate(raw):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request(f"outputs[{i}] must be an object with a string 'name'")
        name: str = spec["name"]
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise bad_request(
                f"output '{name}': 'parameters' must be an object, got {_kind(params)}"
            )
        k = params.get("classification", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise bad_request(f"output '{name}': 'classification' must be a non-negative integer")
        binary = params.get("binary_data")
        if binary is not None:
            if not isinstance(binary, bool):
                raise bad_request(
                    f"Unable to parse 'binary_data' of output '{name}': expected a bool"
                )
            plan.binary[name] = binary
        if "shared_memory_region" in params:
            if k:
                raise bad_request(
                    "Output can't set both 'shared_memory_region' and 'classification'"
                )
            if binary:
                raise bad_request("Output can't set both 'shared_memory_region' and 'binary_data'")
            registry = shm.check()
            region = params["shared_memory_region"]
            if not isinstance(region, str):
                raise bad_request(f"output '{name}': 'shared_memory_region' must be a string")
            nbytes = _count(
                params.get("shared_memory_byte_size"), f"output '{name}': 'shared_memory_byte_size'"
            )
            offset = _count(
                params.get("shared_memory_offset", 0), f"output '{name}': 'shared_memory_offset'"
            )
            registry.view(region, offset, nbytes)  # fail before running the model
            plan.shm[name] = (region, offset, nbytes)
        outputs.append(RequestedOutput(name, classification=k, parameters=params))
    return outputs


def _shape(name: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise bad_request(f"input '{name}': 'shape' must be a list of non-negative integers")
    for d in raw:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise bad_request(
                f"input '{name}': invalid shape {raw}: dimensions must be non-negative integers"
            )
    shape = tuple(raw)
    check_shape(name, shape)
    return shape


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _from_bytes(
    name: str, dt: dtypes.DType, shape: tuple[int, ...], buf: memoryview, pos: int, nbytes: int
) -> Array:
    if dt.wire == "BYTES":
        return _bytes_from_buffer(name, shape, buf[pos : pos + nbytes])
    return _fixed_from_bytes(name, dt, shape, buf, pos, nbytes)


def _fixed_from_bytes(
    name: str, dt: dtypes.DType, shape: Sequence[int], buf: memoryview, pos: int, nbytes: int
) -> Array:
    count = math.prod(shape)
    expected = count * dt.itemsize
    if nbytes != expected:
        raise bad_request(
            f"input '{name}' has {nbytes} bytes of data, but shape {_shape_str(shape)} of "
            f"{dt.wire} needs {expected} bytes (Expected {expected}, got {nbytes})"
        )
    if count == 0:
        return np.empty(shape, dtype=dt.numpy)
    arr = np.frombuffer(buf, dtype=dt.numpy, count=count, offset=pos)
    if dt.wire == "BOOL" and int(arr.view(np.uint8).max()) > 1:
        raise bad_request(f"input '{name}': BOOL elements must be bytes 0 or 1")
    return arr.reshape(shape)


def _bytes_from_buffer(name: str, shape: Sequence[int], buf: memoryview) -> Array:
    return decode_bytes_elements(name, shape, buf)


_INT_KINDS = frozenset("iu")
_NUM_KINDS = frozenset("iuf")


def _from_json(name: str, dt: dtypes.DType, shape: tuple[int, ...], data: Any) -> Array:
    count = math.prod(shape)
    if not isinstance(data, list):
        raise bad_request(f"input '{name}': 'data' must be a list, got {_kind(data)}")
    if dt.wire == "BYTES":
        flat = _flatten(name, data)
        if len(flat) != count:
            raise _count_mismatch(name, len(flat), shape, count)
        out = np.empty(count, dtype=np.object_)
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise bad_request(f"input '{name}': BYTES 'data' must hold strings, got {_kind(v)}")
            out[i] = v.encode("utf-8")
        return out.reshape(shape)
    _check_depth(name, data)
    try:
        arr = np.array(data)
    except (ValueError, OverflowError) as e:
        raise bad_request(
            f"input '{name}': 'data' is not a regular array of numbers ({e})"
        ) from None
    if arr.size != count:
        raise _count_mismatch(name, arr.size, shape, count)
    kind = arr.dtype.kind
    integral = dt.numpy.kind in _INT_KINDS and dt.wire != "BF16"
    if count:
        if dt.wire == "BOOL":
            ok = kind == "b"
        elif integral:
            if kind not in _INT_KINDS and kind in "fO":
                # Python ints past int64 (UINT64) make numpy pick float64 or object: retry exactly.
                flat = _flatten(name, data)
                if all(type(v) is int for v in flat):
                    lo, hi = min(flat), max(flat)
                    if lo < 0 and hi > _INT64_MAX:  # neither int64 nor uint64 holds both
                        raise _out_of_range(name, dt, lo, hi)
                    arr = np.array(flat, dtype=np.uint64 if lo >= 0 else np.int64)
                    kind = arr.dtype.kind
            ok = kind in _INT_KINDS
            if ok:
                _check_range(name, dt, int(arr.min()), int(arr.max()))
        else:
            ok = kind in _NUM_KINDS
        if not ok:
            want = {"BOOL": "true/false"}.get(dt.wire, "integers" if integral else "numbers")
            raise bad_request(
                f"input '{name}': {dt.wire} 'data' must hold {want}, got {arr.dtype.name} values"
            )
    if dt.wire == "BF16":
        return _bf16_bits(arr.astype(np.float32)).reshape(shape)
    return arr.astype(dt.numpy).reshape(shape)


_INT64_MAX = 2**63 - 1


def _check_range(name: str, dt: dtypes.DType, lo: int, hi: int) -> None:
    info = np.iinfo(dt.numpy)
    if lo < info.min or hi > info.max:
        raise _out_of_range(name, dt, lo, hi)


def _out_of_range(name: str, dt: dtypes.DType, lo: int, hi: int) -> ServerError:
    value = lo if lo < np.iinfo(dt.numpy).min else hi
    return bad_request(f"input '{name}': value {value} is out of range for {dt.wire}")


def _flatten(name: str, data: list[Any]) -> list[Any]:
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                if len(stack) > MAX_RANK:
                    raise _too_deep(name)
                break
            flat.append(v)
        else:
            stack.pop()
    return flat


def _check_depth(name: str, data: list[Any]) -> None:
    """Numeric 'data' nested deeper than any tensor's rank (numpy would refuse it less clearly);
    only the first element's chain is followed (ragged data fails in numpy)."""
    depth = 1
    while data and isinstance(data[0], list):
        data = data[0]
        depth += 1
        if depth > MAX_RANK:
            raise _too_deep(name)


def _too_deep(name: str) -> ServerError:
    return bad_request(
        f"input '{name}': 'data' is nested more than {MAX_RANK} levels deep "
        "(JSON nesting depth exceeds the limit)"
    )


def _count_mismatch(name: str, got: int, shape: Sequence[int], count: int) -> ServerError:
    return bad_request(
        f"input '{name}': 'data' holds {got} elements, but shape {_shape_str(shape)} needs {count}"
    )


def _bf16_bits(f32: Array) -> Array:
    """float32 -> bfloat16 raw bits, rounding to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(f32).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    nan = np.isnan(f32)
    out = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def _kind(v: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a bool",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
