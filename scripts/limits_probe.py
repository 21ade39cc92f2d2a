"""Probe a server's resource limits with hostile clients and print one JSON line per probe, to
compare tritonserver with torchtide (issue 14):

    python scripts/limits_probe.py --make-repo /tmp/probe_repo   # add_sub + identity, KIND_CPU
    bash /work/shared/reference/triton-start.sh /tmp/probe_repo 8000 8001 8002
    PYTHONPATH=src:. python scripts/limits_probe.py HTTP_PORT GRPC_PORT > triton.jsonl

Each probe reports what the server did (status and message, closed or not, bytes accepted) and
whether it still serves a well-behaved request afterwards. Nothing here asserts: it records.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from tests.test_grpc_transport import RawClient, grpc_message, open_call  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc  # noqa: E402

from torchtide.frontends.grpc import http2 as h2  # noqa: E402

SERVICE = "/inference.GRPCInferenceService/"
QUIET_S = 12.0  # silence that counts as "blocked"
SILENT_S = 40.0  # how long a silent connection is watched (torchtide closes at 30 s by default)


def http_post(port: int, path: str, body: bytes) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("POST", path, body=body)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")[:160]
    except OSError as e:
        return -1, f"{type(e).__name__}: {e}"
    finally:
        c.close()


def serving(hp: int) -> bool:
    doc = {
        "inputs": [
            {"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    return http_post(hp, "/v2/models/add_sub/infer", json.dumps(doc).encode())[0] == 200


def until_closed(sock: socket.socket, seconds: float) -> str:
    sock.settimeout(seconds)
    t0 = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return f"still open after {seconds:g} s"
    except ConnectionResetError:
        pass
    return f"closed after {time.monotonic() - t0:.1f} s"


def grpc_silent(gp: int, sent: bytes) -> str:
    with socket.create_connection(("127.0.0.1", gp), timeout=SILENT_S) as s:
        s.sendall(sent)
        return until_closed(s, SILENT_S)


def frames_until_quiet(raw: RawClient) -> list[tuple[int, int, int, bytes]]:
    out = []
    try:
        while (f := raw.frame(3.0)) is not None:
            out.append(f)
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def summary(frames: list[tuple[int, int, int, bytes]]) -> str:
    parts = []
    for kind, _, sid, payload in frames:
        if kind == h2.RST_STREAM:
            parts.append(f"RST_STREAM({sid}, {struct.unpack('>I', payload)[0]})")
        elif kind == h2.GOAWAY:
            parts.append(f"GOAWAY({struct.unpack('>II', payload[:8])[1]}, {payload[8:60]!r})")
    return ", ".join(parts) or "nothing"


def grpc_window_overrun(gp: int) -> str:
    raw = RawClient(gp)
    try:
        open_call(raw, 1, SERVICE + "ServerLive")
        window = h2.DEFAULT_WINDOW
        for f in frames_until_quiet(raw):
            if f[0] == h2.SETTINGS and not f[1] & h2.ACK:
                window = dict(h2.settings(memoryview(f[3]))).get(
                    h2.SETTINGS_INITIAL_WINDOW_SIZE, window
                )
        head = struct.pack(">BI", 0, 100) + b"x" * 100  # a 100-byte message, then more
        data = (head + b"x" * window)[: window + 1]
        for i in range(0, len(data), h2.DEFAULT_MAX_FRAME):
            raw.send(h2.frame(h2.DATA, 0, 1, data[i : i + h2.DEFAULT_MAX_FRAME]))
        return f"window {window}, sent {len(data)}: " + summary(frames_until_quiet(raw))
    finally:
        raw.close()


def grpc_empty_data(gp: int, n: int) -> str:
    raw = RawClient(gp)
    try:
        open_call(raw, 1, SERVICE + "ServerLive")
        try:
            raw.send(h2.frame(h2.DATA, 0, 1) * n)
        except OSError as e:
            return f"send failed: {e}"
        return summary(frames_until_quiet(raw))
    finally:
        raw.close()


def grpc_never_reads(gp: int) -> str:
    """64 KiB ModelStreamInfer requests whose 64 KiB answers are never read."""
    req = pb.ModelInferRequest(model_name="identity")
    req.inputs.add(name="IN_FP32", datatype="FP32", shape=[1, 16384])
    req.raw_input_contents.append(np.zeros(16384, np.float32).tobytes())
    req.outputs.add(name="OUT_FP32")
    message = grpc_message(req.SerializeToString())
    raw = RawClient(gp)
    window, initial, sent = h2.DEFAULT_WINDOW, h2.DEFAULT_WINDOW, 0
    try:
        open_call(raw, 1, SERVICE + "ModelStreamInfer")
        while sent * len(message) < 200 * 2**20:
            while window < len(message):
                try:
                    f = raw.frame(QUIET_S)
                except TimeoutError:
                    return f"blocked after {sent * len(message) / 2**20:.1f} MiB accepted"
                if f is None:
                    return f"closed after {sent * len(message) / 2**20:.1f} MiB"
                if f[0] == h2.SETTINGS and not f[1] & h2.ACK:
                    raw.send(h2.frame(h2.SETTINGS, h2.ACK, 0))  # grpc-core wants its ACK
                    for k, v in h2.settings(memoryview(f[3])):
                        if k == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                            window, initial = window + v - initial, v
                elif f[0] == h2.WINDOW_UPDATE and f[2] == 1:
                    window += struct.unpack(">I", f[3])[0]
            raw.send(h2.frame(h2.DATA, 0, 1, message))
            window -= len(message)
            sent += 1
        return "accepted 200 MiB without blocking"
    finally:
        raw.close()


def grpc_shape(gp: int, shape: list[int], data: bytes) -> str:
    channel = grpc.insecure_channel(f"127.0.0.1:{gp}")
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="add_sub")
        req.inputs.add(name="INPUT0", datatype="INT32", shape=shape)
        req.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
        req.raw_input_contents.extend([data, b"\0" * 64])
        try:
            stub.ModelInfer(req, timeout=60)
            return "OK"
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()[:140]}"
    finally:
        channel.close()


def http_doc(hp: int, data: str, shape: str = "[1,16]", extra: str = "") -> str:
    zeros = ",".join(["0"] * 16)
    body = (
        f'{{"inputs":[{{"name":"INPUT0","datatype":"INT32","shape":{shape},"data":{data}}},'
        f'{{"name":"INPUT1","datatype":"INT32","shape":[1,16],"data":[{zeros}]}}]{extra}}}'
    )
    status, text = http_post(hp, "/v2/models/add_sub/infer", body.encode())
    return f"{status}: {text}"


def make_repo(path: Path) -> None:
    from tests.models import write_add_sub, write_identity

    for d in (write_add_sub(path), write_identity(path)):
        config = d / "config.pbtxt"
        config.write_text(config.read_text() + "\ninstance_group [{ kind: KIND_CPU }]\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("ports", nargs="*", type=int)
    ap.add_argument("--make-repo", type=Path)
    ap.add_argument("--only", nargs="*", help="run these probes only")
    args = ap.parse_args()
    if args.make_repo:
        make_repo(args.make_repo)
        return 0
    hp, gp = args.ports
    flat16 = "[" + ",".join(["0"] * 16) + "]"
    probes: dict[str, Any] = {
        "grpc_silent": lambda: grpc_silent(gp, b""),
        "grpc_preface_no_settings": lambda: grpc_silent(gp, h2.PREFACE),
        "grpc_stream_window_overrun": lambda: grpc_window_overrun(gp),
        "grpc_100k_empty_data": lambda: grpc_empty_data(gp, 100_000),
        "grpc_stream_never_read": lambda: grpc_never_reads(gp),
        "grpc_shape_zero_beside_2^62": lambda: grpc_shape(gp, [0, 2**62, 2**62], b""),
        "grpc_shape_rank_65": lambda: grpc_shape(gp, [1] * 49 + [16] + [1] * 15, b"\0" * 64),
        "http_shape_zero_beside_2^62": lambda: http_doc(hp, "[]", f"[0,{2**62},{2**62}]"),
        "http_data_depth_65": lambda: http_doc(hp, "[" * 64 + flat16 + "]" * 64),
        "http_data_depth_101": lambda: http_doc(hp, "[" * 100 + flat16 + "]" * 100),
        "http_data_depth_100000": lambda: http_doc(hp, "[" * 99999 + flat16 + "]" * 99999),
        "http_document_depth_1025": lambda: http_doc(
            hp, flat16, extra=',"x":' + "[" * 1024 + "]" * 1024
        ),
    }
    for name, probe in probes.items():
        if args.only and name not in args.only:
            continue
        try:
            outcome = probe()
        except Exception as e:  # a probe that breaks is an outcome too
            outcome = f"probe failed: {type(e).__name__}: {e}"
        print(json.dumps({"probe": name, "outcome": outcome, "serving": serving(hp)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
