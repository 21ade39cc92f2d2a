"""gRPC inference request decoding: a serialized ModelInferRequest (protobuf) -> the core's
InferRequest (typed `contents`, `raw_input_contents`, BYTES, shared-memory parameters,
request parameters, requested outputs); then an identity model's response to it, encoded.

Input: the message bytes, as they arrive after the 5-byte gRPC prefix. Allowed out: protobuf's
DecodeError (the transport answers it as a malformed request) and ServerError.
"""

from __future__ import annotations

import contextlib

from fuzz._harness import echo, instrumented, main, shm_registry

with instrumented():
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import service_pb2 as pb

    from torchtide.errors import ServerError
    from torchtide.frontends.grpc.convert import decode_request, encode_response

REGISTRY = shm_registry()  # region "r0", 64 bytes


def test_one_input(data: bytes) -> None:
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    registry = REGISTRY if len(data) % 2 else None
    with contextlib.suppress(ServerError):
        decoded, shm_out = decode_request(request, registry)
        # an identity model's answer, encoded (and written to shared memory where asked)
        encode_response(echo(decoded), shm_out, registry).SerializeToString()


if __name__ == "__main__":
    main(test_one_input)
