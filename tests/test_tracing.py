"""Triton's trace extension: flags, sampling, settings (HTTP, gRPC) with tritonserver's shapes and
messages, and trace files in Triton's format from tritonclient requests over HTTP, gRPC and a
gRPC stream.

Triton's `qa/common/trace_summary.py` is not vendored here; `check_summary_structure` asserts
what that script relies on (one JSON array; pieces grouped by `id`; `model_name` and a numeric
`model_version`; REQUEST_START/REQUEST_END; HTTP_RECV_START or GRPC_WAITREAD_START to tell the
front-end; every start/end pair it subtracts in order).
"""

from __future__ import annotations

import json
import queue
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import start_app
from tests.http_util import request
from tests.models import write_add_sub
from torchtide import cli
from torchtide.app import AppThread
from torchtide.trace_output import trace_json
from torchtide.tracing import (
    Level,
    TraceFlagError,
    TraceOptions,
    Tracer,
    parse_trace_flags,
)

# The pairs trace_summary.py subtracts (end must not be before start).
SUMMARY_SPANS = [
    ("REQUEST_START", "REQUEST_END"),
    ("QUEUE_START", "COMPUTE_START"),
    ("COMPUTE_START", "COMPUTE_END"),
    ("COMPUTE_START", "COMPUTE_INPUT_END"),
    ("COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
    ("COMPUTE_OUTPUT_START", "COMPUTE_END"),
]
HTTP_SPANS = [
    ("HTTP_RECV_START", "HTTP_SEND_END"),
    ("HTTP_RECV_START", "HTTP_RECV_END"),
    ("HTTP_SEND_START", "HTTP_SEND_END"),
]
GRPC_SPANS = [("GRPC_WAITREAD_END", "GRPC_SEND_END"), ("GRPC_SEND_START", "GRPC_SEND_END")]
CORE = [
    "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END",
]  # fmt: skip
HTTP_NAMES = {"HTTP_RECV_START", "HTTP_RECV_END", "INFER_RESPONSE_COMPLETE", "HTTP_SEND_START",
              "HTTP_SEND_END", *CORE}  # fmt: skip
GRPC_NAMES = {"GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "INFER_RESPONSE_COMPLETE",
              "GRPC_SEND_START", "GRPC_SEND_END", *CORE}  # fmt: skip

# GET /v2/trace/setting of tritonserver 2.51 started without tracing flags (triton-observed.md).
DEFAULT_SETTINGS = {
    "trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
    "trace_file": "", "trace_mode": "triton",
}  # fmt: skip


def group(pieces: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Pieces by trace id: the model info and the timestamps by name."""
    traces: dict[int, dict[str, Any]] = defaultdict(lambda: {"stamps": {}, "order": []})
    for p in pieces:
        t = traces[p["id"]]
        if "model_name" in p:
            t["info"] = p
        for ts in p.get("timestamps", []):
            t["stamps"][ts["name"]] = ts["ns"]
            t["order"].append(ts["name"])
    return dict(traces)


def check_summary_structure(pieces: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    traces = group(pieces)
    for p in pieces:
        assert isinstance(p["id"], int)
        if "timestamps" in p:
            assert len(p["timestamps"]) == 1  # one timestamp per piece, as tritonserver writes
            ts = p["timestamps"][0]
            assert isinstance(ts["name"], str) and isinstance(ts["ns"], int)
    for tid, t in traces.items():
        info, stamps = t["info"], t["stamps"]
        assert isinstance(info["model_name"], str)
        assert isinstance(info["model_version"], int) and info["model_version"] >= 1
        assert "parent_id" not in info
        spans = list(SUMMARY_SPANS)
        if "HTTP_RECV_START" in stamps:
            spans += HTTP_SPANS
        else:
            assert "GRPC_WAITREAD_START" in stamps, tid
            spans += GRPC_SPANS
        for start, end in spans:
            assert stamps[start] <= stamps[end], (tid, start, end, stamps)
    return traces


def add_sub_inputs(mod: Any) -> list[Any]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
    for i in inputs:
        i.set_data_from_numpy(a)
    return inputs


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("trace_repo")
    write_add_sub(r)
    return r


@pytest.fixture(scope="module")
def traced(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppThread, Path]]:
    """add_sub served with tracing as `--trace-config triton,file=F --trace-config rate=1
    --trace-config level=TIMESTAMPS` (the issue's observed tritonserver invocation)."""
    f = tmp_path_factory.mktemp("traces") / "trace.json"
    opts = parse_trace_flags([f"triton,file={f}", "rate=1", "level=TIMESTAMPS"])
    app = start_app(repo, trace=opts)
    yield app, f
    app.stop()


@pytest.fixture(scope="module")
def plain(repo: Path) -> Iterator[AppThread]:
    app = start_app(repo)
    yield app
    app.stop()


def read_traces(app: AppThread, f: Path) -> list[dict[str, Any]]:
    assert app.app.server.tracer.flush(30)
    doc = json.loads(f.read_text())
    assert isinstance(doc, list)
    return doc


# ---------------------------------------------------------------------------- flags


def test_trace_config_forms() -> None:
    o = parse_trace_flags(
        ["triton,file=/tmp/t.json", "triton,log-frequency=50", "rate=100", "level=TIMESTAMPS",
         "level=TENSORS", "count=100"]
    )
    assert o == TraceOptions(Level.TIMESTAMPS | Level.TENSORS, 100, 100, 50, "/tmp/t.json")
    assert parse_trace_flags([]) == TraceOptions()  # tritonserver's defaults: OFF, 1000, -1, 0
    o = parse_trace_flags(
        ["mode=opentelemetry", "opentelemetry,url=http://h:4318/v1/traces",
         "opentelemetry,resource=service.name=x", "triton,file=ignored"]
    )
    assert o.mode == "opentelemetry" and o.file == ""
    assert o.otel == (("url", "http://h:4318/v1/traces"), ("resource", "service.name=x"))


def test_deprecated_flags_and_overrides() -> None:
    o = parse_trace_flags(
        ["rate=7"], file="/tmp/f", levels=["TIMESTAMPS"], rate="3", count="5", log_frequency="2"
    )
    assert (o.file, o.level, o.rate, o.count, o.log_frequency) == ("/tmp/f", 1, 7, 5, 2)
    # OFF anywhere disables tracing, as in tritonserver
    assert parse_trace_flags(["level=TIMESTAMPS", "level=OFF"]).level == Level.OFF
    assert parse_trace_flags([], levels=["true", "tensors"]).level == 3


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        (",rate=1", "No trace mode specified"),
        ("rate", "--trace-config option format is '<trace mode>,<setting>=<value>'. Got rate"),
        ("rate=", "--trace-config option format is"),
        ("jaeger,url=x", 'invalid value for trace mode option: jaeger. Available options are "triton" and "opentelemetry"'),
        ("level=LOUD", "invalid value for trace level option: LOUD"),
        ("rate=abc", 'Bad option: "--trace-config rate".\nInvalid option value. Got abc'),
        ("count=-2", 'Bad option: "--trace-config count".\nProvided option value is out of bound'),
        ("mode=zipkin", "invalid value for trace mode option: zipkin"),
    ],
)
def test_bad_trace_config(arg: str, message: str) -> None:
    with pytest.raises(TraceFlagError) as ei:
        parse_trace_flags([arg])
    assert message in str(ei.value)


def test_cli_takes_trace_flags() -> None:
    assert "--trace-config" not in cli._IGNORED_FLAGS
    args = cli.serve_parser().parse_args(
        ["--model-repository", "/r", "--trace-config", "triton,file=/tmp/x",
         "--trace-config", "rate=1", "--trace-level", "TIMESTAMPS", "--trace-count", "9"]
    )
    import logging

    o = cli.trace_options(args, logging.getLogger("test"))
    assert (o.file, o.rate, o.level, o.count) == ("/tmp/x", 1, Level.TIMESTAMPS, 9)


def test_cli_refuses_bad_trace_flag(tmp_path: Path) -> None:
    assert cli.cmd_serve(["--model-repository", str(tmp_path), "--trace-config", "rate=x"]) == 2


# ---------------------------------------------------------------------------- sampling


@settings(max_examples=60, deadline=None)
@given(rate=st.integers(1, 40), count=st.integers(-1, 30), n=st.integers(0, 300))
def test_samples_every_rate_th_request_while_count_lasts(rate: int, count: int, n: int) -> None:
    tracer = Tracer(TraceOptions(Level.TIMESTAMPS, rate, count, 0, "/nonexistent/never-written"))
    hits = [i for i in range(1, n + 1) if tracer.sample("m") is not None]
    expected = [i for i in range(1, n + 1) if i % rate == 0]
    if count >= 0:
        expected = expected[:count]
    assert hits == expected
    remaining = -1 if count < 0 else count - len(expected)
    assert tracer.settings()["trace_count"] == [str(remaining)]


def test_off_is_free(plain: AppThread) -> None:
    """Tracing off: the front-ends see `active` False and nothing is started."""
    tracer = plain.app.server.tracer
    assert not tracer.active
    c = httpclient.InferenceServerClient(f"127.0.0.1:{plain.app.port('http')}")
    c.infer("add_sub", add_sub_inputs(httpclient))
    assert tracer._output is None  # no output thread, no file, no trace object


# ---------------------------------------------------------------------------- trace files


def test_http_grpc_and_stream_traces_in_tritons_format(traced: tuple[AppThread, Path]) -> None:
    app, f = traced
    h = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
    h.infer("add_sub", add_sub_inputs(httpclient), request_id="h1")
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{app.app.port('grpc')}")
    g.infer("add_sub", add_sub_inputs(grpcclient), request_id="g1")
    answers: queue.Queue[Any] = queue.Queue()
    g.start_stream(callback=lambda result, error: answers.put((result, error)))
    for rid in ("s1", "s2"):
        g.async_stream_infer("add_sub", add_sub_inputs(grpcclient), request_id=rid)
    for _ in range(2):
        assert answers.get(timeout=60)[1] is None
    g.stop_stream()
    g.close()

    traces = check_summary_structure(read_traces(app, f))
    by_rid = {t["info"].get("request_id"): t for t in traces.values()}
    assert {"h1", "g1", "s1", "s2"} <= by_rid.keys()
    assert set(by_rid["h1"]["stamps"]) == HTTP_NAMES
    for rid in ("g1", "s1", "s2"):
        assert set(by_rid[rid]["stamps"]) == GRPC_NAMES
    for t in by_rid.values():
        assert t["info"]["model_name"] == "add_sub" and t["info"]["model_version"] == 1
        order = t["order"]
        assert [n for n in order if n in CORE] == CORE  # the core's stamps in Triton's order
        stamps = t["stamps"]
        assert sorted(CORE, key=stamps.__getitem__) == CORE  # and in time


def test_file_is_one_json_array_while_serving(traced: tuple[AppThread, Path]) -> None:
    """tritonserver writes the file at exit; ours is a complete array after every write, with
    tritonserver's compact layout: the model info right before its REQUEST_START."""
    app, f = traced
    c = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
    before = len(read_traces(app, f)) if f.exists() else 0
    for i in range(3):
        c.infer("add_sub", add_sub_inputs(httpclient), request_id=f"a{i}")
        pieces = read_traces(app, f)
        assert len(pieces) > before
        before = len(pieces)
    text = f.read_text()
    assert text.startswith('[{"id":') and text.endswith("]") and " " not in text
    for i, p in enumerate(pieces):
        if "model_name" in p:
            assert pieces[i + 1]["timestamps"][0]["name"] == "REQUEST_START"


def test_failed_request_is_traced(traced: tuple[AppThread, Path]) -> None:
    app, f = traced
    c = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
    bad = httpclient.InferInput("INPUT0", [1, 3], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.int32))
    with pytest.raises(InferenceServerException):
        c.infer("add_sub", [bad, add_sub_inputs(httpclient)[1]], request_id="bad1")
    t = next(t for t in group(read_traces(app, f)).values() if t.get("info", {}).get("request_id") == "bad1")
    assert {"REQUEST_START", "REQUEST_END", "HTTP_SEND_END"} <= t["stamps"].keys()
    assert "COMPUTE_START" not in t["stamps"]


def finish_traces(tracer: Tracer, n: int) -> None:
    for _ in range(n):
        t = tracer.sample("m")
        assert t is not None
        t.request_start(1, "", [])
        t.request_end()
        tracer.finish(t)
    assert tracer.flush()


def test_log_frequency_writes_indexed_files(tmp_path: Path) -> None:
    f = tmp_path / "t.json"
    tracer = Tracer(TraceOptions(Level.TIMESTAMPS, 1, -1, 2, str(f)))
    finish_traces(tracer, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json.0", "t.json.1"]
    for name in ("t.json.0", "t.json.1"):
        assert len(group(json.loads((tmp_path / name).read_text()))) == 2
    tracer.close()  # the fifth goes to the next index file at exit, as tritonserver does
    assert len(group(json.loads((tmp_path / "t.json.2").read_text()))) == 1
    assert not f.exists()


def test_count_writes_an_indexed_file_when_spent(tmp_path: Path) -> None:
    f = tmp_path / "t.json"
    tracer = Tracer(TraceOptions(Level.TIMESTAMPS, 1, 3, 0, str(f)))
    finish_traces(tracer, 3)
    assert tracer.sample("m") is None
    assert tracer.settings()["trace_count"] == ["0"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.json.0"]
    assert sorted(group(json.loads((tmp_path / "t.json.0").read_text()))) == [1, 2, 3]


def test_replaced_setting_writes_its_traces(tmp_path: Path) -> None:
    """An update replaces the settings; what the old ones collected is written (Triton)."""
    f = tmp_path / "t.json"
    tracer = Tracer(TraceOptions(Level.TIMESTAMPS, 1, 5, 0, str(f)))
    finish_traces(tracer, 2)
    assert not f.exists()  # a count is being collected: held until spent
    tracer.update("", {"trace_rate": ["2"]})
    assert tracer.flush()
    assert sorted(group(json.loads(f.read_text()))) == [1, 2]


def test_tensors_level_pieces() -> None:
    tracer = Tracer(TraceOptions(Level.TIMESTAMPS | Level.TENSORS, 1, -1, 0, "/nowhere"))
    t = tracer.sample("m")
    assert t is not None

    class T:
        def __init__(self, name: str, datatype: str, data: Any) -> None:
            self.name, self.datatype, self.data = name, datatype, data

    t.request_start(2, "r", [T("IN", "FP32", np.array([[0.5, 1.0]], np.float32))])
    t.tensor("TENSOR_BACKEND_OUTPUT", "S", "BYTES", np.array([b"a", b"b"], dtype=object))
    t.request_end()
    pieces = json.loads("[" + trace_json(t) + "]")
    tensors = [p for p in pieces if "activity" in p]
    assert tensors == [
        {"id": 1, "activity": "TENSOR_QUEUE_INPUT",
         "tensor": {"name": "IN", "data": "0.5,1", "shape": "1,2", "dtype": "FP32"}},
        {"id": 1, "activity": "TENSOR_BACKEND_OUTPUT",
         "tensor": {"name": "S", "data": '"a","b"', "shape": "2", "dtype": "BYTES"}},
    ]  # fmt: skip
    assert pieces[0] == {"id": 1, "model_name": "m", "model_version": 2, "request_id": "r"}


# ---------------------------------------------------------------------------- settings


def test_default_settings_are_tritons(plain: AppThread) -> None:
    port = plain.app.port("http")
    assert request(port, "GET", "/v2/trace/setting").json() == DEFAULT_SETTINGS
    assert request(port, "GET", "/v2/models/add_sub/trace/setting").json() == DEFAULT_SETTINGS
    assert "trace" in request(port, "GET", "/v2").json()["extensions"]
    # nothing to trace into: turning tracing on is refused with tritonserver's message
    r = request(port, "POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]})
    assert (r.status, r.error) == (
        400, "Attempting to set invalid trace setting :trace file name is not given"
    )  # fmt: skip


def test_model_settings_follow_global_until_set(traced: tuple[AppThread, Path]) -> None:
    """The sequence observed on tritonserver 2.51."""
    app, _f = traced
    port = app.app.port("http")
    g, m = "/v2/trace/setting", "/v2/models/add_sub/trace/setting"

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = request(port, "POST", path, body)
        assert r.status == 200, r.body
        return dict(r.json())

    try:
        assert post(m, {"trace_rate": "5"})["trace_rate"] == "5"
        assert request(port, "GET", g).json()["trace_rate"] == "1"
        post(g, {"trace_rate": "7", "trace_count": "3"})
        got = request(port, "GET", m).json()
        assert (got["trace_rate"], got["trace_count"]) == ("5", "3")  # own rate, global count
        assert post(m, {"trace_rate": None})["trace_rate"] == "7"  # cleared: the global's again
        assert post(g, {"trace_level": ["TIMESTAMPS", "TENSORS"]})["trace_level"] == [
            "TIMESTAMPS", "TENSORS"
        ]  # fmt: skip
        assert post(g, {"trace_level": None})["trace_level"] == ["TIMESTAMPS"]  # start-up value
        assert post(g, {"trace_level": ["FOO"]})["trace_level"] == ["TIMESTAMPS"]  # ignored
        assert post(g, {"trace_rate": "12abc"})["trace_rate"] == "12"  # std::stoi, as Triton
        assert post(g, {"bogus": "1"})["trace_rate"] == "12"
        assert post(g, {"trace_level": ["OFF"], "trace_rate": "0"})["trace_level"] == ["OFF"]
        assert not app.app.server.tracer.active
    finally:
        post(g, {"trace_level": None, "trace_rate": "1", "trace_count": "-1"})
        post(m, {"trace_rate": None, "trace_count": None, "trace_level": None})
    assert request(port, "GET", m).json() == request(port, "GET", g).json()
    assert app.app.server.tracer.active


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [  # tritonserver 2.51's answers
        ("/v2/models/add_sub/trace/setting", {"trace_file": "x"}, 501,
         "trace file location can not be updated through network protocol"),
        ("/v2/trace/setting", {"trace_file": None}, 501,
         "trace file location can not be updated through network protocol"),
        ("/v2/trace/setting", {"trace_level": ["OFF", "TIMESTAMPS"]}, 400,
         "Expect only one trace level 'OFF' is specified"),
        ("/v2/trace/setting", {"trace_rate": "abc"}, 400, "Unable to parse 'trace_rate', got: abc"),
        ("/v2/trace/setting", {"trace_rate": "99999999999"}, 400,
         "Unable to parse 'trace_rate', value is out of range [ 0, 4294967295 ], got: 99999999999"),
        ("/v2/trace/setting", {"trace_rate": "0"}, 400,
         "Attempting to set invalid trace setting :sample rate must be non-zero"),
        ("/v2/trace/setting", {"trace_count": "0"}, 400, "Attempting to set invalid trace setting :"),
        ("/v2/trace/setting", {"trace_count": "x"}, 400, "Unable to parse 'trace_count', got: x"),
        ("/v2/trace/setting", {"log_frequency": "x"}, 400, "Unable to parse 'log_frequency', got: x"),
        ("/v2/trace/setting", {"log_frequency": "99999999999"}, 400,
         "Unable to parse 'log_frequency', value is out of range [ 0, 4294967295 ], got: 99999999999"),
        ("/v2/models/nope/trace/setting", {}, 400, "Request for unknown model : nope"),
        # ours (tritonserver: wraps -1 to 4294967295; 500 for a non-string, non-array value)
        ("/v2/trace/setting", {"trace_rate": "-1"}, 400,
         "Unable to parse 'trace_rate', value is out of range [ 0, 4294967295 ], got: -1"),
        ("/v2/trace/setting", {"trace_rate": 5}, 400, "'trace_rate' must be a string, got 5"),
        ("/v2/trace/setting", {"trace_level": "TIMESTAMPS"}, 400,
         "'trace_level' must be an array of strings"),
        # tritonserver says "got:-5" over HTTP and "got: -5" over gRPC; we say the latter on both
        ("/v2/trace/setting", {"trace_count": "-5"}, 400,
         "Unable to parse 'trace_count'. Expecting value >= -1, got: -5"),
    ],
)
def test_settings_validation(
    traced: tuple[AppThread, Path], path: str, body: dict[str, Any], status: int, message: str
) -> None:
    app, _ = traced
    port = app.app.port("http")
    before = request(port, "GET", "/v2/trace/setting").json()
    r = request(port, "POST", path, body)
    assert (r.status, r.error) == (status, message)
    assert request(port, "GET", "/v2/trace/setting").json() == before


def test_settings_routes(traced: tuple[AppThread, Path]) -> None:
    app, f = traced
    port = app.app.port("http")
    assert request(port, "GET", "/v2/models/nope/trace/setting").json() == {
        "error": "Request for unknown model : nope"
    }
    assert request(port, "GET", "/v2/models/add_sub/versions/1/trace/setting").status == 404
    r = request(port, "PUT", "/v2/trace/setting")
    assert (r.status, r.error) == (405, "Method Not Allowed")
    assert request(port, "GET", "/v2/trace/setting").json() == {
        "trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
        "log_frequency": "0", "trace_file": str(f), "trace_mode": "triton",
    }  # fmt: skip


def test_grpc_trace_setting(traced: tuple[AppThread, Path]) -> None:
    app, f = traced
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{app.app.port('grpc')}")
    got = c.get_trace_settings(as_json=True)["settings"]
    assert {k: v["value"] for k, v in got.items()} == {
        "trace_level": ["TIMESTAMPS"], "trace_rate": ["1"], "trace_count": ["-1"],
        "log_frequency": ["0"], "trace_file": [str(f)], "trace_mode": ["triton"],
    }  # fmt: skip
    try:
        got = c.update_trace_settings("add_sub", {"trace_rate": "4"}, as_json=True)["settings"]
        assert got["trace_rate"]["value"] == ["4"]
        assert c.get_trace_settings("add_sub", as_json=True)["settings"]["trace_rate"]["value"] == ["4"]
    finally:
        c.update_trace_settings("add_sub", {"trace_rate": None})
    assert c.get_trace_settings("add_sub", as_json=True)["settings"]["trace_rate"]["value"] == ["1"]

    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{app.app.port('grpc')}"))

    def rpc(settings: dict[str, list[str]], model: str = "") -> tuple[grpc.StatusCode, str]:
        req = pb.TraceSettingRequest(model_name=model)
        for k, v in settings.items():
            req.settings[k].value.extend(v)
        with pytest.raises(grpc.RpcError) as ei:
            stub.TraceSetting(req, timeout=30)
        return ei.value.code(), ei.value.details()

    assert rpc({"trace_file": ["x"]}) == (
        grpc.StatusCode.UNIMPLEMENTED, "trace file location can not be updated through network protocol"
    )  # fmt: skip
    assert rpc({"trace_rate": ["1", "2"]}) == (
        grpc.StatusCode.INVALID_ARGUMENT, "expect only 1 value for 'trace_rate'"
    )  # fmt: skip
    assert rpc({"trace_count": ["99999999999"]}) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unable to parse 'trace_count', value is out of range [ -1, 2147483647 ], got: 99999999999",
    )
    assert rpc({}, "nope") == (grpc.StatusCode.INVALID_ARGUMENT, "Request for unknown model : nope")


async def test_in_process_trace_of_a_batched_torchscript_model(tmp_path: Path) -> None:
    """The core alone (no front-end): a traced request to a tensor backend in a dynamic batch
    gets its batch's compute timestamps, in order, on the same clock as the queue's."""
    from tests.models import write_torchscript_linear
    from torchtide.server import InferenceServer, ServerOptions
    from torchtide.types import InferRequest, InferTensor

    write_torchscript_linear(tmp_path / "repo")
    f = tmp_path / "t.json"
    server = InferenceServer(
        ServerOptions([tmp_path / "repo"], trace=TraceOptions(Level.TIMESTAMPS, 1, -1, 0, str(f)))
    )
    await server.start()
    try:
        req = InferRequest("linear", [InferTensor.of("INPUT__0", np.ones((2, 4), np.float32))], id="t1")
        req.trace = server.tracer.sample("linear")
        assert req.trace is not None
        resp = await server.infer(req)
        assert resp.outputs[0].data.shape == (2, 2)
        server.tracer.finish(req.trace)
        assert server.tracer.flush()
    finally:
        await server.stop()
    (t,) = group(json.loads(f.read_text())).values()
    assert t["info"] == {"id": 1, "model_name": "linear", "model_version": 1, "request_id": "t1"}
    assert t["order"] == CORE
    assert sorted(CORE, key=t["stamps"].__getitem__) == CORE
