"""Wire encodings both front-ends share, so one bad payload gets one message on every protocol."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from torchtide.errors import invalid_arg

Array = np.ndarray[Any, Any]
LENGTH_PREFIX = struct.Struct("<I")  # BYTES elements: <uint32 little-endian length><bytes>

# What a request's shapes may say, on every protocol. A shape's element count must also match the
# data that came with it (checked before anything of that size is allocated); these bounds
# catch what that cannot: a rank numpy cannot represent, and huge dimensions beside a zero one.
MAX_RANK: Final = 64  # numpy's (and torch's) most dimensions; also how deep JSON 'data' may nest
MAX_ELEMENTS: Final = 2**60  # beside a 0: the other dimensions' product; beyond, numpy fails


def check_shape(name: str, shape: Sequence[int]) -> int:
    """The element count of a shape (of dimensions already known to be >= 0), or INVALID_ARG
    for a shape no array can have."""
    if len(shape) > MAX_RANK:
        raise invalid_arg(
            f"input '{name}': shape {shape_str(shape)} has {len(shape)} dimensions; "
            f"at most {MAX_RANK} are supported"
        )
    count = math.prod(shape)
    if count == 0 and math.prod(d for d in shape if d) >= MAX_ELEMENTS:
        # the element count of a non-empty shape must match the data, which is checked next
        # and says more; an empty one passes every byte count
        raise invalid_arg(
            f"input '{name}': shape {shape_str(shape)} is too large: its non-zero dimensions "
            f"multiply to 2^60 or more"
        )
    return count


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


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
