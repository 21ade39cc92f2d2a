"""`torchtide serve` / `tritonserver` as real processes: start-up, liveness during long loads,
SIGTERM drain on both protocols, idle keep-alive connections, exit codes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchtide.frontends.http")
pytest.importorskip("torchtide.frontends.grpc")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from tests.models import write_add_sub, write_model

BIN = Path(sys.executable).parent
ROOT = Path(__file__).parent.parent  # this checkout's src/ wins over the installed torchtide

# A model whose initialize() and execute() wait for gate files the test creates, so the test (not
# the machine's speed) decides when a load or a request ends. execute() first appends the number
# of requests it got to `executing`, so the test knows what the model holds.
SLOW_PY = """
import json
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils


def wait_for(path):
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.gates = Path(params["GATES"]["string_value"])
        (self.gates / "initializing").touch()
        wait_for(self.gates / "open-initialize")

    def execute(self, requests):
        with open(self.gates / "executing", "a") as f:
            f.write(f"{len(requests)}\\n")
        wait_for(self.gates / "open-execute")
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]) for r in requests]
"""


def slow_model(repo: Path, *, initialize: bool = True, execute: bool = True) -> Path:
    """The gated model; `initialize`/`execute` False: that gate starts closed (open it with
    `open_gate`). Returns the gate folder."""
    gates = repo.parent / f"{repo.name}-gates"
    gates.mkdir(exist_ok=True)
    for name, is_open in (("initialize", initialize), ("execute", execute)):
        if is_open:
            open_gate(gates, name)
    write_model(
        repo,
        "slow",
        f"""
        backend: "python"
        max_batch_size: 8
        input [{{ name: "IN" data_type: TYPE_FP32 dims: [1] }}]
        output [{{ name: "OUT" data_type: TYPE_FP32 dims: [1] }}]
        dynamic_batching {{ }}
        parameters {{ key: "GATES" value {{ string_value: "{gates}" }} }}
        """,
        {"1/model.py": SLOW_PY},
    )
    return gates


def open_gate(gates: Path, name: str) -> None:
    (gates / f"open-{name}").touch()


def executing(gates: Path) -> int:
    """How many requests the model has taken into execute() so far."""
    f = gates / "executing"
    return sum(int(n) for n in f.read_text().split()) if f.exists() else 0


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], http: int, grpc: int, metrics: int) -> None:
        self.proc, self.http, self.grpc, self.metrics = proc, http, grpc, metrics

    def pending(self, model: str) -> int:
        """Requests queued in the server for `model` (Triton's pending-request gauge)."""
        url = f"http://127.0.0.1:{self.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=30) as r:
            page = r.read().decode()
        prefix = f'nv_inference_pending_request_count{{model="{model}",version="1"}} '
        line = next((ln for ln in page.splitlines() if ln.startswith(prefix)), prefix + "0")
        return int(float(line.split()[-1]))

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0


def launch(repo: Path, *extra: str, command: str = "torchtide") -> Served:
    http, grpc, metrics = free_port(), free_port(), free_port()
    args = [str(BIN / command)]
    if command == "torchtide":
        args.append("serve")
    args += [
        f"--model-repository={repo}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        *extra,
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT / "src"), str(ROOT)))},
    )
    return Served(proc, http, grpc, metrics)


def wait_for(cond, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    write_add_sub(tmp_path)
    yield tmp_path


def test_liveness_answers_during_a_long_startup_load(repo: Path) -> None:
    gates = slow_model(repo, initialize=False)  # 'slow' loads until the test lets it
    s = launch(repo)
    try:
        wait_for(lambda: s.status("/v2/health/live") == 200, 60)
        wait_for(lambda: (gates / "initializing").exists(), 60)
        assert s.status("/v2/health/ready") != 200  # still loading 'slow'
        open_gate(gates, "initialize")
        wait_for(lambda: s.status("/v2/health/ready") == 200, 60)
    finally:
        open_gate(gates, "initialize")
        s.proc.terminate()
        s.proc.wait(30)


def test_sigterm_drains_in_flight_and_refuses_new_work(repo: Path) -> None:
    gates = slow_model(repo, execute=False)
    s = launch(repo, "--exit-timeout-secs=60")
    try:
        wait_for(lambda: s.status("/v2/health/ready") == 200)
        x = np.ones((1, 1), np.float32)

        def http_call() -> np.ndarray:
            c = httpclient.InferenceServerClient(f"127.0.0.1:{s.http}", network_timeout=30)
            i = httpclient.InferInput("IN", [1, 1], "FP32")
            i.set_data_from_numpy(x)
            return c.infer("slow", [i]).as_numpy("OUT")

        def grpc_call() -> np.ndarray:
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc}")
            i = grpcclient.InferInput("IN", [1, 1], "FP32")
            i.set_data_from_numpy(x)
            return c.infer("slow", [i]).as_numpy("OUT")

        grpc_probe = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc}")
        with ThreadPoolExecutor(8) as pool:
            inflight = [pool.submit(http_call) for _ in range(3)] + [
                pool.submit(grpc_call) for _ in range(3)
            ]
            # all six are in the server: executing (held by the gate) or queued behind
            wait_for(lambda: executing(gates) + s.pending("slow") == 6)
            s.proc.send_signal(signal.SIGTERM)
            # new work is refused on both protocols
            wait_for(lambda: s.status("/v2/health/ready") != 200)
            with pytest.raises(InferenceServerException):
                grpc_call()
            assert not grpc_probe.is_server_ready()
            open_gate(gates, "execute")
            results = [f.result(timeout=60) for f in inflight]
        assert all(np.array_equal(r, x) for r in results)
        assert s.proc.wait(60) == 0
    finally:
        open_gate(gates, "execute")
        if s.proc.poll() is None:
            s.proc.kill()


def test_idle_keepalive_connection_does_not_hold_shutdown(repo: Path) -> None:
    s = launch(repo, "--exit-timeout-secs=600")
    try:
        wait_for(lambda: s.status("/v2/health/ready") == 200)
        sock = socket.create_connection(("127.0.0.1", s.http))
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200" in sock.recv(1024)  # the connection stays open, idle
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(120) == 0  # long before --exit-timeout-secs
        sock.close()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_tritonserver_alias_with_kserve_flags(repo: Path) -> None:
    s = launch(
        repo,
        "--allow-grpc=true",
        "--allow-http=true",
        "--backend-config=python,x=y",
        command="tritonserver",
    )
    try:
        wait_for(lambda: s.status("/v2/health/ready") == 200)
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc}")
        assert c.is_model_ready("add_sub")
        s.proc.send_signal(signal.SIGINT)
        assert s.proc.wait(20) == 0
        log = s.proc.stdout.read().decode() if s.proc.stdout else ""
        assert "--backend-config=python,x=y" in log  # named in a warning, not silently dropped
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_missing_repository_exits_2(tmp_path: Path) -> None:
    s = launch(tmp_path / "nope")
    assert s.proc.wait(30) == 2


def test_a_slow_load_call_does_not_stall_other_clients(tmp_path: Path) -> None:
    """Triton answered no other keep-alive client while an HTTP model-load call ran."""
    repo = tmp_path / "repo"
    write_add_sub(repo)
    gates = slow_model(repo, initialize=False)  # the load lasts until the test ends it
    s = launch(repo, "--model-control-mode=explicit", "--load-model=add_sub")
    try:
        wait_for(lambda: s.status("/v2/health/ready") == 200)
        loader = httpclient.InferenceServerClient(f"127.0.0.1:{s.http}", network_timeout=60)
        other = httpclient.InferenceServerClient(f"127.0.0.1:{s.http}")
        a = np.ones((1, 16), np.int32)
        inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"),
                  httpclient.InferInput("INPUT1", [1, 16], "INT32")]
        for i in inputs:
            i.set_data_from_numpy(a)
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(loader.load_model, "slow")
            wait_for(lambda: (gates / "initializing").exists())
            for _ in range(10):
                assert other.infer("add_sub", inputs).as_numpy("OUTPUT0").sum() == 32
            assert not load.done()  # all ten were answered while the load ran
            open_gate(gates, "initialize")
            load.result(timeout=60)
        assert other.is_model_ready("slow")
    finally:
        open_gate(gates, "initialize")
        s.proc.terminate()
        s.proc.wait(30)
