"""What a `torchtide serve` process tells its operator: the model lifecycle and the model table
in its log, failed requests at --log-verbose >= 1, each listener once; and server metadata that
Triton's own example scripts (simple_http/grpc_health_metadata.py) accept."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("torchtide.frontends.http")
pytest.importorskip("torchtide.frontends.grpc")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.models import write_add_sub, write_model
from tests.test_serve_process import BIN, Served, launch

BROKEN_CONFIG = """
backend: "python"
max_batch_size: 4
input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [1] }]
"""


class Log:
    """The server's merged stdout/stderr, read by a thread; waits on a condition, not a sleep."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60, start: int = 0) -> int:
        """The index of the first line from `start` that matches; fails after `timeout`."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if rx.search(self.lines[i]):
                        return i
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log line matches {pattern!r}:\n" + self.text())
                self._cond.wait(left)

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if rx.search(line))

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def close(self) -> None:
        self._thread.join(30)


def stop(s: Served, log: Log) -> None:
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(30)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(30)
    log.close()
    if s.proc.stdout is not None:
        s.proc.stdout.close()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_add_sub(tmp_path)
    write_model(tmp_path, "broken", BROKEN_CONFIG, {"1/model.py": "raise RuntimeError('boom')\n"})
    return tmp_path


def test_log_tells_the_model_lifecycle_and_failed_requests(repo: Path) -> None:
    s = launch(repo, "--model-control-mode=explicit", "--load-model=*", "--log-verbose=1")
    log = Log(s.proc)
    try:
        table = log.wait_for(r"^\| Model +\| Version \| Status")
        assert log.wait_for(r"loading: add_sub:1") < table
        assert log.wait_for(r"successfully loaded 'add_sub' version 1") < table
        assert log.wait_for(r"failed to load 'broken' version 1: UNAVAILABLE: .*boom") < table
        assert re.search(r"^\| add_sub +\| 1 +\| READY +\|$", log.text(), re.M)
        assert re.search(r"^\| broken +\| 1 +\| UNAVAILABLE: .*boom.* \|$", log.text(), re.M)
        for service in ("HTTPService", "GRPCInferenceService", "Metrics Service"):
            assert log.count(f"Started {service} at 127.0.0.1:") == 1, log.text()
        assert log.count(r"failed to load 'broken'|'broken'.*UNAVAILABLE") == 1, log.text()

        http = httpclient.InferenceServerClient(f"127.0.0.1:{s.http}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc}")
        mark = len(log.lines)
        http.unload_model("add_sub")
        log.wait_for(r"unloading: add_sub:1", start=mark)
        log.wait_for(r"successfully unloaded 'add_sub' version 1", start=mark)
        http.load_model("add_sub")
        log.wait_for(r"loading: add_sub:1", start=mark)
        mark = log.wait_for(r"successfully loaded 'add_sub' version 1", start=mark)
        grpc.load_model("add_sub")  # a reload beside the serving version
        log.wait_for(r"reloading: add_sub:1", start=mark)
        mark = log.wait_for(r"successfully loaded 'add_sub' version 1", start=mark + 1)
        with pytest.raises(InferenceServerException):
            http.load_model("broken")
        log.wait_for(r"failed to load 'broken' version 1: UNAVAILABLE: .*boom", start=mark)

        # --log-verbose=1: each failed request with its reason, on both protocols
        with pytest.raises(InferenceServerException):
            http.get_model_metadata("nope")
        log.wait_for(r"HTTP GET /v2/models/nope failed: 404 Request for unknown model: 'nope'")
        with pytest.raises(InferenceServerException):
            grpc.get_model_metadata("nope")
        log.wait_for(
            r"gRPC /inference.GRPCInferenceService/ModelMetadata failed: \w+ "
            r"Request for unknown model: 'nope'"
        )
    finally:
        stop(s, log)


def test_failed_requests_are_quiet_at_verbose_0_until_asked(tmp_path: Path) -> None:
    write_add_sub(tmp_path)
    s = launch(tmp_path, "--model-control-mode=explicit", "--load-model=add_sub")
    log = Log(s.proc)
    try:
        log.wait_for(r"^\| add_sub +\| 1 +\| READY")
        http = httpclient.InferenceServerClient(f"127.0.0.1:{s.http}")
        with pytest.raises(InferenceServerException):
            http.get_model_metadata("nope")
        http.unload_model("add_sub")  # logs after the failed request has been answered
        log.wait_for(r"successfully unloaded 'add_sub' version 1")
        assert log.count("nope") == 0, log.text()
        http.update_log_settings({"log_verbose_level": 1})
        with pytest.raises(InferenceServerException):
            http.get_model_metadata("nope")
        log.wait_for(r"HTTP GET /v2/models/nope failed: 404")
    finally:
        stop(s, log)


# ------------------------------------------------------------ Triton's example scripts


def http_health_metadata(url: str, model: str) -> None:
    """What tritonclient's simple_http_health_metadata.py checks (not shipped in the wheel)."""
    c = httpclient.InferenceServerClient(url)
    assert c.is_server_live(query_params={"test_1": 1, "test_2": 2}), "is_server_live"
    assert c.is_server_ready(), "is_server_ready"
    assert c.is_model_ready(model), "is_model_ready"
    assert c.get_server_metadata()["name"] == "triton", "get_server_metadata"
    meta = c.get_model_metadata(model, query_params={"test_1": 1, "test_2": 2})
    assert meta["name"] == model, "get_model_metadata"
    with pytest.raises(InferenceServerException, match="Request for unknown model"):
        c.get_model_metadata("wrong_model_name")


def grpc_health_metadata(url: str, model: str) -> None:
    """What tritonclient's simple_grpc_health_metadata.py checks (not shipped in the wheel)."""
    c = grpcclient.InferenceServerClient(url)
    assert c.is_server_live(headers={"test": "1", "dummy": "2"}), "is_server_live"
    assert c.is_server_ready(), "is_server_ready"
    assert c.is_model_ready(model), "is_model_ready"
    assert c.get_server_metadata().name == "triton", "get_server_metadata"
    assert c.get_model_metadata(model, headers={"test": "1"}).name == model, "get_model_metadata"
    with pytest.raises(InferenceServerException, match="Request for unknown model"):
        c.get_model_metadata("wrong_model_name")
    assert c.get_model_config(model).config.name == model, "get_model_config"


def test_triton_example_scripts_pass_and_server_name_flag(tmp_path: Path) -> None:
    write_add_sub(tmp_path, "simple")
    s = launch(tmp_path)
    log = Log(s.proc)
    try:
        log.wait_for(r"^\| simple +\| 1 +\| READY")
        http_health_metadata(f"127.0.0.1:{s.http}", "simple")
        grpc_health_metadata(f"127.0.0.1:{s.grpc}", "simple")
        from torchtide import __version__

        assert (
            httpclient.InferenceServerClient(f"127.0.0.1:{s.http}").get_server_metadata()["version"]
            == __version__
        )
    finally:
        stop(s, log)
    # Another name on request: --server-name (ours) or tritonserver's --id.
    for flag, command in (("--server-name=acme", "torchtide"), ("--id=acme", "tritonserver")):
        s = launch(tmp_path, flag, command=command)
        log = Log(s.proc)
        try:
            log.wait_for(r"^\| simple +\| 1 +\| READY")
            meta = httpclient.InferenceServerClient(f"127.0.0.1:{s.http}").get_server_metadata()
            assert meta["name"] == "acme"
            grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc}")
            assert grpc.get_server_metadata().name == "acme"
        finally:
            stop(s, log)
    out = subprocess.run(
        [str(BIN / "torchtide"), "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--server-name" in out and "triton" in out


def test_exit_on_error_says_why(repo: Path) -> None:
    s = launch(repo, "--exit-on-error=true")
    log = Log(s.proc)
    try:
        assert s.proc.wait(60) == 1
        log.wait_for(r"exiting: broken failed to load \(--exit-on-error\)")
        assert log.count(r"failed to load 'broken'") == 1, log.text()
    finally:
        stop(s, log)
