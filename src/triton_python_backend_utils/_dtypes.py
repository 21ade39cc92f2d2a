"""Data type tables and the BYTES tensor wire format."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._errors import TritonModelException

__all__ = [
    "TRITONSERVER_TYPE_BF16",
    "TRITONSERVER_TYPE_BOOL",
    "TRITONSERVER_TYPE_BYTES",
    "TRITONSERVER_TYPE_FP16",
    "TRITONSERVER_TYPE_FP32",
    "TRITONSERVER_TYPE_FP64",
    "TRITONSERVER_TYPE_INT8",
    "TRITONSERVER_TYPE_INT16",
    "TRITONSERVER_TYPE_INT32",
    "TRITONSERVER_TYPE_INT64",
    "TRITONSERVER_TYPE_INVALID",
    "TRITONSERVER_TYPE_UINT8",
    "TRITONSERVER_TYPE_UINT16",
    "TRITONSERVER_TYPE_UINT32",
    "TRITONSERVER_TYPE_UINT64",
    "TRITON_STRING_TO_NUMPY",
    "deserialize_bytes_tensor",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
]

# TRITONSERVER_DataType codes (tritonserver.h).
TRITONSERVER_TYPE_INVALID: Final = 0
TRITONSERVER_TYPE_BOOL: Final = 1
TRITONSERVER_TYPE_UINT8: Final = 2
TRITONSERVER_TYPE_UINT16: Final = 3
TRITONSERVER_TYPE_UINT32: Final = 4
TRITONSERVER_TYPE_UINT64: Final = 5
TRITONSERVER_TYPE_INT8: Final = 6
TRITONSERVER_TYPE_INT16: Final = 7
TRITONSERVER_TYPE_INT32: Final = 8
TRITONSERVER_TYPE_INT64: Final = 9
TRITONSERVER_TYPE_FP16: Final = 10
TRITONSERVER_TYPE_FP32: Final = 11
TRITONSERVER_TYPE_FP64: Final = 12
TRITONSERVER_TYPE_BYTES: Final = 13
TRITONSERVER_TYPE_BF16: Final = 14

# Same content as Triton's public table (no entry for TYPE_BF16: numpy has no bfloat16).
TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

_CODE_TO_NUMPY: dict[int, type[np.generic]] = {
    TRITONSERVER_TYPE_BOOL: np.bool_,
    TRITONSERVER_TYPE_UINT8: np.uint8,
    TRITONSERVER_TYPE_UINT16: np.uint16,
    TRITONSERVER_TYPE_UINT32: np.uint32,
    TRITONSERVER_TYPE_UINT64: np.uint64,
    TRITONSERVER_TYPE_INT8: np.int8,
    TRITONSERVER_TYPE_INT16: np.int16,
    TRITONSERVER_TYPE_INT32: np.int32,
    TRITONSERVER_TYPE_INT64: np.int64,
    TRITONSERVER_TYPE_FP16: np.float16,
    TRITONSERVER_TYPE_FP32: np.float32,
    TRITONSERVER_TYPE_FP64: np.float64,
    TRITONSERVER_TYPE_BYTES: np.object_,
}

# Keyed by (dtype.kind, dtype.itemsize) so that aliases such as np.longlong map too.
_KIND_TO_CODE: dict[tuple[str, int], int] = {
    ("b", 1): TRITONSERVER_TYPE_BOOL,
    ("u", 1): TRITONSERVER_TYPE_UINT8,
    ("u", 2): TRITONSERVER_TYPE_UINT16,
    ("u", 4): TRITONSERVER_TYPE_UINT32,
    ("u", 8): TRITONSERVER_TYPE_UINT64,
    ("i", 1): TRITONSERVER_TYPE_INT8,
    ("i", 2): TRITONSERVER_TYPE_INT16,
    ("i", 4): TRITONSERVER_TYPE_INT32,
    ("i", 8): TRITONSERVER_TYPE_INT64,
    ("f", 2): TRITONSERVER_TYPE_FP16,
    ("f", 4): TRITONSERVER_TYPE_FP32,
    ("f", 8): TRITONSERVER_TYPE_FP64,
}


def _dtype_code(dtype: np.dtype[Any]) -> int | None:
    if dtype.kind in ("O", "S"):
        return TRITONSERVER_TYPE_BYTES
    return _KIND_TO_CODE.get((dtype.kind, dtype.itemsize))


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """``"TYPE_INT32"`` -> ``np.int32``; ``"TYPE_STRING"`` -> ``np.object_``.

    Raises ``KeyError`` for an unknown name (and for ``TYPE_BF16``), as Triton does.
    """
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> type[np.generic] | None:
    """TRITONSERVER_DataType code -> numpy scalar type; ``None`` for INVALID/BF16/unknown."""
    return _CODE_TO_NUMPY.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """numpy type or dtype -> TRITONSERVER_DataType code; ``None`` when unsupported.

    ``np.object_`` and ``np.bytes_`` (any ``S`` width) map to BYTES (13).
    """
    if data_type is None:
        return None
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    return _dtype_code(dtype)


def _element_bytes(obj: object) -> bytes:
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    return str(obj).encode("utf-8")


def serialize_byte_tensor(input_tensor: npt.NDArray[Any]) -> bytes | None:
    """Serialize a BYTES tensor (object or ``S`` dtype) in row-major order.

    Each element becomes a 4-byte little-endian length followed by its bytes;
    ``bytes``-like elements are taken as they are, anything else as ``str(x)``
    encoded in UTF-8.  Like Triton's implementation this returns a flat ``bytes``
    object, and ``None`` when the array's dtype is not object/bytes.  An empty
    tensor gives ``b""`` (Triton returns ``()``, which is not a buffer).
    """
    if input_tensor.size == 0:
        return b""
    if input_tensor.dtype.kind not in ("O", "S"):
        return None
    parts: list[bytes] = []
    for obj in input_tensor.ravel(order="C").tolist():
        data = _element_bytes(obj)
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: Any) -> npt.NDArray[np.object_]:
    """Inverse of ``serialize_byte_tensor``: a 1-D object array of ``bytes``.

    Accepts any C-contiguous buffer (``bytes``, ``bytearray``, ``memoryview``,
    uint8 array).  Raises ``TritonModelException`` on a truncated buffer.
    """
    view = memoryview(encoded_tensor).cast("B")
    size = len(view)
    items: list[bytes] = []
    offset = 0
    while offset < size:
        if offset + 4 > size:
            raise TritonModelException("Invalid bytes tensor data: incomplete length field")
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > size:
            raise TritonModelException("Invalid bytes tensor data: string extends beyond buffer")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    result: npt.NDArray[np.object_] = np.empty(len(items), dtype=np.object_)
    result[:] = items
    return result
