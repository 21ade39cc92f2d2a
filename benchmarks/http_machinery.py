"""How fast is the HTTP front-end on the W1 add_sub model? One command, one table.

    PYTHONPATH=src:. python benchmarks/http_machinery.py --client wrk --repeat 5 --inprocess
    PYTHONPATH=src:. python benchmarks/http_machinery.py --server torchtide starlette --live
    PYTHONPATH=src:. python benchmarks/http_machinery.py --client tritonclient --concurrency 1

(`starlette` needs uvicorn and starlette importable; they are not project dependencies.)

The server runs in its own process (uvloop); the load generator in this one, on the same
machine. `--client raw` (default) is a small closed-loop keep-alive HTTP/1.1 client on uvloop +
httptools that sends the exact bytes tritonclient.http sends for add_sub (binary inputs,
`binary_data_output`); `--client wrk` drives wrk (apt install wrk) with the same body;
`--client tritonclient` uses tritonclient.http with one thread per concurrent caller.
`--inprocess` also measures InferenceServer.infer with no network, for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = np.arange(16, dtype=np.int32).reshape(1, 16)


def request_bytes() -> tuple[bytes, int]:
    """The body tritonclient.http sends for add_sub with no outputs named, and its JSON length."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 64},
                }
                for n in ("INPUT0", "INPUT1")
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + DATA.tobytes() * 2, len(header)


# ------------------------------------------------------------------------------------ servers


def serve(kind: str, port_file: str) -> None:
    import uvloop
    from tests.models import write_add_sub

    from torchtide.app import App, AppOptions
    from torchtide.server import ServerOptions

    repo = Path(tempfile.mkdtemp(prefix="bench-repo-"))
    write_add_sub(repo)

    async def main() -> None:
        opts = AppOptions(
            ServerOptions([repo]),
            http_port=0,
            grpc_port=None,
            metrics_port=None,
            http_address="127.0.0.1",
        )
        if kind == "torchtide":
            app = App(opts)
            await app.start()
            port = app.port("http")
        else:
            opts.http_port = None
            app = App(opts)
            await app.start()
            port = await _start_starlette(app)
        Path(port_file).write_text(str(port))
        await asyncio.Event().wait()

    uvloop.run(main())


async def _start_starlette(app: Any) -> int:
    """The same codec behind uvicorn + starlette, to compare the HTTP machinery alone."""
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from torchtide.frontends.http.decode import ShmAccess, decode_request
    from torchtide.frontends.http.encode import encode_response

    server = app.server
    shm = ShmAccess(server.shm, False)

    async def infer(request: Request) -> Response:
        body = await request.body()
        hl = request.headers.get("inference-header-content-length")
        req, plan = decode_request(
            body, int(hl) if hl else None, request.path_params["model"], "", shm
        )
        enc = encode_response(await server.infer(req), plan, shm)
        if not enc.blobs:
            return Response(enc.header, media_type="application/json")
        return Response(
            b"".join([enc.header, *map(bytes, enc.blobs)]),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(enc.header))},
        )

    async def stats(request: Request) -> Response:
        model_stats = server.statistics(request.path_params["model"])
        return Response(json.dumps({"model_stats": model_stats}), media_type="application/json")

    async def live(request: Request) -> Response:
        return Response(b"", media_type="text/plain")

    web = Starlette(
        routes=[
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/v2/models/{model}/stats", stats),
            Route("/v2/health/live", live),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(web, log_level="warning", loop="uvloop", http="httptools")
    asyncio.get_running_loop().create_task(uvicorn.Server(config).serve(sockets=[sock]))
    await asyncio.sleep(0.5)
    return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------ clients


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.status = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


async def raw_load(port: int, concurrency: int, seconds: float, live: bool = False) -> list[float]:
    body, hl = request_bytes()
    req = (
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (hl, len(body))
    ) + body
    if live:  # the machinery alone: no body, no model
        req = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
        assert conn.transport is not None
        while time.perf_counter() < stop:
            conn.done = loop.create_future()
            t0 = time.perf_counter()
            conn.transport.write(req)
            await conn.done
            latencies.append(time.perf_counter() - t0)
            if conn.status != 200:
                raise RuntimeError(f"HTTP {conn.status}")
        conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def tritonclient_load(port: int, concurrency: int, seconds: float) -> list[float]:
    import tritonclient.http as httpclient

    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    def worker() -> None:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        ins = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i in ins:
            i.set_data_from_numpy(DATA)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            c.infer("add_sub", ins)
            latencies.append(time.perf_counter() - t0)
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def wrk_load(port: int, concurrency: int, seconds: float) -> tuple[float, float, float]:
    """wrk's own figures: (requests/s, p50 ms, p99 ms)."""
    body, hl = request_bytes()
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f'wrk.body = io.open("{d}/body", "rb"):read("*a")\n'
            f'wrk.headers["Inference-Header-Content-Length"] = "{hl}"\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
            "done = function(summary, latency, requests)\n"
            '  io.write(string.format("RESULT %f %f %f\\n", summary.requests / '
            "(summary.duration / 1e6), latency:percentile(50) / 1000, "
            "latency:percentile(99) / 1000))\nend\n"
        )
        (Path(d) / "body").write_bytes(body)
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{seconds:.0f}s",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}/v2/models/add_sub/infer",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    rps, p50, p99 = (float(v) for v in line.split()[1:])
    return rps, p50, p99


async def inprocess(concurrency: int, seconds: float) -> tuple[float, float]:
    """InferenceServer.infer with no network: (infer/s, p50 ms)."""
    from tests.models import write_add_sub

    from torchtide.server import InferenceServer, ServerOptions

    repo = Path(tempfile.mkdtemp(prefix="bench-repo-"))
    write_add_sub(repo)
    server = InferenceServer(ServerOptions([repo]))
    await server.start()
    latencies: list[float] = []
    for _ in range(200):  # warm up
        await server.infer_numpy("add_sub", {"INPUT0": DATA, "INPUT1": DATA})
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await server.infer_numpy("add_sub", {"INPUT0": DATA, "INPUT1": DATA})
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = len(latencies) / (time.perf_counter() - t0)
    await server.stop()
    return rate, float(np.percentile(latencies, 50)) * 1e3


# ------------------------------------------------------------------------------------ main


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counts(port: int) -> tuple[int, int]:
    """add_sub's (inference_count, execution_count) from the statistics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/add_sub/stats") as r:
        s = json.loads(r.read())["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def measure(
    client: str, port: int, c: int, seconds: float, pid: int, live: bool = False
) -> tuple[float, float, float, float, float]:
    """One run: (infer/s, p50 ms, p99 ms, server CPU µs per request, mean batch size). The CPU
    figure hardly depends on what else runs on the machine; 1e6 / it is one core's ceiling."""
    import uvloop

    inf0, exe0 = counts(port)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    if client == "wrk":
        rps, p50, p99 = wrk_load(port, c, seconds)
        n = rps * (time.perf_counter() - t0)
    else:
        if client == "raw":
            lat = uvloop.run(raw_load(port, c, seconds, live))
        else:
            lat = tritonclient_load(port, c, seconds)
        n = len(lat)
        rps = n / (time.perf_counter() - t0)
        p50, p99 = (float(np.percentile(lat, q)) * 1e3 for q in (50, 99))
    cpu = (cpu_seconds(pid) - cpu0) / max(n, 1) * 1e6
    inf1, exe1 = counts(port)
    return rps, p50, p99, cpu, (inf1 - inf0) / max(exe1 - exe0, 1)


def start_server(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = Path(tempfile.mkdtemp(prefix="bench-")) / "port"
    proc = subprocess.Popen([sys.executable, __file__, "--server", kind, "--serve", str(port_file)])
    deadline = time.time() + 120
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            sys.exit(f"the {kind} server did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--server",
        nargs="+",
        choices=["torchtide", "starlette"],
        default=["torchtide"],
        help="several: their runs are interleaved, so a shared machine's noise hits all alike",
    )
    ap.add_argument("--client", choices=["raw", "wrk", "tritonclient"], default="raw")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per point; the table shows the median run by throughput",
    )
    ap.add_argument(
        "--inprocess",
        action="store_true",
        help="also InferenceServer.infer with no network (interleaved too), for the ratio",
    )
    ap.add_argument(
        "--live", action="store_true", help="GET /v2/health/live instead of infer (raw client)"
    )
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.server[0], args.serve)
        return
    if args.client == "wrk" and shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    import uvloop

    servers = {kind: start_server(kind) for kind in args.server}
    Row = tuple[float, float, float, float, float]
    results: dict[tuple[str, int], list[Row]] = {}
    try:
        for _, port in servers.values():
            uvloop.run(raw_load(port, 4, 1.0))  # warm up
        for c in args.concurrency:
            for _ in range(args.repeat):
                for kind, (proc, port) in servers.items():
                    row = measure(args.client, port, c, args.seconds, proc.pid, args.live)
                    results.setdefault((kind, c), []).append(row)
                if args.inprocess:
                    rate, p50 = uvloop.run(inprocess(c, args.seconds))
                    results.setdefault(("in-process", c), []).append((rate, p50, 0, 0, 0))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    print(
        f"client={args.client} seconds={args.seconds} repeat={args.repeat} "
        f"cores={os.cpu_count()} endpoint={'live' if args.live else 'add_sub infer'}"
    )
    median: dict[tuple[str, int], Row] = {}
    for kind in [*args.server, *(["in-process"] if args.inprocess else [])]:
        print(f"\n{kind}")
        print(
            f"{'concurrency':>11} {'infer/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'srv us/req':>10} {'batch':>6}"
        )
        for c in args.concurrency:
            runs = sorted(results[kind, c])
            rps, p50, p99, cpu, batch = median[kind, c] = runs[len(runs) // 2]
            spread = f"  (runs: {', '.join(f'{r[0]:.0f}' for r in runs)})" if len(runs) > 1 else ""
            print(f"{c:>11} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {cpu:>10.1f} {batch:>6.2f}{spread}")
    if args.inprocess:
        print()
        for kind in args.server:
            for c in args.concurrency:
                served, limit = median[kind, c], median["in-process", c]
                print(
                    f"{kind} c={c}: {served[0] / limit[0]:.2f} of in-process throughput, "
                    f"p50 overhead {served[1] - limit[1]:+.3f} ms"
                )


if __name__ == "__main__":
    main()
