"""`torchtide bench` when the server goes away mid-step, and when it is interrupted: the step
ends with a clear error and a non-zero exit, Ctrl-C always stops the tool. Real processes: a
`torchtide serve` that is killed, the bench as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torchtide.frontends.http")
pytest.importorskip("torchtide.frontends.grpc")

import tritonclient.http as httpclient

from tests.models import write_add_sub
from tests.test_serve_process import BIN, ROOT, Served, launch, wait_for
from torchtide.bench.runner import Mode, Runner, Step

# Far longer than any test may take: a bench that ends did so because it noticed.
LONG = ["--warmup", "0", "--duration", "600", "--concurrency", "4", "-q", "--timeout", "30"]
PROMPTLY_S = 60.0  # generous on a loaded machine, and a tenth of the step


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    write_add_sub(tmp_path)
    s = launch(tmp_path)
    try:
        wait_for(lambda: s.status("/v2/health/ready") == 200, 60)
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.wait(30)
        if s.proc.stdout is not None:
            s.proc.stdout.close()


def bench(s: Served, protocol: str, *extra: str) -> subprocess.Popen[str]:
    port = s.http if protocol == "http" else s.grpc
    return subprocess.Popen(
        [
            str(BIN / "torchtide"),
            "bench",
            "add_sub",
            "-i",
            protocol,
            "-u",
            f"127.0.0.1:{port}",
            *LONG,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT / "src"), str(ROOT)))},
    )


def wait_until_running(s: Served, proc: subprocess.Popen[str]) -> None:
    """The step is under way once the server has executed some of its requests."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{s.http}")

    def served() -> bool:
        assert proc.poll() is None, proc.communicate()
        stats = client.get_inference_statistics("add_sub")["model_stats"][0]
        return int(stats["inference_count"]) > 20

    wait_for(served, 60)
    client.close()


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=PROMPTLY_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the bench did not end within {PROMPTLY_S} s") from None
    return proc.returncode, err, time.monotonic() - t0


@pytest.mark.parametrize(
    "protocol, extra",
    [("http", ()), ("grpc", ()), ("grpc", ("--grpc-client", "grpcio"))],
    ids=["http", "grpc-native", "grpc-grpcio"],
)
def test_a_lost_server_ends_the_step(server: Served, protocol: str, extra: tuple[str, ...]) -> None:
    proc = bench(server, protocol, *extra)
    wait_until_running(server, proc)
    server.proc.kill()
    server.proc.wait(30)
    rc, err, _ = finish(proc)
    assert rc == 1, err
    assert "the run stopped" in err and "concurrency 4" in err, err
    assert f"cannot reach the {'HTTP' if protocol == 'http' else 'gRPC'} server" in err, err


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sigint_stops_the_bench(server: Served, protocol: str) -> None:
    proc = bench(server, protocol)
    wait_until_running(server, proc)
    proc.send_signal(signal.SIGINT)
    rc, err, _ = finish(proc)
    assert rc == 130, err
    assert "interrupted" in err, err


def test_sigint_stops_the_bench_after_the_server_is_gone(server: Served) -> None:
    """The gRPC case that spun and ignored Ctrl-C: the server is gone, SIGINT comes at once."""
    proc = bench(server, "grpc")
    wait_until_running(server, proc)
    server.proc.kill()
    server.proc.wait(30)
    proc.send_signal(signal.SIGINT)
    rc, err, _ = finish(proc)
    # Whichever it noticed first; never a hang. A SIGINT that lands while the process is already
    # exiting (it saw the lost server first and its handlers are gone) ends it by the signal.
    assert rc in (1, 130, -signal.SIGINT), err


class _Refusing:
    """A worker whose every call fails at once, without ever waiting: the shape of a client on
    a dead connection. The runner must still give the event loop its turns."""

    async def infer(self, request: Any) -> str | None:
        return "UNAVAILABLE: connection lost"

    def close(self) -> None:
        pass


class _Transport:
    protocol = "test"

    async def new_worker(self) -> _Refusing:
        return _Refusing()

    async def statistics(self, model: str, version: str) -> None:
        return None


def test_a_worker_that_never_waits_cannot_starve_the_step() -> None:
    """Run on a loop in a thread: a starved loop cannot be stopped from inside the test."""
    results: list[tuple[Any, int]] = []

    async def main() -> None:
        runner = Runner(_Transport(), [b"x"], "m", warmup_s=0.0, duration_s=0.3)  # type: ignore[arg-type]
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.get_running_loop().create_task(ticker())
        result = await runner.run_step(Step(Mode.CONCURRENCY, 2))
        t.cancel()
        results.append((result, ticks))

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the step never ended: its workers starved the event loop"
    [(result, ticks)] = results
    assert result.errors > 0 and result.requests == 0
    assert ticks > 0  # other tasks ran during the step
