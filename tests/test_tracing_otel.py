"""`--trace-config mode=opentelemetry`: Triton's spans (InferRequest → model → compute) with
Triton's attributes, W3C `traceparent` continued from HTTP headers and gRPC metadata, checked
with the SDK's in-memory exporter and with a real OTLP/HTTP export to a receiver on loopback."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import free_port
from tests.models import write_add_sub
from tests.test_tracing import add_sub_inputs
from torchtide.app import AppOptions, AppThread
from torchtide.server import ServerOptions
from torchtide.tracing import Level, TraceOptions, Tracer, parse_trace_flags

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ROOT_EVENTS = ["HTTP_RECV_START", "HTTP_RECV_END", "INFER_RESPONSE_COMPLETE", "HTTP_SEND_START",
               "HTTP_SEND_END"]  # fmt: skip
MODEL_EVENTS = ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
COMPUTE_EVENTS = ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("otel_repo")
    write_add_sub(r)
    return r


def app_with(repo: Path, trace: TraceOptions, tracer: Tracer | None = None) -> AppThread:
    opts = AppOptions(
        server=ServerOptions([repo], trace=trace),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=None,
        http_address="127.0.0.1",
        grpc_address="127.0.0.1",
    )
    thread = AppThread(opts)
    if tracer is not None:
        thread.app.server.tracer = tracer
    return thread.start()


@pytest.fixture(scope="module")
def memory(repo: Path) -> Iterator[tuple[AppThread, InMemorySpanExporter]]:
    """rate=0: only requests that carry a parent are traced (tritonserver's documented way)."""
    exporter = InMemorySpanExporter()
    options = TraceOptions(Level.TIMESTAMPS, rate=0, mode="opentelemetry")
    app = app_with(repo, options, Tracer(options, span_exporter=exporter))
    yield app, exporter
    app.stop()


def spans_by_name(spans: Any) -> dict[str, Any]:
    assert len(spans) == 3, [s.name for s in spans]
    return {s.name: s for s in spans}


def check_triton_spans(spans: Any, request_id: str, root_events: list[str]) -> Any:
    s = spans_by_name(spans)
    root, model, compute = s["InferRequest"], s["add_sub"], s["compute"]
    assert {x.kind for x in (root, model, compute)} == {SpanKind.SERVER}
    assert model.parent.span_id == root.context.span_id
    assert compute.parent.span_id == model.context.span_id
    assert len({x.context.trace_id for x in (root, model, compute)}) == 1
    assert [e.name for e in root.events] == root_events
    assert [e.name for e in model.events] == MODEL_EVENTS
    assert [e.name for e in compute.events] == COMPUTE_EVENTS
    attrs = dict(model.attributes)
    assert attrs["triton.model_name"] == "add_sub"
    assert attrs["triton.model_version"] == 1
    assert attrs["triton.request_id"] == request_id
    assert attrs["triton.trace_parent_id"] == 0 and attrs["triton.trace_id"] >= 1
    assert root.start_time <= model.start_time <= compute.start_time
    assert compute.end_time <= model.end_time <= root.end_time
    assert root.resource.attributes["service.name"] == "triton-inference-server"
    return root


def test_http_traceparent_is_continued(memory: tuple[AppThread, InMemorySpanExporter]) -> None:
    app, exporter = memory
    exporter.clear()
    c = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
    c.infer("add_sub", add_sub_inputs(httpclient), request_id="untraced")  # rate=0: no parent, no trace
    c.infer("add_sub", add_sub_inputs(httpclient), request_id="h1", headers={"traceparent": TRACEPARENT})
    assert app.app.server.tracer.flush(30)
    root = check_triton_spans(exporter.get_finished_spans(), "h1", ROOT_EVENTS)
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert f"{root.parent.span_id:016x}" == PARENT_ID and root.parent.is_remote


def test_grpc_metadata_traceparent_is_continued(memory: tuple[AppThread, InMemorySpanExporter]) -> None:
    app, exporter = memory
    exporter.clear()
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{app.app.port('grpc')}")
    c.infer("add_sub", add_sub_inputs(grpcclient), request_id="g1", headers={"traceparent": TRACEPARENT})
    c.infer("add_sub", add_sub_inputs(grpcclient), headers={"traceparent": "00-" + "0" * 32 + "-" + PARENT_ID + "-01"})
    assert app.app.server.tracer.flush(30)
    grpc_events = ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "INFER_RESPONSE_COMPLETE",
                   "GRPC_SEND_START", "GRPC_SEND_END"]  # fmt: skip
    root = check_triton_spans(exporter.get_finished_spans(), "g1", grpc_events)  # invalid id: untraced
    assert f"{root.context.trace_id:032x}" == TRACE_ID


def test_settings_in_opentelemetry_mode(memory: tuple[AppThread, InMemorySpanExporter]) -> None:
    app, _ = memory
    c = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
    assert c.get_trace_settings() == {
        "trace_level": ["TIMESTAMPS"], "trace_rate": "0", "trace_count": "-1",
        "trace_mode": "opentelemetry", "bsp_max_queue_size": "2048",
        "bsp_schedule_delay": "5000", "bsp_max_export_batch_size": "512",
    }  # fmt: skip


# ---------------------------------------------------------------------------- OTLP/HTTP


class Receiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP trace receiver (protobuf) on loopback."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Any] = []
        self.resources: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.changed = threading.Condition()

    def wait_for(self, n: int, timeout: float = 60) -> list[Any]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.spans) >= n, timeout), self.spans
            return list(self.spans)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        req = ExportTraceServiceRequest.FromString(body)
        with self.server.changed:
            self.server.paths.append(self.path)
            for rs in req.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.server.spans.append(span)
                        self.server.resources.append(attrs)
            self.server.changed.notify_all()
        out = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    t = threading.Thread(target=r.serve_forever, daemon=True)
    t.start()
    yield r
    r.shutdown()
    r.server_close()


def test_spans_arrive_over_otlp_http(repo: Path, receiver: Receiver) -> None:
    port = receiver.server_address[1]
    trace = parse_trace_flags(
        ["mode=opentelemetry", "rate=1", "level=TIMESTAMPS",
         f"opentelemetry,url=http://127.0.0.1:{port}/v1/traces",
         "opentelemetry,resource=deployment.environment=test",
         "opentelemetry,bsp_schedule_delay=50"]
    )
    app = app_with(repo, trace)
    try:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{app.app.port('grpc')}")
        c.infer("add_sub", add_sub_inputs(grpcclient), request_id="o1", headers={"traceparent": TRACEPARENT})
        c.close()
        spans = {s.name: s for s in receiver.wait_for(3)}
        settings = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}").get_trace_settings()
    finally:
        app.stop()
    assert receiver.paths[0] == "/v1/traces"
    root, model, compute = spans["InferRequest"], spans["add_sub"], spans["compute"]
    assert root.trace_id.hex() == TRACE_ID and root.parent_span_id.hex() == PARENT_ID
    assert model.parent_span_id == root.span_id and compute.parent_span_id == model.span_id
    assert {a.key: a.value for a in model.attributes}["triton.request_id"].string_value == "o1"
    resource = receiver.resources[0]
    assert resource["service.name"] == "triton-inference-server"
    assert resource["deployment.environment"] == "test"
    assert settings["url"] == f"http://127.0.0.1:{port}/v1/traces"
    assert settings["bsp_schedule_delay"] == "50" and "trace_file" not in settings
