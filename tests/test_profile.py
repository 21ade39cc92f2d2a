"""`torchtide profile` against a real server under real traffic: a TorchScript model (two
instances, so profiled executions happen on several threads) and a Python-backend model."""

from __future__ import annotations

import asyncio
import json
import pstats
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import start_app
from tests.http_util import request
from tests.models import write_add_sub, write_model
from torchtide import profiling
from torchtide.access import parse_restriction
from torchtide.app import AppThread
from torchtide.cli import main
from torchtide.errors import ServerError
from torchtide.profiling import DISABLED

MLP_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [4] }]
dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [{ count: 2 kind: KIND_CPU }]
"""


def write_mlp(repo: Path, name: str = "mlp") -> Path:
    import torch

    torch.manual_seed(0)
    d = write_model(repo, name, MLP_CONFIG, {})
    (d / "1").mkdir(exist_ok=True)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    torch.jit.script(net.eval()).save(str(d / "1" / "model.pt"))
    return d


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("repo")
    write_mlp(r)
    write_add_sub(r)
    return r


@pytest.fixture(scope="module")
def app(repo: Path) -> Iterator[AppThread]:
    a = start_app(repo, grpc=False, allow_profiling=True)
    yield a
    a.stop()


def _inputs(model: str) -> list[httpclient.InferInput]:
    if model == "mlp":
        x = httpclient.InferInput("INPUT__0", [2, 16], "FP32")
        x.set_data_from_numpy(np.ones((2, 16), np.float32))
        return [x]
    out = []
    for name in ("INPUT0", "INPUT1"):
        t = httpclient.InferInput(name, [1, 16], "INT32")
        t.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        out.append(t)
    return out


class Traffic:
    """Clients sending requests to a model until stopped, counting answers and errors."""

    def __init__(self, port: int, model: str, clients: int = 1) -> None:
        self.port, self.model = port, model
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{self.port}", network_timeout=120)
        try:
            while not self.stop.is_set():
                try:
                    c.infer(self.model, _inputs(self.model))
                except Exception as e:
                    with self._lock:
                        self.errors.append(e)
                    return
                with self._lock:
                    self.ok += 1
        finally:
            c.close()

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(120)


def profile_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["profile", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _written(out: str, what: str) -> Path:
    line = next(x for x in out.splitlines() if x.startswith(what))
    return Path(line.rsplit(": ", 1)[1])


def test_torch_profile_under_traffic(
    app: AppThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = app.app.port("http")
    with Traffic(port, "mlp", clients=4) as traffic:
        code, out, err = profile_cli(
            capsys, "mlp", "-u", f"127.0.0.1:{port}", "--requests", "4", "--out", str(tmp_path)
        )
    assert code == 0, err
    assert not traffic.errors and traffic.ok >= 4  # served all along
    assert "aten::addmm" in out and "Input Shapes" in out and "Self CPU" in out
    assert "torch.profiler: 4 of 4 executions of 'mlp' version 1" in out
    trace_path = _written(out, "Chrome trace")
    assert trace_path.parent == tmp_path and trace_path.name.endswith(".trace.json")
    trace = json.loads(trace_path.read_text())
    ops = [e for e in trace["traceEvents"] if str(e.get("name", "")).startswith("aten::")]
    assert {e["name"] for e in ops} >= {"aten::linear", "aten::addmm", "aten::relu"}
    linear = next(e for e in ops if e["name"] == "aten::linear")
    assert linear["args"]["Input Dims"][1] == [32, 16]  # the first layer's weight
    executes = [e for e in trace["traceEvents"] if e.get("name") == "torchtide::execute"]
    assert len(executes) == 4
    assert _written(out, "table").read_text().startswith("---")


def test_python_model_gets_cprofile(
    app: AppThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = app.app.port("http")
    with Traffic(port, "add_sub") as traffic:
        code, out, err = profile_cli(
            capsys, "add_sub", "-u", f"http://127.0.0.1:{port}", "-n", "2", "--out", str(tmp_path)
        )
    assert code == 0, err
    assert not traffic.errors
    assert "cProfile: 2 of 2 executions of 'add_sub'" in out
    assert "model.py" in out and "(execute)" in out and "tottime" in out
    stats = pstats.Stats(str(_written(out, "cProfile stats")))
    functions = {f"{Path(file).name}:{name}" for file, _, name in stats.stats}  # type: ignore[attr-defined]
    assert "model.py:execute" in functions


def test_report_as_data(app: AppThread) -> None:
    port = app.app.port("http")
    with Traffic(port, "mlp"):
        r = request(port, "POST", "/v2/models/mlp/versions/1/profile", {"executions": 1})
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["model_name"] == "mlp" and doc["model_version"] == "1"
    assert doc["executions"] == doc["requested"] == 1
    top = doc["top"]
    assert top == sorted(top, key=lambda row: -row["self_cpu_us"])
    addmm = [row for row in top if row["name"] == "aten::addmm"]
    assert {str(row["input_shapes"][2]) for row in addmm} == {"[16, 32]", "[32, 4]"}


def test_a_second_profile_while_one_runs_is_refused(app: AppThread) -> None:
    port = app.app.port("http")
    server = app.app.server
    first = asyncio.run_coroutine_threadsafe(
        server.profile_with_parameters("mlp", "", {"executions": 1, "timeout": 120}), app.loop
    )
    app.call(asyncio.sleep(0))  # runs after the first request has begun waiting
    assert server.profiler.session is not None
    for model in ("mlp", "add_sub"):
        r = request(port, "POST", f"/v2/models/{model}/profile", {"executions": 1})
        assert r.status == 400
        assert r.error == (
            "a profile is already running (model 'mlp', 0 of 1 executions); try again when it ends"
        )
    with Traffic(port, "mlp"):
        report = first.result(120)
    assert report.executions == 1 and server.profiler.session is None


def test_no_traffic_is_a_clear_error(
    app: AppThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = app.app.port("http")
    code, out, err = profile_cli(
        capsys, "add_sub", "-u", f"127.0.0.1:{port}", "--timeout", "0.2", "--out", str(tmp_path)
    )
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == (
        "torchtide profile: error: the server answered 503: profile of model 'add_sub' ended "
        "with nothing: no execution of model 'add_sub' within 0.2 s: send it requests while "
        "profiling, or allow more time"
    )
    assert not list(tmp_path.iterdir())


def test_fewer_executions_than_asked_within_the_timeout(app: AppThread) -> None:
    port = app.app.port("http")
    server = app.app.server
    pending = asyncio.run_coroutine_threadsafe(
        server.profile_with_parameters("add_sub", "", {"executions": 3, "timeout": 2}), app.loop
    )
    app.call(asyncio.sleep(0))
    c = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        c.infer("add_sub", _inputs("add_sub"))
    finally:
        c.close()
    report = pending.result(120)
    assert (report.executions, report.requested) == (1, 3)
    assert report.note == "only 1 of 3 executions within 2 s"


def test_a_profiler_that_fails_never_fails_the_requests(
    app: AppThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gpu: bool) -> Any:
        raise RuntimeError("profiler unavailable")

    monkeypatch.setitem(profiling._STARTERS, "python", broken)
    port = app.app.port("http")
    with Traffic(port, "add_sub") as traffic:
        r = request(port, "POST", "/v2/models/add_sub/profile", {"executions": 2})
    assert not traffic.errors and traffic.ok >= 2
    assert (r.status, r.error) == (
        503,
        "profile of model 'add_sub' ended with nothing: 2 executions ran, but none could be "
        "profiled (see the server log)",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"executions": 0}, "profile parameter 'executions' must be an integer from 1 to 100"),
        ({"executions": 101}, "profile parameter 'executions' must be an integer from 1 to 100"),
        ({"executions": True}, "profile parameter 'executions' must be an integer from 1 to 100"),
        (
            {"timeout": 0},
            "profile parameter 'timeout' must be a number of seconds, more than 0 and at most 3600",
        ),
        (
            {"timeout": "1"},
            "profile parameter 'timeout' must be a number of seconds, more than 0 and at most 3600",
        ),
        ({"rows": 3}, "unrecognized profile parameter 'rows'; expected 'executions' or 'timeout'"),
    ],
)
def test_bad_parameters(app: AppThread, body: dict[str, Any], message: str) -> None:
    r = request(app.app.port("http"), "POST", "/v2/models/mlp/profile", body)
    assert (r.status, r.error) == (400, message)


def test_unknown_model_and_method(app: AppThread) -> None:
    port = app.app.port("http")
    r = request(port, "POST", "/v2/models/nope/profile", {})
    assert r.status == 404 and r.error == "Request for unknown model: 'nope' is not found"
    assert request(port, "GET", "/v2/models/mlp/profile").status == 405


def test_shutdown_ends_a_waiting_profile(repo: Path) -> None:
    a = start_app(repo, grpc=False, allow_profiling=True)
    pending = asyncio.run_coroutine_threadsafe(
        a.app.server.profile_with_parameters("mlp", "", {"timeout": 600}), a.loop
    )
    a.call(asyncio.sleep(0))
    a.stop()
    with pytest.raises(ServerError) as e:
        pending.result(60)
    assert e.value.message == (
        "profile of model 'mlp' ended with nothing: the server is shutting down"
    )


# ---------------------------------------------------------------------------- off by default, access


def test_disabled_by_default(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = start_app(repo, grpc=False)
    try:
        port = a.app.port("http")
        r = request(port, "POST", "/v2/models/mlp/profile", {"executions": 1})
        assert (r.status, r.error) == (501, DISABLED)
        code, _, err = profile_cli(capsys, "mlp", "-u", f"127.0.0.1:{port}")
        assert code == 1
        assert (
            err.splitlines()[-1] == f"torchtide profile: error: the server answered 501: {DISABLED}"
        )
        assert a.app.server.profiler.session is None
    finally:
        a.stop()


def test_profile_group_and_tokens(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("inference,metadata:infer-token\nprofile:profile-token\n")
    http = parse_restriction("profile:admin-key=secret", "h", grpc=False)
    a = start_app(
        repo, grpc=False, allow_profiling=True, auth_token_file=tokens, http_restricted=http
    )
    try:
        port = a.app.port("http")
        path, body = "/v2/models/add_sub/profile", {"timeout": 0.1}
        admin = {"admin-key": "secret"}
        r = request(port, "POST", path, body)
        assert (r.status, r.error) == (403, "This API is restricted, expecting header 'admin-key'")
        r = request(port, "POST", path, body, admin)
        assert r.status == 401 and "the 'profile' API requires a bearer token" in r.error
        r = request(port, "POST", path, body, {**admin, "Authorization": "Bearer infer-token"})
        assert (r.status, r.error) == (403, "the bearer token is not granted the 'profile' API")
        r = request(port, "POST", path, body, {**admin, "Authorization": "Bearer profile-token"})
        assert r.status == 503 and "no execution of model 'add_sub'" in r.error  # let through
        code, _, err = profile_cli(
            capsys, "add_sub", "-u", f"127.0.0.1:{port}", "--timeout", "0.1",
            "-H", "admin-key: secret", "-H", "Authorization: Bearer profile-token",
            "--out", str(tmp_path),
        )  # fmt: skip
        assert code == 1 and "answered 503" in err  # through access control, no traffic
    finally:
        a.stop()


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["profile", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--requests N" in out and "--out DIR" in out and "--timeout S" in out
    for bad in (["m", "--requests", "0"], ["m", "--timeout", "-1"], ["m", "-H", "nocolon"]):
        with pytest.raises(SystemExit) as e:
            main(["profile", *bad])
        assert e.value.code == 2
    capsys.readouterr()
    code, _, err = profile_cli(capsys, "m", "-u", "127.0.0.1:1", "--timeout", "1")
    assert code == 1 and "torchtide profile: error: cannot reach 127.0.0.1:1" in err


def test_serve_flag() -> None:
    from torchtide.cli import serve_parser

    assert serve_parser().parse_args([]).allow_profiling is False
    assert serve_parser().parse_args(["--allow-profiling"]).allow_profiling is True
    assert serve_parser().parse_args(["--allow-profiling=false"]).allow_profiling is False
