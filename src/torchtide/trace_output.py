"""Where finished traces go, on one background thread: Triton's JSON trace file, or
OpenTelemetry spans exported over OTLP/HTTP. The event loop only puts traces on a queue.

The file is Triton's: one JSON array of pieces, `{"id":N,"model_name":...,"model_version":V}`
then one `{"id":N,"timestamps":[{"name":...,"ns":...}]}` per timestamp (and, at level TENSORS,
`{"id":N,"activity":...,"tensor":{...}}`). With `log_frequency` N every N traces go to
`<file>.<i>`; with a `count`, the traces go to `<file>.<i>` when the count runs out. Otherwise
tritonserver writes `<file>` when it shuts down; we append as traces finish and keep the file a
complete JSON array after every write, so it can be read while the server runs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

import numpy as np
import orjson

from torchtide.tracing import (
    CORE_STAMPS,
    OPENTELEMETRY,
    Level,
    Setting,
    Trace,
    TraceFile,
    TraceOptions,
    otel_config,
)

log = logging.getLogger("torchtide.trace")

_STOP = object()
WRITE_EVERY_S = 0.05  # traces are serialized and written in batches gathered over 50 ms


class TraceOutput:
    def __init__(self, options: TraceOptions, span_exporter: Any = None) -> None:
        self.otel = OtelSpans(options, span_exporter) if options.mode == OPENTELEMETRY else None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._retired: dict[int, Setting] = {}  # replaced settings with traces still out
        self._thread = threading.Thread(target=self._run, name="torchtide-trace", daemon=True)
        self._thread.start()

    # -- called from the loop

    def put(self, trace: Trace) -> None:
        self._queue.put(trace)

    def retire(self, setting: Setting) -> None:
        self._queue.put(("retire", setting))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self.otel is not None:
            self.otel.shutdown()

    # -- the thread

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            if isinstance(items[0], Trace):
                # Let a batch gather: one wake-up of this thread per WRITE_EVERY_S under load,
                # not one per trace (each would contend with the event loop for the GIL).
                time.sleep(WRITE_EVERY_S)
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            touched: dict[int, Setting] = {}  # settings with traces for the main file
            for item in items:
                try:
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, threading.Event):
                        self._write_pending(touched)
                        touched.clear()
                        item.set()
                    elif isinstance(item, tuple):
                        self._retire(item[1])
                    else:
                        self._finish(item, touched)
                except Exception:
                    log.exception("failed to write a trace")
            self._write_pending(touched)
            if stop:
                for s in list(self._retired.values()):
                    self._flush_setting(s)
                return

    def _finish(self, trace: Trace, touched: dict[int, Setting]) -> None:
        s = trace.setting
        if self.otel is not None:
            s.collected += 1
            self.otel.export(trace)
            return
        s.stream.append(trace_json(trace))
        s.in_stream += 1
        s.collected += 1
        if (s.count == 0 and s.collected == s.created) or (
            s.log_frequency and s.in_stream >= s.log_frequency
        ):
            self._write_index(s)
        elif s.retired and s.collected >= s.created:
            self._flush_setting(s)
        else:
            touched[id(s)] = s

    def _write_pending(self, touched: dict[int, Setting]) -> None:
        """Unlimited traces with no log frequency are appended to the main file as they come
        (tritonserver holds them until shutdown)."""
        for s in touched.values():
            if s.stream and s.count < 0 and not s.log_frequency:
                self._write_main(s)

    def _retire(self, s: Setting) -> None:
        s.retired = True
        if s.collected >= s.created:
            self._flush_setting(s)
        else:
            self._retired[id(s)] = s

    def _flush_setting(self, s: Setting) -> None:
        self._retired.pop(id(s), None)
        if not s.stream:
            return
        if s.log_frequency:
            self._write_index(s)
        else:
            self._write_main(s)

    def _take(self, s: Setting) -> str:
        text = ",".join(s.stream)
        s.stream.clear()
        s.in_stream = 0
        return text

    def _write_index(self, s: Setting) -> None:
        text = self._take(s)
        f = s.file
        path = f"{f.path}.{f.index}"
        f.index += 1
        _write(path, "w", "[" + text + "]")

    def _write_main(self, s: Setting) -> None:
        text = self._take(s)
        f = s.file
        if f.started:
            _append(f, text)
        else:
            f.started = True
            _write(f.path, "w", "[" + text + "]")


def _write(path: str, mode: str, text: str) -> None:
    try:
        with open(path, mode, encoding="utf-8") as fh:
            fh.write(text)
    except OSError as e:
        log.error("failed creating trace file: %s", e)


def _append(f: TraceFile, text: str) -> None:
    """Replace the closing bracket: the file stays one complete JSON array."""
    try:
        with open(f.path, "r+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                fh.write(b"[" + text.encode() + b"]")
                return
            fh.seek(-1, os.SEEK_END)
            fh.write(b"," + text.encode() + b"]")
    except FileNotFoundError:
        _write(f.path, "w", "[" + text + "]")
    except OSError as e:
        log.error("failed writing trace file: %s", e)


# ---------------------------------------------------------------------------- Triton's JSON


def trace_json(trace: Trace) -> str:
    """One trace as tritonserver writes it: comma-separated pieces, in the order stamped."""
    tid = trace.id
    pieces: list[str] = []
    stamps = trace.stamps if trace.level & Level.TIMESTAMPS else []
    info = _info(trace)
    for name, ns in stamps:
        if name == "REQUEST_START" and info:
            pieces.append(info)
            info = ""
        pieces.append(f'{{"id":{tid},"timestamps":[{{"name":"{name}","ns":{ns}}}]}}')
    if info and trace.model_version >= 0:  # no REQUEST_START written (level TENSORS alone)
        pieces.insert(0, info)
    for activity, name, datatype, data in trace.tensors:
        tensor = {
            "name": name,
            "data": tensor_text(datatype, data),
            "shape": ",".join(str(d) for d in np.shape(data)),
            "dtype": datatype,
        }
        pieces.append(
            f'{{"id":{tid},"activity":"{activity}","tensor":{orjson.dumps(tensor).decode()}}}'
        )
    return ",".join(pieces)


def _info(trace: Trace) -> str:
    doc: dict[str, Any] = {
        "id": trace.id,
        "model_name": trace.model_name,
        "model_version": trace.model_version,
    }
    if trace.request_id:
        doc["request_id"] = trace.request_id
    if trace.parent_id:
        doc["parent_id"] = trace.parent_id
    return orjson.dumps(doc).decode()


def tensor_text(datatype: str, data: Any) -> str:
    """Tensor values as tritonserver prints them: comma-separated, strings quoted, FP16 and
    BF16 left empty (as tritonserver does)."""
    arr = np.asarray(data).reshape(-1)
    if datatype in ("FP16", "BF16"):
        return ""
    if datatype == "BYTES":
        return ",".join(
            '"' + (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)) + '"'
            for v in arr
        )
    if datatype in ("FP32", "FP64"):
        return ",".join(f"{float(v):g}" for v in arr)
    return ",".join(str(int(v)) for v in arr)


# ---------------------------------------------------------------------------- OpenTelemetry


class OtelSpans:
    """Triton's spans, built after the response was sent from the recorded timestamps: a root
    `InferRequest` (front-end events), a child named after the model (REQUEST_START,
    QUEUE_START, REQUEST_END) and its child `compute` (COMPUTE_*). A request that carried a W3C
    `traceparent` continues that trace."""

    def __init__(self, options: TraceOptions, span_exporter: Any = None) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.trace import SpanKind
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as e:
            raise RuntimeError(
                "--trace-config mode=opentelemetry needs the OpenTelemetry SDK: "
                "pip install 'torchtide[otel]'"
            ) from e
        config = otel_config(options.otel)
        attributes: dict[str, Any] = {}
        env_names = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in env_names:
            attributes["service.name"] = "triton-inference-server"
        url: str | None = None
        bsp: dict[str, int] = {}
        for key, value in config:
            if key == "url":
                url = value
            elif key == "resource":
                k, _, v = value.partition("=")
                attributes[k] = v
            elif key.startswith("bsp_"):
                bsp[key] = int(value)
        self.provider = TracerProvider(resource=Resource.create(attributes))
        if span_exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # No url flag: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else the SDK's default, which
            # is tritonserver's (http://localhost:4318/v1/traces).
            processor: Any = BatchSpanProcessor(
                OTLPSpanExporter(endpoint=url),
                max_queue_size=bsp["bsp_max_queue_size"],
                schedule_delay_millis=bsp["bsp_schedule_delay"],
                max_export_batch_size=bsp["bsp_max_export_batch_size"],
            )
        else:
            processor = SimpleSpanProcessor(span_exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("triton-server")
        self.kind = SpanKind.SERVER
        self.propagator = TraceContextTextMapPropagator()

    def export(self, trace: Trace) -> None:
        from opentelemetry.trace import set_span_in_context

        offset = time.time_ns() - time.monotonic_ns()  # monotonic → wall clock
        parent = None
        if trace.traceparent:
            carrier = {"traceparent": trace.traceparent}
            if trace.tracestate:
                carrier["tracestate"] = trace.tracestate
            parent = self.propagator.extract(carrier)
        start = self.tracer.start_span
        root = start("InferRequest", parent, self.kind, start_time=trace.start_ns + offset)
        end_ns = trace.start_ns
        model: Any = None
        compute: Any = None
        for name, ns in trace.stamps:
            wall = ns + offset
            end_ns = max(end_ns, ns)
            if name == "REQUEST_START":
                model = start(
                    trace.model_name,
                    set_span_in_context(root),
                    self.kind,
                    attributes=self._attributes(trace),
                    start_time=wall,
                )
            elif name == "COMPUTE_START" and model is not None:
                compute = start("compute", set_span_in_context(model), self.kind, start_time=wall)
            span = compute if compute is not None else model
            if name in CORE_STAMPS and span is not None:
                span.add_event(name, timestamp=wall)
                if name == "COMPUTE_END" and compute is not None:
                    compute.end(end_time=wall)
                    compute = None
                elif name == "REQUEST_END" and model is not None:
                    model.end(end_time=wall)
                    model = None
            else:
                root.add_event(name, timestamp=wall)
        for span in (compute, model):
            if span is not None:
                span.end(end_time=end_ns + offset)
        root.end(end_time=end_ns + offset)

    @staticmethod
    def _attributes(trace: Trace) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "triton.model_name": trace.model_name,
            "triton.model_version": trace.model_version,
            "triton.trace_id": trace.id,
            "triton.trace_parent_id": trace.parent_id,
        }
        if trace.request_id:
            attrs["triton.request_id"] = trace.request_id
        return attrs

    def shutdown(self) -> None:
        self.provider.shutdown()
