"""How fast is the gRPC front-end, and what does each layer cost? (W1 add_sub)

    PYTHONPATH=src python benchmarks/grpc_machinery.py [--seconds 3] [--repeat 3] [--configs ...]

Each configuration runs a server in its own process; the load generator is another process on
the same cores: closed-loop clients on one grpc.aio channel sending a pre-serialised
ModelInferRequest as bytes (no protobuf work on the client side, the lightest generator that
Python allows). Each point: warm-up, then `--seconds` of measurement: throughput, p50, p99.

Configurations (any ending in -uvloop runs its server on uvloop, as `torchtide serve` does):
  grpcio-echo   grpcio's own grpc.aio server with a ModelInfer that returns a fixed response:
                the ceiling of the machinery torchtide used before its own transport
  echo          torchtide's HTTP/2 transport (connection.py) with the same fixed response
  convert       echo plus the front-end's own work (decode the request, encode a response),
                no core: what the conversions add to the transport
  default       torchtide's GrpcFrontend as shipped, asyncio event loop
  uvloop        the same on uvloop
  delay:US      the default server with add_sub's max_queue_delay_microseconds = US (to see
                what batching does to the cost per request; not W1 as specified)
  stream        the default server, driven through ONE ModelStreamInfer stream with
                `concurrency` requests in flight instead of unary calls
  inproc        no network: InferenceServer.infer in-process, for the overhead figure
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
CONFIGS = [
    "grpcio-echo-uvloop",
    "echo-uvloop",
    "convert-uvloop",
    "default",
    "uvloop",
    "stream-uvloop",
]


def add_sub_request(request_id: str = "") -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    req = pb.ModelInferRequest(model_name="add_sub", id=request_id)
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        req.raw_input_contents.append(a.tobytes())
    return bytes(req.SerializeToString())


# ---------------------------------------------------------------------------- servers


def _repo(delay_us: int = 0) -> Path:
    """W1's add_sub; `delay_us` > 0 sets dynamic_batching's max_queue_delay (an experiment)."""
    sys.path.insert(0, str(ROOT))
    from tests.models import write_add_sub

    repo = Path(tempfile.mkdtemp(prefix="grpcbench-")) / "repo"
    repo.mkdir(parents=True)
    d = write_add_sub(repo)
    if delay_us:
        cfg = d / "config.pbtxt"
        batching = f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}"
        cfg.write_text(cfg.read_text().replace("dynamic_batching {}", batching))
    return repo


async def _serve(config: str) -> None:
    config = config.removesuffix("-uvloop")
    from torchtide.frontends.grpc import frontend as fe

    if config in ("echo", "convert", "grpcio-echo"):
        from tritonclient.grpc import service_pb2 as pb

        a = np.arange(16, dtype=np.int32).reshape(1, 16).tobytes()
        fixed = pb.ModelInferResponse(model_name="add_sub", model_version="1")
        for name in ("OUTPUT0", "OUTPUT1"):
            fixed.outputs.add(name=name, datatype="INT32", shape=[1, 16])
            fixed.raw_output_contents.append(a)

        from torchtide.frontends.grpc.convert import decode_request, encode_response
        from torchtide.types import InferResponse

        class Echo:
            async def ModelInfer(self, request: Any, context: Any) -> Any:
                if config != "convert":
                    return fixed
                req, _ = decode_request(request, None)
                outs = [type(t)(f"OUTPUT{i}", t.datatype, t.data) for i, t in enumerate(req.inputs)]
                return encode_response(InferResponse("add_sub", "1", req.id, outs), {}, None)

        if config == "grpcio-echo":  # grpcio's own server, for comparison
            import grpc
            from tritonclient.grpc import service_pb2_grpc as pb_grpc

            class GrpcioEcho(Echo, pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
                pass

            srv = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcioEcho(), srv)
            port = srv.add_insecure_port("127.0.0.1:0")
            await srv.start()
            print(port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            await srv.stop(0)
            return

        from torchtide.frontends.grpc.connection import GrpcConnection, Hub, Kind, Method

        hub = Hub({METHOD: Method(Kind.UNARY, pb.ModelInferRequest, Echo().ModelInfer)})
        listener = await asyncio.get_running_loop().create_server(
            lambda: GrpcConnection(hub), "127.0.0.1", 0
        )
        print(listener.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        listener.close()
        return

    from torchtide.server import InferenceServer, ServerOptions

    delay = int(config[6:]) if config.startswith("delay:") else 0
    server = InferenceServer(ServerOptions([_repo(delay)]))
    front = fe.GrpcFrontend(server, "127.0.0.1", 0)
    await front.start()
    await server.start()
    print(front.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await front.stop(0)
    await server.stop()


def serve_main(config: str) -> None:
    if config.endswith("uvloop"):
        import uvloop

        uvloop.run(_serve(config))
    else:
        asyncio.run(_serve(config))


# ---------------------------------------------------------------------------- load


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (robust to other load on a shared machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(
    port: int, concurrency: int, warmup: float, seconds: float, server_pid: int, stream: bool
) -> dict[str, float]:
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call: Any = ch.unary_unary(METHOD)  # bytes in, bytes out: no client protobuf work
        if stream:
            bidi = ch.stream_stream(STREAM_METHOD)()
            lock = asyncio.Lock()
            waiters: dict[str, asyncio.Future[None]] = {}

            async def read() -> None:
                async for raw in bidi:
                    rid = pb.ModelStreamInferResponse.FromString(raw).infer_response.id
                    waiters.pop(rid).set_result(None)

            reader = asyncio.get_running_loop().create_task(read())

            async def call(body: bytes) -> None:  # one request id per worker: one in flight
                fut = asyncio.get_running_loop().create_future()
                waiters[bodies[body]] = fut
                async with lock:
                    await bidi.write(body)
                await fut

        lat: list[int] = []
        t_start = time.perf_counter() + warmup
        t_end = t_start + seconds
        cpu: dict[str, float] = {}

        stats_call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelStatistics",
            request_serializer=pb.ModelStatisticsRequest.SerializeToString,
            response_deserializer=pb.ModelStatisticsResponse.FromString,
        )

        async def counts() -> tuple[int, int]:
            try:
                s = (await stats_call(pb.ModelStatisticsRequest(name="add_sub"))).model_stats[0]
            except grpc.RpcError:  # the echo servers have no statistics
                return 0, 0
            return int(s.inference_count), int(s.execution_count)

        async def sample() -> None:
            await asyncio.sleep(warmup)
            cpu["server0"], cpu["client0"] = cpu_seconds(server_pid), time.process_time()
            cpu["rows0"], cpu["execs0"] = await counts()
            await asyncio.sleep(seconds)
            cpu["server1"], cpu["client1"] = cpu_seconds(server_pid), time.process_time()
            cpu["rows1"], cpu["execs1"] = await counts()

        bodies = {add_sub_request(str(i)): str(i) for i in range(concurrency)}

        async def worker(body: bytes) -> None:
            while True:
                t0 = time.perf_counter_ns()
                await call(body)
                t1 = time.perf_counter_ns()
                now = t1 / 1e9
                if now > t_end:
                    return
                if t0 / 1e9 >= t_start:
                    lat.append(t1 - t0)

        # perf_counter_ns and perf_counter share a clock.
        await asyncio.gather(sample(), *(worker(b) for b in bodies))
        if stream:
            await bidi.done_writing()
            await reader
    lat.sort()
    n = max(1, len(lat))
    return {
        "rps": len(lat) / seconds,
        "p50_ms": lat[len(lat) // 2] / 1e6,
        "p99_ms": lat[int(len(lat) * 0.99)] / 1e6,
        "server_us": (cpu["server1"] - cpu["server0"]) / n * 1e6,
        "client_us": (cpu["client1"] - cpu["client0"]) / n * 1e6,
        "batch": (cpu["rows1"] - cpu["rows0"]) / max(1, cpu["execs1"] - cpu["execs0"]),
    }


def load_main(
    port: int, concurrency: int, warmup: float, seconds: float, pid: int, stream: bool
) -> None:
    result = asyncio.run(_load(port, concurrency, warmup, seconds, pid, stream))
    print(json.dumps(result), flush=True)


async def _inproc(concurrency: int, warmup: float, seconds: float) -> dict[str, float]:
    from torchtide.server import InferenceServer, ServerOptions
    from torchtide.types import InferRequest, InferTensor

    server = InferenceServer(ServerOptions([_repo()]))
    await server.start()
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    lat: list[int] = []
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds

    async def worker() -> None:
        while True:
            req = InferRequest(
                "add_sub", [InferTensor("INPUT0", "INT32", a), InferTensor("INPUT1", "INT32", a)]
            )
            t0 = time.perf_counter_ns()
            await server.infer(req)
            t1 = time.perf_counter_ns()
            if t1 / 1e9 > t_end:
                return
            if t0 / 1e9 >= t_start:
                lat.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await server.stop()
    lat.sort()
    return {
        "rps": len(lat) / seconds,
        "p50_ms": lat[len(lat) // 2] / 1e6,
        "p99_ms": lat[int(len(lat) * 0.99)] / 1e6,
        "server_us": 0.0,
        "client_us": 0.0,
        "batch": 0.0,
    }


# ---------------------------------------------------------------------------- driver


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def run_point(
    config: str, concurrencies: list[int], warmup: float, seconds: float
) -> dict[int, dict[str, float]]:
    me = [sys.executable, __file__]
    if config == "inproc":
        out = {}
        for c in concurrencies:
            r = subprocess.run(
                [*me, "--inproc", str(c), str(warmup), str(seconds)],
                capture_output=True,
                text=True,
                env=_env(),
                check=True,
            )
            out[c] = json.loads(r.stdout.strip().splitlines()[-1])
        return out
    stream = config.removesuffix("-uvloop") == "stream"
    server = subprocess.Popen(
        [*me, "--serve", config.replace("stream", "default", 1)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        out = {}
        for c in concurrencies:
            r = subprocess.run(
                [
                    *me,
                    "--load",
                    str(port),
                    str(c),
                    str(warmup),
                    str(seconds),
                    str(server.pid),
                    str(int(stream)),
                ],
                capture_output=True,
                text=True,
                env=_env(),
                check=True,
            )
            out[c] = json.loads(r.stdout.strip().splitlines()[-1])
        return out
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=[*CONFIGS, "inproc"])
    ap.add_argument("--concurrency", nargs="*", type=int, default=[1, 32, 64])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--serve")
    ap.add_argument("--load", nargs=6)
    ap.add_argument("--inproc", nargs=3)
    args = ap.parse_args()
    if args.serve:
        return serve_main(args.serve)
    if args.load:
        port, c, w, s, pid, stream = args.load
        return load_main(int(port), int(c), float(w), float(s), int(pid), stream == "1")
    if args.inproc:
        c, w, s = args.inproc
        print(json.dumps(asyncio.run(_inproc(int(c), float(w), float(s)))), flush=True)
        return None

    runs: dict[str, list[dict[int, dict[str, float]]]] = {c: [] for c in args.configs}
    for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits every config
        for config in args.configs:
            runs[config].append(run_point(config, args.concurrency, args.warmup, args.seconds))
    print(
        f"W1 add_sub over gRPC, {os.cpu_count()} cores, medians of {args.repeat} runs "
        f"({args.seconds:g} s each after {args.warmup:g} s warm-up)"
    )
    print("server_us / client_us: CPU time each process spent per request (what contention on a")
    print("shared machine inflates least)")
    print("batch: the server's mean batch size (rows per model execution) during the point")
    keys = ("rps", "p50_ms", "p99_ms", "server_us", "client_us", "batch")
    width = max(12, *(len(c) + 2 for c in runs))
    print(
        f"{'config':<{width}}{'conc':>6}{'infer/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'server_us':>11}{'client_us':>11}{'batch':>7}"
    )
    for config, rs in runs.items():
        for c in args.concurrency:
            m = {k: statistics.median(r[c][k] for r in rs) for k in keys}
            print(
                f"{config:<{width}}{c:>6}{m['rps']:>10.0f}{m['p50_ms']:>9.3f}"
                f"{m['p99_ms']:>9.3f}{m['server_us']:>11.0f}{m['client_us']:>11.0f}"
                f"{m['batch']:>7.1f}"
            )
    return None


if __name__ == "__main__":
    main()
