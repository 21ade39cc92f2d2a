"""What does TLS cost? W1 (add_sub, one small request per call) over TLS vs plaintext, HTTP and
gRPC, in the same run. One command, one table.

    PYTHONPATH=src:. python benchmarks/tls_cost.py --seconds 3 --rounds 3 --concurrency 1 4

Two `torchtide serve` processes (this checkout) serve the same repository, one plaintext, one
with TLS on both ports (certificates made by trustme, TLS 1.3). The load comes from the real
tritonclient (HTTP and gRPC, one client and one thread per concurrent caller, keep-alive
connections), rounds alternating plain and TLS so that drift hits both alike. Besides rate and
median latency, the server process's CPU time per request (user + system, from /proc) is
reported: the server's own cost, the figure least disturbed by other load on the machine. A last
row times fresh connections (TCP connect + TLS handshake + one GET /v2/health/ready). Ratios are
TLS/plain.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
import trustme  # noqa: E402
from tests.models import write_add_sub  # noqa: E402

DATA = np.arange(16, dtype=np.int32).reshape(1, 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    http: int
    grpc: int
    tls: bool


def start(repo: Path, certs: dict[str, Path] | None) -> Server:
    http, grpc = free_port(), free_port()
    flags = [
        f"--model-repository={repo}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        "--allow-metrics=false",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--log-warning=false",
        "--log-info=false",
    ]
    if certs:
        for proto in ("http", "grpc"):
            flags += [
                f"--{proto}-use-ssl",
                f"--{proto}-server-cert={certs['cert']}",
                f"--{proto}-server-key={certs['key']}",
            ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchtide.cli", "serve", *flags],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return Server(proc, http, grpc, certs is not None)


def http_client(s: Server, ca: Path) -> httpclient.InferenceServerClient:
    if s.tls:
        return httpclient.InferenceServerClient(
            f"127.0.0.1:{s.http}", ssl=True, ssl_options={"ca_certs": str(ca)}
        )
    return httpclient.InferenceServerClient(f"127.0.0.1:{s.http}")


def grpc_client(s: Server, ca: Path) -> grpcclient.InferenceServerClient:
    if s.tls:
        return grpcclient.InferenceServerClient(
            f"127.0.0.1:{s.grpc}", ssl=True, root_certificates=str(ca)
        )
    return grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc}")


def wait_ready(s: Server, ca: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = grpc_client(s, ca)
            if c.is_model_ready("add_sub"):
                c.close()
                return
        except Exception:
            pass
        if s.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("a server did not start")
        time.sleep(0.2)


def inputs(mod: Any) -> list[Any]:
    out = []
    for name in ("INPUT0", "INPUT1"):
        i = mod.InferInput(name, [1, 16], "INT32")
        i.set_data_from_numpy(DATA)
        out.append(i)
    return out


@dataclass
class Cell:
    rate: float  # requests/s over all callers
    p50_ms: float
    cpu_us: float  # server CPU time per request


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def closed_loop(make: Callable[[], Any], mod: Any, callers: int, seconds: float, pid: int) -> Cell:
    """`callers` threads, each with its own client, call infer back to back for `seconds`."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    start = threading.Barrier(callers + 1)
    stop = threading.Event()

    def run(k: int) -> None:
        c = make()
        ins = inputs(mod)
        c.infer("add_sub", ins)  # connect (and handshake) before the clock starts
        start.wait()
        mine = latencies[k]
        while not stop.is_set():
            t = time.perf_counter()
            c.infer("add_sub", ins)
            mine.append(time.perf_counter() - t)
        c.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0, c0 = time.perf_counter(), cpu_seconds(pid)
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - c0
    every = [x for xs in latencies for x in xs]
    return Cell(len(every) / elapsed, statistics.median(every) * 1e3, cpu / len(every) * 1e6)


def fresh_connections(s: Server, ca: Path, n: int) -> Cell:
    """n times: connect, (handshake,) GET /v2/health/ready, close."""
    ctx = ssl.create_default_context(cafile=ca) if s.tls else None
    times = []
    t0, c0 = time.perf_counter(), cpu_seconds(s.proc.pid)
    for _ in range(n):
        t = time.perf_counter()
        raw = socket.create_connection(("127.0.0.1", s.http), timeout=30)
        sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1") if ctx else raw
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while sock.recv(4096):
            pass
        sock.close()
        times.append(time.perf_counter() - t)
    cpu = cpu_seconds(s.proc.pid) - c0
    return Cell(n / (time.perf_counter() - t0), statistics.median(times) * 1e3, cpu / n * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="per cell")
    ap.add_argument("--rounds", type=int, default=3, help="alternating plain/TLS rounds")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--connections", type=int, default=200, help="fresh connections per round")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        repo = d / "repo"
        repo.mkdir()
        write_add_sub(repo)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        certs = {"cert": d / "cert.pem", "key": d / "key.pem"}
        certs["cert"].write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(certs["key"]))
        ca_path = d / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))

        servers = {"plain": start(repo, None), "tls": start(repo, certs)}
        try:
            for s in servers.values():
                wait_ready(s, ca_path)
            results: dict[tuple[str, int, str], list[Cell]] = {}
            for _ in range(args.rounds):
                for proto, make, mod in (
                    ("http", http_client, httpclient),
                    ("grpc", grpc_client, grpcclient),
                ):
                    for callers in args.concurrency:
                        for mode, s in servers.items():
                            cell = closed_loop(
                                lambda s=s, make=make: make(s, ca_path),  # type: ignore[misc]
                                mod,
                                callers,
                                args.seconds,
                                s.proc.pid,
                            )
                            results.setdefault((proto, callers, mode), []).append(cell)
                for mode, s in servers.items():
                    cell = fresh_connections(s, ca_path, args.connections)
                    results.setdefault(("http-connect", 1, mode), []).append(cell)
        finally:
            for s in servers.values():
                s.proc.terminate()
            for s in servers.values():
                s.proc.wait(30)

    print(f"W1 add_sub, tritonclient, {args.rounds} rounds x {args.seconds:.0f} s, medians")
    print(f"{'protocol':<13}{'callers':>8}{'plain req/s':>12}{'TLS':>7}{'ratio':>7}"
          f"{'plain p50 ms':>13}{'TLS':>7}{'ratio':>7}"
          f"{'plain CPU us/req':>17}{'TLS':>6}{'ratio':>7}")  # fmt: skip
    for proto, callers in dict.fromkeys((k[0], k[1]) for k in results):
        plain, tls = results[proto, callers, "plain"], results[proto, callers, "tls"]
        row = f"{proto:<13}{callers:>8}"
        for attr, width, fmt in (("rate", 12, ".0f"), ("p50_ms", 13, ".3f"), ("cpu_us", 17, ".0f")):
            p = statistics.median(getattr(c, attr) for c in plain)
            t = statistics.median(getattr(c, attr) for c in tls)
            tw = 7 if attr != "cpu_us" else 6
            ratio = f"{t / p:.2f}" if p else "-"
            row += f"{p:>{width}{fmt}}{t:>{tw}{fmt}}{ratio:>7}"
        print(row)


if __name__ == "__main__":
    main()
