"""The HTTP inference request decoder: Inference-Header-Content-Length, the JSON header, binary
tensor data (Triton's binary tensor extension), raw binary requests, shared-memory inputs;
then an identity model's response to it, encoded as the request asked (JSON, binary, shared
memory outputs).

Input: `<Inference-Header-Content-Length value>\\n<body>`; an empty first line (or no newline
at all) means no such header. A value of 0 makes a raw binary request; the body's first byte
then picks the model config it is decoded against. The only error allowed out is ServerError.
"""

from __future__ import annotations

import contextlib

from fuzz._harness import echo, instrumented, main, shm_registry

with instrumented():
    from torchtide.config import parse_text
    from torchtide.errors import ServerError
    from torchtide.frontends.http.decode import (
        ShmAccess,
        decode_raw_request,
        decode_request,
        header_length,
    )
    from torchtide.frontends.http.encode import encode_response
    from torchtide.shm import SharedMemoryRegistry

import orjson

SHM = ShmAccess(shm_registry(), allowed=True)
NO_SHM = ShmAccess(SharedMemoryRegistry(), allowed=False)

# Single-input models for raw binary requests: each branch of decode_raw_request.
_CONFIGS = [
    parse_text(text, "fuzz")
    for text in (
        'input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }',
        'max_batch_size: 8 input { name: "x" data_type: TYPE_INT16 dims: [ -1, 3 ] }',
        'input { name: "x" data_type: TYPE_STRING dims: [ 1 ] }',
        'max_batch_size: 2 input { name: "x" data_type: TYPE_STRING dims: [ -1 ] }',
        'input { name: "x" data_type: TYPE_BOOL dims: [ -1 ] }',
        'input { name: "x" data_type: TYPE_UINT8 dims: [ -1, -1 ] }',
        'input { name: "x" data_type: TYPE_BF16 dims: [ 0, -1 ] }',
        'input { name: "a" data_type: TYPE_FP32 dims: 1 } input { name: "b" data_type: TYPE_FP32 '
        "dims: 1 }",
    )
]


def split(data: bytes) -> tuple[str | None, bytes]:
    """The header value (decoded as the HTTP front-end decodes header values) and the body."""
    line, newline, body = data.partition(b"\n")
    if not newline:
        return None, data
    return (line.decode("latin-1") if line else None), body


def test_one_input(data: bytes) -> None:
    header, body = split(data)
    shm = SHM if len(body) % 2 else NO_SHM
    with contextlib.suppress(ServerError):
        length = header_length(header, len(body))
        if length == 0:
            config = _CONFIGS[body[0] % len(_CONFIGS)] if body else _CONFIGS[0]
            request, plan = decode_raw_request(body, "m", "", config)
        else:
            request, plan = decode_request(body, length, "m", "", shm)
        # an identity model's answer, encoded as asked (JSON, binary, shared memory)
        encoded = encode_response(echo(request), plan, shm)
        orjson.loads(encoded.header)


if __name__ == "__main__":
    main(test_one_input)
