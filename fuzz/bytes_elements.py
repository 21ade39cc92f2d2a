"""The BYTES tensor decoder both front-ends share (4-byte little-endian length prefixes).

Input: `<ndim><dim>...<buffer>`: the first byte gives the number of dimensions (mod 4), the next
bytes the dimensions (mod 16), the rest is the buffer. The only error allowed out is ServerError,
and two properties must hold:
- a buffer that decodes re-encodes to exactly the same bytes (with the HTTP and the gRPC
  encoder), into an object array of `bytes` of the asked shape;
- any elements, encoded, decode back to themselves (the buffer split at 0xFF bytes).
"""

from __future__ import annotations

import numpy as np

from fuzz._harness import instrumented, main

with instrumented():
    from torchtide.errors import ServerError
    from torchtide.frontends.grpc.convert import tensor_bytes
    from torchtide.frontends.http.encode import _to_bytes
    from torchtide.types import InferTensor
    from torchtide.wire import LENGTH_PREFIX, decode_bytes_elements


def split(data: bytes) -> tuple[tuple[int, ...], bytes]:
    if not data:
        return (), b""
    ndim = data[0] % 4
    dims = tuple(d % 16 for d in data[1 : 1 + ndim])
    return dims, data[1 + ndim :]


def encode(elements: list[bytes]) -> bytes:
    return b"".join(LENGTH_PREFIX.pack(len(e)) + e for e in elements)


def check_decoded(shape: tuple[int, ...], buf: bytes) -> None:
    try:
        arr = decode_bytes_elements("x", shape, memoryview(buf))
    except ServerError:
        return
    assert arr.shape == shape, (arr.shape, shape)
    assert arr.dtype == np.object_
    assert all(type(v) is bytes for v in arr.reshape(-1))
    tensor = InferTensor("x", "BYTES", arr)
    assert bytes(_to_bytes(tensor)) == buf
    assert tensor_bytes(tensor) == buf


def check_round_trip(elements: list[bytes]) -> None:
    arr = decode_bytes_elements("x", (len(elements),), encode(elements))
    assert arr.tolist() == elements


def test_one_input(data: bytes) -> None:
    shape, buf = split(data)
    check_decoded(shape, buf)
    check_round_trip(buf.split(b"\xff") if buf else [])


if __name__ == "__main__":
    main(test_one_input)
