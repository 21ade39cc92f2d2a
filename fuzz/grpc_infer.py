"""gRPC inference request decoding: a serialized ModelInferRequest (protobuf) -> the core's
InferRequest (typed `contents`, `raw_input_contents`, BYTES, shared-memory parameters,
request parameters, requested outputs).

Input: the message bytes, as they arrive after the 5-byte gRPC prefix. Allowed out: protobuf's
DecodeError (the transport answers it as a malformed request) and ServerError.
"""

from __future__ import annotations

import contextlib

from fuzz._harness import instrumented, main, shm_registry

with instrumented():
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import service_pb2 as pb

    from torchtide.errors import ServerError
    from torchtide.frontends.grpc.convert import decode_request

REGISTRY = shm_registry()  # region "r0", 64 bytes


def test_one_input(data: bytes) -> None:
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    with contextlib.suppress(ServerError):
        decode_request(request, REGISTRY if len(data) % 2 else None)


if __name__ == "__main__":
    main(test_one_input)
