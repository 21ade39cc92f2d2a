"""Data types: Triton config TYPE_* <-> V2 wire names <-> numpy <-> torch, in one table.

BF16 has no numpy dtype: the core carries BF16 tensors as uint16 arrays of raw bits.
BYTES tensors are numpy object arrays whose elements are `bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class DType:
    wire: str  # V2 datatype name: "INT32", "BYTES", ...
    config: str  # ModelConfig DataType enum name: "TYPE_INT32", "TYPE_STRING", ...
    numpy: np.dtype[Any]  # how the core holds it
    itemsize: int  # bytes per element on the wire; 0 for BYTES (variable)


_TABLE = [
    DType("BOOL", "TYPE_BOOL", np.dtype(np.bool_), 1),
    DType("UINT8", "TYPE_UINT8", np.dtype(np.uint8), 1),
    DType("UINT16", "TYPE_UINT16", np.dtype("<u2"), 2),
    DType("UINT32", "TYPE_UINT32", np.dtype("<u4"), 4),
    DType("UINT64", "TYPE_UINT64", np.dtype("<u8"), 8),
    DType("INT8", "TYPE_INT8", np.dtype(np.int8), 1),
    DType("INT16", "TYPE_INT16", np.dtype("<i2"), 2),
    DType("INT32", "TYPE_INT32", np.dtype("<i4"), 4),
    DType("INT64", "TYPE_INT64", np.dtype("<i8"), 8),
    DType("FP16", "TYPE_FP16", np.dtype("<f2"), 2),
    DType("FP32", "TYPE_FP32", np.dtype("<f4"), 4),
    DType("FP64", "TYPE_FP64", np.dtype("<f8"), 8),
    DType("BYTES", "TYPE_STRING", np.dtype(np.object_), 0),
    DType("BF16", "TYPE_BF16", np.dtype("<u2"), 2),
]

BY_WIRE: dict[str, DType] = {d.wire: d for d in _TABLE}
BY_CONFIG: dict[str, DType] = {d.config: d for d in _TABLE}
# numpy -> wire; uint16 means UINT16 (BF16 is only ever chosen by name).
_BY_NUMPY: dict[np.dtype[Any], DType] = {}
for _d in _TABLE:
    _BY_NUMPY.setdefault(_d.numpy, _d)


def from_wire(name: str) -> DType | None:
    return BY_WIRE.get(name)


def from_config(name: str) -> DType | None:
    return BY_CONFIG.get(name)


def wire_of_numpy(dtype: np.dtype[Any]) -> str | None:
    """The V2 datatype for a numpy dtype (str/bytes arrays are BYTES)."""
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    d = _BY_NUMPY.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    return d.wire if d else None


def torch_dtype(wire: str) -> Any:
    """The torch dtype for a wire datatype (BYTES has none)."""
    import torch

    return {
        "BOOL": torch.bool,
        "UINT8": torch.uint8,
        "UINT16": torch.uint16,
        "UINT32": torch.uint32,
        "UINT64": torch.uint64,
        "INT8": torch.int8,
        "INT16": torch.int16,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "FP16": torch.float16,
        "FP32": torch.float32,
        "FP64": torch.float64,
        "BF16": torch.bfloat16,
    }[wire]


def wire_of_torch(dtype: Any) -> str | None:
    import torch

    table = {
        torch.bool: "BOOL",
        torch.uint8: "UINT8",
        torch.uint16: "UINT16",
        torch.uint32: "UINT32",
        torch.uint64: "UINT64",
        torch.int8: "INT8",
        torch.int16: "INT16",
        torch.int32: "INT32",
        torch.int64: "INT64",
        torch.float16: "FP16",
        torch.float32: "FP32",
        torch.float64: "FP64",
        torch.bfloat16: "BF16",
    }
    return table.get(dtype)


def as_bytes_array(values: Any) -> np.ndarray[Any, Any]:
    """Normalise str/bytes data into an object array of `bytes` (UTF-8 for str)."""
    arr = np.asarray(values, dtype=np.object_)
    flat = arr.reshape(-1)
    for i, v in enumerate(flat):
        if isinstance(v, str):
            flat[i] = v.encode("utf-8")
        elif not isinstance(v, bytes):
            flat[i] = bytes(v) if isinstance(v, (bytearray, memoryview)) else str(v).encode()
    return arr
