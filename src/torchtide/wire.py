"""Wire encodings both front-ends share, so one bad payload gets one message on every protocol."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from torchtide.errors import invalid_arg

Array = np.ndarray[Any, Any]
LENGTH_PREFIX = struct.Struct("<I")  # BYTES elements: <uint32 little-endian length><bytes>


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


# numpy cannot make an array of more than 64 dimensions, nor, even an empty one, of dimensions
# (the zeros left out) multiplying past 2**63 bytes. A non-empty shape that large never matches
# its data (the byte counts say so, in Triton's words); an empty one passes every byte count, so
# its other dimensions are bounded here: far past any real tensor, far below what numpy refuses.
MAX_DIMS = 64
MAX_ELEMENTS = 2**48


def check_shape(name: str, shape: Sequence[int]) -> int:
    """The element count of a shape of non-negative dimensions, or INVALID_ARG when no array
    of that shape can be made."""
    if len(shape) > MAX_DIMS:
        raise invalid_arg(
            f"input '{name}': shape {shape_str(shape)} has {len(shape)} dimensions, more than "
            f"the {MAX_DIMS} a tensor may have"
        )
    count = math.prod(shape)
    if count == 0:
        size = math.prod(d for d in shape if d)
        if size > MAX_ELEMENTS:
            raise invalid_arg(
                f"input '{name}': shape {shape_str(shape)} is too large: its non-zero "
                f"dimensions multiply to {size} elements, more than {MAX_ELEMENTS}"
            )
    return count


def decode_bytes_elements(name: str, shape: Sequence[int], buf: memoryview | bytes) -> Array:
    """Length-prefixed BYTES elements -> an object array of `bytes` of `shape`, or a clear
    INVALID_ARG naming the input and what is wrong."""
    count = math.prod(shape)
    n = len(buf)
    if count > n // 4:  # each element takes at least its 4-byte length prefix
        raise invalid_arg(
            f"input '{name}': shape {shape_str(shape)} needs {count} BYTES elements, but "
            f"{n} bytes can hold at most {n // 4}"
        )
    out = np.empty(count, dtype=np.object_)
    pos = i = 0
    while pos < n:
        if pos + 4 > n:
            raise invalid_arg(
                f"input '{name}': BYTES element {i} has a truncated 4-byte length prefix "
                f"({n - pos} bytes left)"
            )
        (length,) = LENGTH_PREFIX.unpack_from(buf, pos)
        pos += 4
        if pos + length > n:
            raise invalid_arg(
                f"input '{name}': BYTES element {i} declares {length} bytes, but only {n - pos} "
                "remain"
            )
        if i >= count:
            raise invalid_arg(
                f"input '{name}': the data holds more than the {count} BYTES elements its shape "
                f"{shape_str(shape)} needs"
            )
        out[i] = bytes(buf[pos : pos + length])
        pos += length
        i += 1
    if i != count:
        raise invalid_arg(
            f"input '{name}': shape {shape_str(shape)} needs {count} BYTES elements, but the "
            f"data holds {i}"
        )
    return out.reshape(shape)
