"""A tiny KServe V2 server for testing `torchtide bench` without the real front-ends: HTTP/1.1
(keep-alive, JSON and binary tensors, statistics, system shared memory) and gRPC, serving
`add_sub` (INT32 [-1,16] x2, max_batch_size 64) and `text` (BYTES [-1,1] -> INT32 lengths).

In a test: `with StubServer(fail_every=3) as stub: ... stub.http_port ...` (a thread with its
own loop, ready when the ports are bound). Standalone, for measuring the load generator:
`python -m tests.v2stub --http-port 8000 --grpc-port 8001`."""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

NP = {"INT32": np.int32, "FP32": np.float32}

MODELS: dict[str, dict[str, Any]] = {
    "add_sub": {
        "max_batch_size": 64,
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
        ],
        "outputs": [
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]},
        ],
    },
    "text": {
        "max_batch_size": 8,
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [{"name": "LENGTH", "datatype": "INT32", "shape": [-1, 1]}],
    },
}


class StubError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Counters:
    success: int = 0
    fail: int = 0
    infer_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0


@dataclass
class StubCore:
    """What both transports share: models, counters, shared-memory regions."""

    fail_every: int = 0  # every Nth infer request fails with 400 / INVALID_ARGUMENT
    stats: bool = True  # offer the statistics extension
    allow_shm: bool = True  # accept shared-memory registrations
    requests: int = 0
    counters: dict[str, Counters] = field(default_factory=dict)
    regions: dict[str, tuple[mmap.mmap, int, int]] = field(default_factory=dict)
    seen_formats: set[str] = field(default_factory=set)  # "binary", "json", "shm", "grpc"

    def metadata(self, name: str) -> dict[str, Any]:
        if name not in MODELS:
            raise StubError(f"Request for unknown model: '{name}' is not found", 404)
        m = MODELS[name]
        return {"name": name, "versions": ["1"], "platform": "stub",
                "inputs": m["inputs"], "outputs": m["outputs"]}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not self.allow_shm:
            raise StubError("client shared memory is disabled on this server", 403)
        fd = os.open(os.path.join("/dev/shm", key.lstrip("/")), os.O_RDWR)
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.regions[name] = (mm, offset, byte_size)

    def unregister(self, name: str) -> None:
        entry = self.regions.pop(name, None)
        if entry is not None:
            entry[0].close()

    def shm_read(self, region: str, offset: int, size: int) -> bytes:
        if region not in self.regions:
            raise StubError(f"Unable to find shared memory region: '{region}'")
        mm, base, _ = self.regions[region]
        return bytes(mm[base + offset : base + offset + size])

    def shm_write(self, region: str, offset: int, data: bytes) -> None:
        mm, base, size = self.regions[region]
        if offset + len(data) > size:
            raise StubError("shared memory region too small for the output")
        mm[base + offset : base + offset + len(data)] = data

    def infer(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.requests += 1
        c = self.counters.setdefault(name, Counters())
        if self.fail_every and self.requests % self.fail_every == 0:
            c.fail += 1
            raise StubError("stub: request rejected on purpose")
        t = time.perf_counter_ns()
        if name == "add_sub":
            a, b = inputs.get("INPUT0"), inputs.get("INPUT1")
            if a is None or b is None or a.shape != b.shape or a.shape[-1:] != (16,):
                raise StubError("add_sub expects INPUT0 and INPUT1 of shape [B,16]")
            out = {"OUTPUT0": a + b, "OUTPUT1": a - b}
        elif name == "text":
            texts = inputs["TEXT"]
            lengths = np.array([len(x) for x in texts.reshape(-1)], np.int32)
            out = {"LENGTH": lengths.reshape(texts.shape)}
        else:
            raise StubError(f"unknown model '{name}'", 404)
        batch = next(iter(inputs.values())).shape[0]
        c.success += 1
        c.infer_ns += time.perf_counter_ns() - t
        c.inference_count += batch
        c.execution_count += 1
        return out

    def stats_doc(self, name: str) -> dict[str, Any]:
        c = self.counters.get(name, Counters())
        return {"model_stats": [{
            "name": name, "version": "1", "last_inference": 0,
            "inference_count": c.inference_count, "execution_count": c.execution_count,
            "inference_stats": {
                "success": {"count": c.success, "ns": c.infer_ns},
                "fail": {"count": c.fail, "ns": 0},
                "queue": {"count": c.success, "ns": c.success * 1000},
                "compute_input": {"count": c.success, "ns": c.success * 2000},
                "compute_infer": {"count": c.success, "ns": c.infer_ns},
                "compute_output": {"count": c.success, "ns": c.success * 3000},
            },
            "batch_stats": [],
        }]}


def decode(datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            (n,) = struct.unpack_from("<I", raw, pos)
            items.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    return np.frombuffer(raw, dtype=NP[datatype]).reshape(shape)


# ---------------------------------------------------------------------------- HTTP


class _HttpStub(asyncio.Protocol):
    def __init__(self, core: StubCore) -> None:
        self.core = core
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            method, path, _ = head[0].split(" ", 2)
            try:
                status, payload, extra = self.handle(method, path, headers, body)
            except StubError as e:
                status, payload, extra = e.status, orjson.dumps({"error": str(e)}), {}
            hdrs = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            assert self.transport is not None
            self.transport.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{hdrs}"
                f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
            )

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        parts = path.strip("/").split("/")
        core = self.core
        if parts[:2] == ["v2", "systemsharedmemory"] and len(parts) == 5:
            if parts[4] == "register":
                doc = orjson.loads(body)
                core.register(parts[3], doc["key"], doc.get("offset", 0), doc["byte_size"])
            else:
                core.unregister(parts[3])
            return 200, b"", {}
        if parts[:2] != ["v2", "models"] or len(parts) < 3:
            raise StubError(f"no route {path}", 404)
        name = parts[2]
        rest = parts[5:] if len(parts) > 4 and parts[3] == "versions" else parts[3:]
        meta = core.metadata(name)
        if not rest:
            return 200, orjson.dumps(meta), {}
        if rest == ["config"]:
            return 200, orjson.dumps({"name": name, "max_batch_size": MODELS[name]["max_batch_size"]}), {}
        if rest == ["stats"]:
            if not core.stats:
                raise StubError("statistics not offered", 404)
            return 200, orjson.dumps(core.stats_doc(name)), {}
        if rest == ["infer"] and method == "POST":
            return self.infer(name, headers, body)
        raise StubError(f"no route {path}", 404)

    def infer(
        self, name: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        core = self.core
        hlen = int(headers.get("inference-header-content-length", len(body)))
        doc = orjson.loads(body[:hlen])
        pos = hlen
        arrays = {}
        for t in doc["inputs"]:
            p = t.get("parameters", {})
            if "shared_memory_region" in p:
                core.seen_formats.add("shm")
                raw = core.shm_read(p["shared_memory_region"], p.get("shared_memory_offset", 0),
                                    p["shared_memory_byte_size"])
                arrays[t["name"]] = decode(t["datatype"], t["shape"], raw)
            elif "binary_data_size" in p:
                core.seen_formats.add("binary")
                n = p["binary_data_size"]
                arrays[t["name"]] = decode(t["datatype"], t["shape"], body[pos : pos + n])
                pos += n
            else:
                core.seen_formats.add("json")
                data = t["data"]
                if t["datatype"] == "BYTES":
                    arr = np.empty(len(data), dtype=object)
                    arr[:] = [d.encode() for d in data]
                    arrays[t["name"]] = arr.reshape(t["shape"])
                else:
                    arrays[t["name"]] = np.asarray(data, NP[t["datatype"]]).reshape(t["shape"])
        outs = core.infer(name, arrays)
        requested = {o["name"]: o.get("parameters", {}) for o in doc.get("outputs", [])}
        binary = doc.get("parameters", {}).get("binary_data_output", False)
        out_docs, blobs = [], []
        for oname, arr in outs.items():
            o: dict[str, Any] = {"name": oname, "datatype": "INT32", "shape": list(arr.shape)}
            p = requested.get(oname, {})
            if "shared_memory_region" in p:
                core.shm_write(p["shared_memory_region"], p.get("shared_memory_offset", 0), arr.tobytes())
                o["parameters"] = {"shared_memory_region": p["shared_memory_region"],
                                   "shared_memory_byte_size": arr.nbytes}
            elif binary or p.get("binary_data"):
                o["parameters"] = {"binary_data_size": arr.nbytes}
                blobs.append(arr.tobytes())
            else:
                o["data"] = arr.reshape(-1).tolist()
            out_docs.append(o)
        header = orjson.dumps({"model_name": name, "model_version": "1", "outputs": out_docs})
        if not blobs:
            return 200, header, {}
        return 200, header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


# ---------------------------------------------------------------------------- gRPC


def _grpc_servicer(core: StubCore) -> Any:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    codes = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            try:
                m = core.metadata(request.name)
            except StubError as e:
                await context.abort(codes[e.status], str(e))
            return pb.ModelMetadataResponse(
                name=m["name"], versions=m["versions"], platform=m["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in m["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in m["outputs"]],
            )

        async def ModelConfig(self, request: Any, context: Any) -> Any:
            from tritonclient.grpc import model_config_pb2 as mc

            return pb.ModelConfigResponse(config=mc.ModelConfig(
                name=request.name, max_batch_size=MODELS[request.name]["max_batch_size"]))

        async def ModelStatistics(self, request: Any, context: Any) -> Any:
            d = core.stats_doc(request.name)["model_stats"][0]
            s = d["inference_stats"]
            return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(
                name=d["name"], version=d["version"],
                inference_count=d["inference_count"], execution_count=d["execution_count"],
                inference_stats=pb.InferStatistics(**{k: pb.StatisticDuration(**v) for k, v in s.items()}),
            )])

        async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
            core.register(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

        async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
            core.unregister(request.name)
            return pb.SystemSharedMemoryUnregisterResponse()

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            try:
                arrays = {}
                for i, t in enumerate(request.inputs):
                    if "shared_memory_region" in t.parameters:
                        core.seen_formats.add("shm")
                        p = t.parameters
                        raw = core.shm_read(p["shared_memory_region"].string_param,
                                            p["shared_memory_offset"].int64_param,
                                            p["shared_memory_byte_size"].int64_param)
                    else:
                        core.seen_formats.add("grpc")
                        raw = request.raw_input_contents[i]
                    arrays[t.name] = decode(t.datatype, list(t.shape), raw)
                outs = core.infer(request.model_name, arrays)
            except StubError as e:
                await context.abort(codes[e.status], str(e))
            resp = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
            shm_out = {o.name: o.parameters for o in request.outputs
                       if "shared_memory_region" in o.parameters}
            for name, arr in outs.items():
                resp.outputs.add(name=name, datatype="INT32", shape=list(arr.shape))
                if name in shm_out:
                    p = shm_out[name]
                    core.shm_write(p["shared_memory_region"].string_param,
                                   p["shared_memory_offset"].int64_param, arr.tobytes())
                else:
                    resp.raw_output_contents.append(arr.tobytes())
            return resp

    return Servicer()


# ---------------------------------------------------------------------------- running


async def serve(core: StubCore, host: str, http_port: int, grpc_port: int | None) -> tuple[Any, Any, int, int]:
    loop = asyncio.get_running_loop()
    http = await loop.create_server(lambda: _HttpStub(core), host, http_port)
    hport = int(http.sockets[0].getsockname()[1])
    grpc_server, gport = None, 0
    if grpc_port is not None:
        import grpc
        from tritonclient.grpc import service_pb2_grpc as pb_grpc

        grpc_server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_grpc_servicer(core), grpc_server)
        gport = grpc_server.add_insecure_port(f"{host}:{grpc_port}")
        await grpc_server.start()
    return http, grpc_server, hport, gport


class StubServer:
    """The stub on its own event loop in a thread; ports are bound when `start` returns."""

    def __init__(self, *, grpc: bool = False, **core_options: Any) -> None:
        self.core = StubCore(**core_options)
        self.grpc = grpc
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.http_port = self.grpc_port = 0
        self._servers: tuple[Any, Any] = (None, None)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        http, g, self.http_port, self.grpc_port = self.loop.run_until_complete(
            serve(self.core, "127.0.0.1", 0, 0 if self.grpc else None)
        )
        self._servers = (http, g)
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> StubServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("stub server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            http, g = self._servers
            http.close()
            if g is not None:
                await g.stop(0)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--fail-every", type=int, default=0)
    args = p.parse_args()
    core = StubCore(fail_every=args.fail_every)

    async def run() -> None:
        _, _, hp, gp = await serve(core, args.host, args.http_port, args.grpc_port)
        print(f"stub: HTTP {hp}, gRPC {gp}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
