"""Writes the seed corpus (fuzz/corpus/<harness>/): small valid inputs, built with the real
clients' encoders where there is one, so that fuzzing starts from what servers really receive.

Run `PYTHONPATH=src python -m fuzz.seeds` after changing a harness's input format; the files
are checked in.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import hpack
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb

from torchtide.frontends.grpc import http2 as h2

CORPUS = Path(__file__).parent / "corpus"
HARNESSES = ("http_infer", "bytes_elements", "http2_connection", "grpc_infer", "model_config")


def _bytes_elements(values: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


# ---------------------------------------------------------------------------- HTTP


def _http_body(inputs: list[httpclient.InferInput], **kwargs: object) -> bytes:
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, **kwargs)
    header = b"" if json_size is None else str(json_size).encode()
    return header + b"\n" + body


def http_infer() -> list[bytes]:
    f32 = httpclient.InferInput("x", [2, 2], "FP32")
    f32.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(2, 2), binary_data=True)
    f32_json = httpclient.InferInput("x", [1, 4], "FP32")
    f32_json.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4), binary_data=False)
    words = np.array([b"hello", b"", b"\xff\x00"], dtype=np.object_)
    text_bin = httpclient.InferInput("t", [3], "BYTES")
    text_bin.set_data_from_numpy(words, binary_data=True)
    text_json = httpclient.InferInput("t", [2], "BYTES")
    text_json.set_data_from_numpy(np.array(["a", "\u00e9"], dtype=np.object_), binary_data=False)
    i64 = httpclient.InferInput("i", [2], "INT64")
    i64.set_data_from_numpy(np.array([-(2**63), 2**63 - 1], dtype=np.int64), binary_data=False)
    u64 = httpclient.InferInput("u", [1], "UINT64")
    u64.set_data_from_numpy(np.array([2**64 - 1], dtype=np.uint64), binary_data=False)
    flags = httpclient.InferInput("b", [2], "BOOL")
    flags.set_data_from_numpy(np.array([True, False]), binary_data=True)
    outputs = [
        httpclient.InferRequestedOutput("y", binary_data=True),
        httpclient.InferRequestedOutput("z", binary_data=False, class_count=2),
    ]
    shm_in = {
        "inputs": [
            {
                "name": "x",
                "shape": [4],
                "datatype": "FP32",
                "parameters": {
                    "shared_memory_region": "r0",
                    "shared_memory_byte_size": 16,
                    "shared_memory_offset": 8,
                },
            }
        ],
        "outputs": [
            {
                "name": "y",
                "parameters": {"shared_memory_region": "r0", "shared_memory_byte_size": 64},
            }
        ],
    }
    bf16 = {
        "id": "7",
        "parameters": {"binary_data_output": True, "priority": 1, "note": "x"},
        "inputs": [{"name": "h", "shape": [2, 1], "datatype": "BF16", "data": [[1.5], [-0.0]]}],
    }
    nested = {
        "inputs": [
            {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]},
            {"name": "u", "shape": [1, 2], "datatype": "UINT64", "data": [[2**64 - 1, 0]]},
            {
                "name": "e",
                "shape": [0, 3],
                "datatype": "FP16",
                "parameters": {"binary_data_size": 0},
            },
        ],
        "outputs": [{"name": "s", "parameters": {"binary_data": False}}, {"name": "u"}],
    }
    return [
        b"\n" + json.dumps(nested).encode(),
        _http_body([f32], outputs=outputs, request_id="1"),
        _http_body([f32_json, i64, u64]),
        _http_body([text_bin, flags], outputs=outputs),
        _http_body([text_json], parameters={"k": 1}, priority=2, timeout=10),
        b"\n" + json.dumps(shm_in).encode(),  # odd length: shared memory allowed
        b"\n" + json.dumps(shm_in).encode() + b" ",  # even: shared memory disabled
        b"\n" + json.dumps(bf16).encode(),
        b"0\n\x00" + np.arange(4, dtype=np.float32).tobytes()[1:],  # raw binary, config 0
        b"0\n\x01" + np.arange(5, dtype=np.int16).tobytes()[1:],  # config 1: [-1, 3] batched
        b"0\n\x02raw bytes",  # config 2: BYTES
        b"0\n\x04\x01\x00\x01",  # config 4: BOOL [-1]
        b"12\n" + b'{"inputs":[]}',
    ]


# ---------------------------------------------------------------------------- BYTES


def bytes_elements() -> list[bytes]:
    return [
        b"\x01\x03" + _bytes_elements([b"a", b"bc", b""]),
        b"\x02\x02\x02" + _bytes_elements([b"w", b"x", b"y", b"z"]),
        b"\x00" + _bytes_elements([b"\x00\xff one scalar"]),
        b"\x01\x00",
        b"\x03\x01\x01\x02" + _bytes_elements([b"\xff\xff", b"last"]),
    ]


# ---------------------------------------------------------------------------- gRPC


def _grpc_request(inputs: list[grpcclient.InferInput], **kwargs: object) -> pb.ModelInferRequest:
    outputs = [
        grpcclient.InferRequestedOutput("y"),
        grpcclient.InferRequestedOutput("z", class_count=3),
    ]
    return grpcclient._utils._get_inference_request(  # the request the client sends
        model_name="m",
        inputs=inputs,
        model_version="1",
        request_id=kwargs.pop("request_id", "r1"),
        outputs=outputs,
        sequence_id=kwargs.pop("sequence_id", 0),
        sequence_start=False,
        sequence_end=False,
        priority=kwargs.pop("priority", 0),
        timeout=None,
        parameters=kwargs.pop("parameters", None),
    )


def grpc_requests() -> list[pb.ModelInferRequest]:
    f32 = grpcclient.InferInput("x", [2, 2], "FP32")
    f32.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(2, 2))
    words = grpcclient.InferInput("t", [3], "BYTES")
    words.set_data_from_numpy(np.array([b"a", b"", b"\xff"], dtype=np.object_))
    half = grpcclient.InferInput("h", [1], "FP16")
    half.set_data_from_numpy(np.ones(1, dtype=np.float16))
    raw = _grpc_request([f32, words, half], sequence_id=5, priority=1)
    typed = pb.ModelInferRequest(model_name="m", id="typed")
    t = typed.inputs.add(name="i", datatype="INT8", shape=[3])
    t.contents.int_contents.extend([1, -2, 300])
    t = typed.inputs.add(name="s", datatype="BYTES", shape=[1, 2])
    t.contents.bytes_contents.extend([b"x", b"yz"])
    t = typed.inputs.add(name="b", datatype="BOOL", shape=[1])
    t.contents.bool_contents.append(True)
    t = typed.inputs.add(name="u", datatype="UINT64", shape=[1])
    t.contents.uint64_contents.append(2**64 - 1)
    typed.parameters["sequence_id"].string_param = "corr"
    typed.parameters["note"].bool_param = True
    shm = pb.ModelInferRequest(model_name="m")
    t = shm.inputs.add(name="x", datatype="FP32", shape=[4])
    t.parameters["shared_memory_region"].string_param = "r0"
    t.parameters["shared_memory_byte_size"].int64_param = 16
    t.parameters["shared_memory_offset"].int64_param = 4
    o = shm.outputs.add(name="y")
    o.parameters["shared_memory_region"].string_param = "r0"
    o.parameters["shared_memory_byte_size"].int64_param = 64
    o.parameters["classification"].int64_param = 0
    return [raw, typed, shm]


def grpc_infer() -> list[bytes]:
    requests = grpc_requests()
    shm = requests[-1]
    shm.id = "s"  # 3 bytes more: the parity that picks shared-memory access flips
    return [r.SerializeToString(deterministic=True) for r in requests] + [
        grpc_requests()[-1].SerializeToString(deterministic=True)
    ]


# ---------------------------------------------------------------------------- HTTP/2


def _headers(encoder: hpack.Encoder, path: str, *extra: tuple[str, str]) -> bytes:
    """A request header block, without Huffman coding so that mutations reach the values."""
    return encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost:8001"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ],
        huffman=False,
    )


def _message(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(payload)) + payload


def _call(
    encoder: hpack.Encoder,
    sid: int,
    method: str,
    payload: bytes,
    *extra: tuple[str, str],
    compressed: bool = False,
) -> bytes:
    block = _headers(encoder, "/inference.GRPCInferenceService/" + method, *extra)
    return h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block) + h2.frame(
        h2.DATA, h2.END_STREAM, sid, _message(payload, compressed)
    )


def http2_connection() -> list[bytes]:
    unary_path = "/inference.GRPCInferenceService/ModelInfer"
    bidi_path = "/inference.GRPCInferenceService/ModelStreamInfer"
    request = pb.ModelInferRequest(model_name="m", id="1").SerializeToString(deterministic=True)
    abort = pb.ModelInferRequest(id="abort").SerializeToString(deterministic=True)
    start = h2.settings_frame(
        {h2.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20, h2.SETTINGS_MAX_FRAME_SIZE: 1 << 15}
    ) + h2.window_update(0, 1 << 20)
    enc = hpack.Encoder()
    unary = start + _call(enc, 1, "ModelInfer", request) + _call(enc, 3, "ModelInfer", abort)
    enc = hpack.Encoder()
    gz = start + _call(
        enc,
        1,
        "ModelInfer",
        gzip.compress(request, mtime=0),
        ("grpc-encoding", "gzip"),
        compressed=True,
    )
    enc = hpack.Encoder()
    block = _headers(enc, "/inference.GRPCInferenceService/ModelStreamInfer")
    two = _message(request) + _message(abort)
    bidi = (
        start
        + h2.frame(h2.HEADERS, 0, 1, block[:10])
        + h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[10:])
        + h2.frame(h2.DATA, 0, 1, two[:7])
        + h2.frame(h2.DATA, h2.PADDED, 1, b"\x03" + two[7:] + b"\x00" * 3)
        + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, enc.encode([("x-t", "1")]))
    )
    enc = hpack.Encoder()
    block = _headers(enc, "/inference.GRPCInferenceService/ServerStream", ("grpc-timeout", "5S"))
    padded = b"\x02" + b"\x00\x00\x00\x00\x10" + block + b"\x00\x00"  # pad 2, priority
    stream = (
        start
        + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.PADDED | h2.PRIORITY_FLAG, 1, padded)
        + h2.frame(h2.DATA, h2.END_STREAM, 1, _message(request))
        + h2.frame(h2.PING, 0, 0, b"12345678")
        + h2.frame(h2.PRIORITY, 0, 3, b"\x00\x00\x00\x01\x10")
        + h2.window_update(1, 100)
        + h2.frame(0x20, 0, 0, b"unknown frame type")
    )
    enc = hpack.Encoder()
    odd = (
        start
        + _call(enc, 1, "Nope", request)
        + h2.frame(
            h2.HEADERS,
            h2.END_HEADERS,
            3,
            enc.encode([(":path", "/x"), ("content-type", "text/plain")]),
        )
        + _call(enc, 5, "ModelInfer", request, ("grpc-encoding", "br"))
        + h2.rst_stream(7, h2.CANCEL)
        + h2.frame(h2.SETTINGS, h2.ACK, 0)
        + h2.goaway(0, h2.NO_ERROR)
    )
    enc = hpack.Encoder()
    reset = (
        start
        + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, _headers(enc, "/x/ModelInfer"))
        + h2.rst_stream(1, h2.CANCEL)
        + h2.frame(h2.DATA, 0, 1, b"late")
    )
    enc = hpack.Encoder()
    deadlines = (
        start
        # a bidi call that never ends and a unary call whose body never comes: both expire
        + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, _headers(enc, bidi_path, ("grpc-timeout", "1n")))
        + h2.frame(h2.HEADERS, h2.END_HEADERS, 3, _headers(enc, unary_path, ("grpc-timeout", "1u")))
        + _call(
            enc,
            5,
            "ModelInfer",
            zlib.compress(request),
            ("grpc-encoding", "deflate"),
            compressed=True,
        )
    )
    enc = hpack.Encoder()
    big = pb.ModelInferRequest(id="x" * 300).SerializeToString(deterministic=True)
    blocked = (
        # no send window: responses wait for WINDOW_UPDATE (fed in pieces, after the handlers ran)
        h2.settings_frame({h2.SETTINGS_INITIAL_WINDOW_SIZE: 0, h2.SETTINGS_MAX_FRAME_SIZE: 16384})
        + _call(enc, 1, "ServerStream", big)
        + _call(enc, 3, "ModelInfer", big)
        + h2.window_update(0, 100)
        + h2.window_update(1, 200)
        + h2.settings_frame({h2.SETTINGS_INITIAL_WINDOW_SIZE: 150})
        + h2.window_update(3, 1000)
        + h2.window_update(1, 1000)
        + h2.window_update(0, 5000)
    )
    return [
        b"\x00" + deadlines,
        b"\x40" + blocked,  # in 64-byte pieces
        b"\x00" + unary,
        b"\x07" + unary,  # in 7-byte pieces
        b"\x80" + h2.PREFACE + gz,  # its own preface
        b"\x00" + bidi,
        b"\x0d" + stream,
        b"\x00" + odd,
        b"\x00" + reset,
    ]


# ---------------------------------------------------------------------------- model config

CONFIGS = [
    # everything the validator looks at
    """
name: "m"
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] allow_ragged_batch: true },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ 1 ] optional: true },
  { name: "INPUT2" data_type: TYPE_INT32 dims: [ 2, 2 ] reshape { shape: [ 4 ] } }
]
output [ { name: "OUTPUT0" data_type: TYPE_BF16 dims: [ -1 ] } ]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 10 max_queue_size: 4 }
  priority_queue_policy { key: 2 value { allow_timeout_override: true } }
}
instance_group [ { name: "g" count: 2 kind: KIND_CPU } ]
version_policy { latest { num_versions: 1 } }
parameters { key: "EXECUTE_TIMEOUT_SECS" value { string_value: "2.5" } }
model_warmup [
  {
    name: "w"
    batch_size: 2
    count: 1
    inputs { key: "INPUT0" value { data_type: TYPE_FP32 dims: [ 3, 4 ] random_data: true } }
    inputs { key: "INPUT1" value { data_type: TYPE_STRING dims: [ 1 ] zero_data: true } }
  }
]
""",
    """
platform: "pytorch_libtorch"
max_batch_size: 0
input { name: "INPUT__0" data_type: TYPE_UINT8 dims: [ 3, 224, 224 ] }
output { name: "OUTPUT__0" data_type: TYPE_FP16 dims: [ 1000 ] label_filename: "labels.txt" }
instance_group { kind: KIND_GPU gpus: [ 0 ] }
version_policy: { specific { versions: [ 1 ] } }
model_transaction_policy { decoupled: false }
""",
    """
# comments, the list forms, enum numbers and the other version policy
name: "m" default_model_filename: "model.py"
input: [{name: "a", data_type: 8, dims: [1]}, {name: "b", data_type: TYPE_BOOL, dims: [-1]}]
output: {name: "c", data_type: TYPE_INT64, dims: 2}
version_policy { all { } }
model_transaction_policy { decoupled: true }
optimization { input_pinned_memory { enable: false } }
""",
    json.dumps(
        {
            "name": "m",
            "backend": "python",
            "max_batch_size": 4,
            "input": [{"name": "x", "data_type": "TYPE_FP64", "dims": [2]}],
            "output": [{"name": "y", "data_type": "TYPE_INT8", "dims": ["3"]}],
            "dynamic_batching": {},
            "parameters": {"k": {"string_value": "v"}},
        }
    ),
]


def model_config() -> list[bytes]:
    examples = Path(__file__).parents[1] / "examples" / "model_repository"
    files = sorted(examples.glob("*/config.pbtxt"))
    return [c.strip().encode() for c in CONFIGS] + [f.read_bytes() for f in files]


def write() -> None:
    for harness in HARNESSES:
        folder = CORPUS / harness
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for seed in globals()[harness]():
            name = hashlib.sha1(seed).hexdigest()[:16]
            (folder / name).write_bytes(seed)
        print(f"{folder}: {len(list(folder.iterdir()))} seeds")


if __name__ == "__main__":
    write()
