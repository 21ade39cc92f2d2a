"""How fast is the gRPC front-end, and which grpc.aio settings make it fastest? (W1 add_sub)

    PYTHONPATH=src python benchmarks/grpc_machinery.py [--seconds 3] [--repeat 3] [--configs ...]

Each configuration runs a server in its own process; the load generator is another process on
the same cores: closed-loop clients on one grpc.aio channel sending a pre-serialised
ModelInferRequest as bytes (no protobuf work on the client side, the lightest generator that
Python allows). Each point: warm-up, then `--seconds` of measurement: throughput, p50, p99.

Configurations:
  echo          a bare grpc.aio ModelInfer that returns a fixed response: the machinery's ceiling
  default       torchtide's GrpcFrontend as shipped (SERVER_OPTIONS), asyncio event loop
  uvloop        the same on uvloop
  reuseport     grpc.so_reuseport=1 (grpc's default)
  streams100    grpc.max_concurrent_streams=100
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
CONFIGS = ["echo", "default", "uvloop", "reuseport", "streams100"]


def add_sub_request() -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    req = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        req.raw_input_contents.append(a.tobytes())
    return bytes(req.SerializeToString())


# ---------------------------------------------------------------------------- servers


def _repo() -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.models import write_add_sub

    repo = Path(tempfile.mkdtemp(prefix="grpcbench-")) / "repo"
    repo.mkdir(parents=True)
    write_add_sub(repo)
    return repo


async def _serve(config: str) -> None:
    import grpc

    if config == "echo":
        from tritonclient.grpc import service_pb2 as pb
        from tritonclient.grpc import service_pb2_grpc as pb_grpc

        a = np.arange(16, dtype=np.int32).reshape(1, 16).tobytes()
        fixed = pb.ModelInferResponse(model_name="add_sub", model_version="1")
        for name in ("OUTPUT0", "OUTPUT1"):
            fixed.outputs.add(name=name, datatype="INT32", shape=[1, 16])
            fixed.raw_output_contents.append(a)

        class Echo(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
            async def ModelInfer(self, request: Any, context: Any) -> Any:
                return fixed

        srv = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), srv)
        port = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await srv.stop(0)
        return

    from torchtide.frontends.grpc import frontend as fe
    from torchtide.server import InferenceServer, ServerOptions

    options = list(fe.SERVER_OPTIONS)
    if config == "reuseport":
        options = [o for o in options if o[0] != "grpc.so_reuseport"] + [("grpc.so_reuseport", 1)]
    elif config == "streams100":
        options.append(("grpc.max_concurrent_streams", 100))
    server = InferenceServer(ServerOptions([_repo()]))
    front = fe.GrpcFrontend(server, "127.0.0.1", 0, options=options)
    await front.start()
    await server.start()
    print(front.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await front.stop(0)
    await server.stop()


def serve_main(config: str) -> None:
    if config == "uvloop":
        import uvloop

        uvloop.run(_serve(config))
    else:
        asyncio.run(_serve(config))


# ---------------------------------------------------------------------------- load


async def _load(port: int, concurrency: int, warmup: float, seconds: float) -> dict[str, float]:
    import grpc

    body = add_sub_request()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(METHOD)  # bytes in, bytes out: no client-side protobuf work
        lat: list[int] = []
        t_start = time.perf_counter() + warmup
        t_end = t_start + seconds

        async def worker() -> None:
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
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat.sort()
    return {
        "rps": len(lat) / seconds,
        "p50_ms": lat[len(lat) // 2] / 1e6,
        "p99_ms": lat[int(len(lat) * 0.99)] / 1e6,
    }


def load_main(port: int, concurrency: int, warmup: float, seconds: float) -> None:
    print(json.dumps(asyncio.run(_load(port, concurrency, warmup, seconds))), flush=True)


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
            req = InferRequest("add_sub", [InferTensor("INPUT0", "INT32", a),
                                           InferTensor("INPUT1", "INT32", a)])
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
    return {"rps": len(lat) / seconds, "p50_ms": lat[len(lat) // 2] / 1e6,
            "p99_ms": lat[int(len(lat) * 0.99)] / 1e6}


# ---------------------------------------------------------------------------- driver


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def run_point(config: str, concurrencies: list[int], warmup: float, seconds: float
              ) -> dict[int, dict[str, float]]:
    me = [sys.executable, __file__]
    if config == "inproc":
        out = {}
        for c in concurrencies:
            r = subprocess.run([*me, "--inproc", str(c), str(warmup), str(seconds)],
                               capture_output=True, text=True, env=_env(), check=True)
            out[c] = json.loads(r.stdout.strip().splitlines()[-1])
        return out
    server = subprocess.Popen([*me, "--serve", config], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        out = {}
        for c in concurrencies:
            r = subprocess.run([*me, "--load", str(port), str(c), str(warmup), str(seconds)],
                               capture_output=True, text=True, env=_env(), check=True)
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
    ap.add_argument("--load", nargs=4)
    ap.add_argument("--inproc", nargs=3)
    args = ap.parse_args()
    if args.serve:
        return serve_main(args.serve)
    if args.load:
        port, c, w, s = args.load
        return load_main(int(port), int(c), float(w), float(s))
    if args.inproc:
        c, w, s = args.inproc
        print(json.dumps(asyncio.run(_inproc(int(c), float(w), float(s)))), flush=True)
        return None

    runs: dict[str, list[dict[int, dict[str, float]]]] = {c: [] for c in args.configs}
    for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits every config
        for config in args.configs:
            runs[config].append(run_point(config, args.concurrency, args.warmup, args.seconds))
    print(f"W1 add_sub over gRPC, {os.cpu_count()} cores, medians of {args.repeat} runs "
          f"({args.seconds:g} s each after {args.warmup:g} s warm-up)")
    print(f"{'config':<12}{'conc':>6}{'infer/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for config, rs in runs.items():
        for c in args.concurrency:
            med = {k: statistics.median(r[c][k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
            print(f"{config:<12}{c:>6}{med['rps']:>10.0f}{med['p50_ms']:>9.3f}{med['p99_ms']:>9.3f}")
    return None


if __name__ == "__main__":
    main()
