"""Triton's trace extension: settings (global and per model), sampling, and the trace record.

The core knows nothing of HTTP or gRPC. A front-end asks `Tracer.sample()` for a trace once it
knows the model (only when `Tracer.active`, one attribute check per request otherwise), stamps
its own timestamps on it (HTTP_RECV_START, GRPC_SEND_END, ...), hands it to the core on the
`InferRequest`, and calls `Tracer.finish()` once the response is sent. The core stamps
REQUEST_START, QUEUE_START, COMPUTE_* and REQUEST_END. Sampling is a counter: no object exists
for a request that is not traced. Writing (Triton's JSON file, or OpenTelemetry spans) happens
on a background thread (`trace_output.py`), never on the event loop.

Timestamps are integer nanoseconds of CLOCK_MONOTONIC (`time.monotonic_ns`), the clock Triton's
steady_clock reads on Linux; `time.perf_counter_ns` is the same clock there, so the backends'
compute timestamps line up with ours.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from dataclasses import dataclass, field
from enum import IntFlag
from typing import TYPE_CHECKING, Any, Protocol

from torchtide.errors import invalid_arg, unsupported

if TYPE_CHECKING:
    from torchtide.trace_output import TraceOutput

log = logging.getLogger("torchtide.trace")

now_ns = time.monotonic_ns

TRITON = "triton"
OPENTELEMETRY = "opentelemetry"
MODES = (TRITON, OPENTELEMETRY)
OTEL_DEFAULT_URL = "http://localhost:4318/v1/traces"
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
MIN_COUNT = -1
BSP_DEFAULTS = (  # Triton's defaults, overridden by OTEL_BSP_* and then by --trace-config
    ("bsp_max_queue_size", "OTEL_BSP_MAX_QUEUE_SIZE", 2048),
    ("bsp_schedule_delay", "OTEL_BSP_SCHEDULE_DELAY", 5000),
    ("bsp_max_export_batch_size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
)
FILE_READONLY = "trace file location can not be updated through network protocol"

# Which timestamps the core stamps (in OpenTelemetry they belong to the model and compute
# spans); every other name is a front-end's and belongs to the root span.
CORE_STAMPS = frozenset(
    ("REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
     "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END")
)  # fmt: skip


class Level(IntFlag):
    OFF = 0
    TIMESTAMPS = 1
    TENSORS = 2


def level_names(level: int) -> list[str]:
    if not level:
        return ["OFF"]
    return [
        n for n, v in (("TIMESTAMPS", Level.TIMESTAMPS), ("TENSORS", Level.TENSORS)) if level & v
    ]


# ---------------------------------------------------------------------------- start-up flags


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """Tracing as the command line set it (tritonserver's `--trace-config` and older flags)."""

    level: int = Level.OFF
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    mode: str = TRITON
    otel: tuple[tuple[str, str], ...] = ()  # `opentelemetry,<key>=<value>` pairs, in order


class TraceFlagError(ValueError):
    """A bad tracing flag; the message is tritonserver's."""


def _mode(value: str) -> str:
    mode = value.lower()
    if mode not in MODES:
        raise TraceFlagError(
            f'invalid value for trace mode option: {mode}. Available options are "triton" '
            'and "opentelemetry"'
        )
    return mode


def parse_level(value: str) -> int:
    """One `level=` value: OFF (or false) disables tracing, TIMESTAMPS (true, on, min, max), or
    TENSORS."""
    v = value.lower()
    if v in ("false", "off"):
        return Level.OFF
    if v in ("true", "on", "min", "max", "timestamps"):
        return Level.TIMESTAMPS
    if v == "tensors":
        return Level.TENSORS
    raise TraceFlagError(f"invalid value for trace level option: {value}")


def split_trace_config(arg: str) -> tuple[str, str, str]:
    """`<mode>,<setting>=<value>` or `<setting>=<value>` → (mode or "", setting, value)."""
    comma = arg.find(",")
    mode = ""
    if comma == 0:
        raise TraceFlagError(
            "No trace mode specified. --trace-config option format is "
            f"<trace mode>,<setting>=<value> or <setting>=<value>. Got {arg}"
        )
    if comma > 0:
        mode = _mode(arg[:comma])
    eq = arg.find("=", comma + 1)
    setting, value = arg[comma + 1 : eq], arg[eq + 1 :]
    if eq < 0 or not setting or not value:
        raise TraceFlagError(
            f"--trace-config option format is '<trace mode>,<setting>=<value>'. Got {arg}"
        )
    return mode, setting, value


def _flag_int(flag: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise TraceFlagError(f'Bad option: "{flag}".\nInvalid option value. Got {value}') from None
    if not low <= n <= high:
        raise TraceFlagError(
            f'Bad option: "{flag}".\nProvided option value is out of bound. Got {value}'
        )
    return n


def parse_trace_flags(
    config: list[str],
    *,
    file: str | None = None,
    levels: list[str] | None = None,
    rate: str | None = None,
    count: str | None = None,
    log_frequency: str | None = None,
) -> TraceOptions:
    """tritonserver's tracing flags → TraceOptions. `config` holds each `--trace-config` value
    in order; the keywords are the deprecated `--trace-*` flags, which `--trace-config` overrides.
    A `level` of OFF anywhere disables tracing, as in tritonserver."""
    level = 0
    disabled = False
    for v in levels or []:
        parsed = parse_level(v)
        disabled |= parsed == Level.OFF
        level |= parsed
    values: dict[str, Any] = {
        "rate": _flag_int("--trace-rate", rate, 0, UINT32_MAX) if rate is not None else 1000,
        "count": _flag_int("--trace-count", count, MIN_COUNT, INT32_MAX)
        if count is not None
        else -1,
        "log_frequency": _flag_int("--trace-log-frequency", log_frequency, 0, UINT32_MAX)
        if log_frequency is not None
        else 0,
        "file": file or "",
        "mode": TRITON,
    }
    otel: list[tuple[str, str]] = []
    triton: list[tuple[str, str]] = []
    for arg in config:
        mode, key, value = split_trace_config(arg)
        if mode == TRITON:
            triton.append((key, value))
        elif mode == OPENTELEMETRY:
            otel.append((key, value))
        elif key == "rate":
            values["rate"] = _flag_int("--trace-config rate", value, 0, UINT32_MAX)
        elif key == "count":
            values["count"] = _flag_int("--trace-config count", value, MIN_COUNT, INT32_MAX)
        elif key == "level":
            parsed = parse_level(value)
            disabled |= parsed == Level.OFF
            level |= parsed
        elif key == "mode":
            values["mode"] = _mode(value)
        else:
            log.warning("--trace-config %s: unknown trace setting, ignored", arg)
    if values["mode"] == TRITON:
        for key, value in triton:
            if key == "file":
                values["file"] = value
            elif key == "log-frequency":
                flag = "--trace-config triton,log-frequency"
                values["log_frequency"] = _flag_int(flag, value, 0, UINT32_MAX)
            else:
                log.warning("--trace-config triton,%s: unknown trace setting, ignored", key)
    else:
        for key, value in otel:
            if key.startswith("bsp_"):
                _flag_int(f"--trace-config opentelemetry,{key}", value, 0, UINT32_MAX)
            elif key == "resource" and "=" not in value:
                raise TraceFlagError(
                    f'Bad option: "--trace-config opentelemetry,resource".\nExpected '
                    f"<key>=<value>. Got {value}"
                )
    return TraceOptions(
        level=Level.OFF if disabled else level,
        otel=tuple(otel) if values["mode"] == OPENTELEMETRY else (),
        **values,
    )


def otel_config(pairs: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The OpenTelemetry settings as Triton reports them: the flags in order, then each batch
    span processor setting not given (from OTEL_BSP_* or Triton's default)."""
    out = list(pairs)
    given = {k for k, _ in pairs}
    for key, env, default in BSP_DEFAULTS:
        if key not in given:
            out.append((key, os.environ.get(env, str(default))))
    return out


# ---------------------------------------------------------------------------- settings


class TraceFile:
    """One trace file path, shared by every setting that writes there: the next index of the
    `<file>.<n>` files, and whether the main file has been started."""

    __slots__ = ("index", "path", "started")

    def __init__(self, path: str) -> None:
        self.path = path
        self.index = 0
        self.started = False


_FIELDS = ("level", "rate", "count", "log_frequency")


class Setting:
    """Trace settings of one scope (the server, or one model), as Triton's TraceSetting: the
    values are fixed (an update replaces the object) except the remaining `count`; it counts
    the requests it saw, and buffers its finished traces until they are written."""

    __slots__ = (
        "collected",
        "count",
        "created",
        "file",
        "in_stream",
        "level",
        "log_frequency",
        "mode",
        "otel",
        "rate",
        "retired",
        "seen",
        "specified",
        "stream",
    )

    def __init__(
        self,
        level: int,
        rate: int,
        count: int,
        log_frequency: int,
        file: TraceFile,
        mode: str,
        otel: tuple[tuple[str, str], ...],
        specified: frozenset[str] = frozenset(),
    ) -> None:
        self.level = level
        self.rate = rate
        self.count = count
        self.log_frequency = log_frequency
        self.file = file
        self.mode = mode
        self.otel = otel
        self.specified = specified  # fields this scope sets itself (a model's own values)
        self.seen = 0  # requests sampled against this setting
        self.created = 0  # traces started (written by the loop)
        self.collected = 0  # traces finished (written by the output thread)
        self.stream: list[str] = []  # serialized traces not yet written (output thread)
        self.in_stream = 0
        self.retired = False  # replaced by an update: write what is left once all finished

    def invalid_reason(self) -> str:
        if not self.level:
            return "tracing is disabled"
        if self.rate == 0:
            return "sample rate must be non-zero"
        if self.mode == TRITON and not self.file.path:
            return "trace file name is not given"
        return ""

    def valid(self) -> bool:
        return not self.invalid_reason() and self.count != 0

    def take(self, force: bool) -> bool:
        """Triton's sampling: every `rate`-th request, while `count` lasts; `force` (a request
        carrying an OpenTelemetry parent) is traced whatever the rate and count say."""
        hit = False
        if self.rate:
            if not force and not self.valid():
                return False
            self.seen += 1
            hit = self.seen % self.rate == 0
            if hit and self.count > 0:
                self.count -= 1
            elif hit and self.count == 0:
                hit = False
        if hit or force:
            self.created += 1
            return True
        return False

    def values(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELDS}


# ---------------------------------------------------------------------------- the trace record


class Timed(Protocol):
    """What the core's scheduler knows of one request: when it was queued and how it ran."""

    enqueue_ns: int

    @property
    def timing(self) -> Any: ...  # backends.base.Timing, or None before it ran


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def valid_traceparent(value: str) -> bool:
    """A W3C trace-context `traceparent` worth continuing (checked without the SDK)."""
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None or m[1] == "ff" or (m[1] == "00" and m[5]):
        return False
    return m[2] != "0" * 32 and m[3] != "0" * 16


class Trace:
    """One traced request: integer timestamps (and tensors at level TENSORS), in the order they
    were stamped. Built into JSON or spans only after the response has been sent."""

    __slots__ = (
        "id",
        "model_name",
        "model_version",
        "parent_id",
        "pending",
        "request_id",
        "setting",
        "stamps",
        "start_ns",
        "tensors",
        "traceparent",
        "tracestate",
    )

    def __init__(self, trace_id: int, setting: Setting, model_name: str) -> None:
        self.id = trace_id
        self.setting = setting
        self.model_name = model_name
        self.model_version = -1
        self.request_id = ""
        self.parent_id = 0  # the containing trace's id (ensembles, BLS)
        self.stamps: list[tuple[str, int]] = []
        self.tensors: list[tuple[str, str, str, Any]] = []  # activity, name, datatype, array
        self.pending: Timed | None = None
        self.start_ns = now_ns()
        self.traceparent = ""
        self.tracestate = ""

    @property
    def level(self) -> int:
        return self.setting.level

    def stamp(self, name: str, ns: int) -> None:
        self.stamps.append((name, ns))

    def tensor(self, activity: str, name: str, datatype: str, data: Any) -> None:
        if self.setting.level & Level.TENSORS:
            self.tensors.append((activity, name, datatype, data))

    # -- the core's part

    def request_start(self, version: int, request_id: str, inputs: Any) -> None:
        self.model_version = version
        self.request_id = request_id
        self.stamps.append(("REQUEST_START", now_ns()))
        if self.setting.level & Level.TENSORS:
            for t in inputs:
                self.tensors.append(("TENSOR_QUEUE_INPUT", t.name, t.datatype, t.data))

    def request_end(self) -> None:
        """Queue and compute timestamps from what the scheduler recorded, then REQUEST_END."""
        p = self.pending
        if p is not None:
            self.stamps.append(("QUEUE_START", p.enqueue_ns))
            t = p.timing
            if t is not None and t.start_ns:
                self.stamps.append(("COMPUTE_START", t.start_ns))
                self.stamps.append(("COMPUTE_INPUT_END", t.input_end_ns))
                self.stamps.append(("COMPUTE_OUTPUT_START", t.output_start_ns))
                self.stamps.append(("COMPUTE_END", t.end_ns))
            self.pending = None
        self.stamps.append(("REQUEST_END", now_ns()))


# ---------------------------------------------------------------------------- the manager


SettingsView = dict[str, list[str]]
Changes = dict[str, "list[str] | None"]  # setting → new values; None clears a model's own value


@dataclass(slots=True)
class _New:
    values: dict[str, Any] = field(default_factory=dict)
    cleared: set[str] = field(default_factory=set)


class Tracer:
    """The server's trace settings and sampler. All methods but the output's run on the loop."""

    def __init__(self, options: TraceOptions | None = None, span_exporter: Any = None) -> None:
        o = options or TraceOptions()
        self.options = o
        self._span_exporter = span_exporter  # tests: an OpenTelemetry exporter to use instead
        self.files: dict[str, TraceFile] = {o.file: TraceFile(o.file)}
        self.default = self._setting(o.level, o.rate, o.count, o.log_frequency)
        self.global_ = self._setting(o.level, o.rate, o.count, o.log_frequency)
        self.models: dict[str, Setting] = {}
        self.propagates = o.mode == OPENTELEMETRY
        self._ids = itertools.count(1)
        self._output: TraceOutput | None = None
        self.active = False
        self._refresh()
        if self.propagates:
            self.output()  # the SDK is needed: fail at start-up, not on the first request

    def _setting(
        self,
        level: int,
        rate: int,
        count: int,
        log_frequency: int,
        specified: frozenset[str] = frozenset(),
    ) -> Setting:
        o = self.options
        return Setting(
            level, rate, count, log_frequency, self.files[o.file], o.mode, o.otel, specified
        )

    def _refresh(self) -> None:
        """`active` is the one flag front-ends check: False when no request can be traced."""
        settings = [self.global_, *self.models.values()]
        self.active = any(s.level and (s.valid() or self.propagates) for s in settings)

    # -- the hot path

    def sample(
        self, model: str, traceparent: str | None = None, tracestate: str | None = None
    ) -> Trace | None:
        setting = self.models.get(model, self.global_)
        force = bool(
            traceparent and self.propagates and setting.level and valid_traceparent(traceparent)
        )
        if not setting.take(force):
            return None
        trace = Trace(next(self._ids), setting, model)
        if force:
            trace.traceparent = traceparent or ""
            trace.tracestate = tracestate or ""
        return trace

    def finish(self, trace: Trace) -> None:
        """The response has been sent: hand the trace to the output thread."""
        self.output().put(trace)

    def output(self) -> TraceOutput:
        if self._output is None:
            from torchtide.trace_output import TraceOutput

            self._output = TraceOutput(self.options, self._span_exporter)
        return self._output

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every finished trace is written (blocking: tests, tools)."""
        return self._output is None or self._output.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered and end the output thread (blocking: call off the loop)."""
        if self._output is None:
            return
        for s in {id(s): s for s in [self.global_, *self.models.values()]}.values():
            self._output.retire(s)
        self._output.close(timeout)

    # -- settings

    def settings(self, model: str = "") -> SettingsView:
        s = self.models.get(model, self.global_) if model else self.global_
        view: SettingsView = {
            "trace_level": level_names(s.level),
            "trace_rate": [str(s.rate)],
            "trace_count": [str(s.count)],
        }
        if s.mode == TRITON:
            view["log_frequency"] = [str(s.log_frequency)]
            view["trace_file"] = [s.file.path]
        view["trace_mode"] = [s.mode]
        if s.mode == OPENTELEMETRY:
            for key, value in otel_config(s.otel):
                view.setdefault(key, []).append(value)
        return view

    def update(self, model: str, changes: Changes) -> SettingsView:
        """Apply a settings request (Triton's rules and messages); return the new settings.
        A model's first update copies what it does not give from the global settings; a
        global update reaches every model setting that mirrors it."""
        self._apply(model, parse_changes(changes))
        if not model:
            for name in list(self.models):
                self._apply(name, _New())
        self._refresh()
        return self.settings(model)

    def _apply(self, model: str, new: _New) -> None:
        current = self.models.get(model) if model else self.global_
        fallback = self.global_ if model else self.default
        values = fallback.values()
        specified = set()
        for f in _FIELDS:
            if f in new.cleared:
                continue
            if f in new.values:
                values[f] = new.values[f]
                specified.add(f)
            elif current is not None and f in current.specified:
                values[f] = getattr(current, f)
                specified.add(f)
        if model and not specified:
            old = self.models.pop(model, None)  # nothing of its own: it follows the global
            if old is not None:
                self._retire(old)
            return
        s = self._setting(**values, specified=frozenset(specified))
        if s.level and not s.valid():
            raise invalid_arg(f"Attempting to set invalid trace setting :{s.invalid_reason()}")
        if current is not None:
            self._retire(current)
        if model:
            self.models[model] = s
        else:
            self.global_ = s

    def _retire(self, s: Setting) -> None:
        if self._output is not None:
            self._output.retire(s)


def _stoi(name: str, text: str, low: int, high: int) -> int:
    """std::stoi as tritonserver applies it: leading spaces, a sign, the leading digits. Unlike
    tritonserver, a negative rate or log frequency is refused rather than wrapped to 2**32-1."""
    m = re.match(r"\s*([+-]?\d+)", text)
    if m is None:
        raise invalid_arg(f"Unable to parse '{name}', got: {text}")
    n = int(m[1])
    if n > high or (n < low and low >= 0) or n < -(2**31):
        raise invalid_arg(
            f"Unable to parse '{name}', value is out of range [ {low}, {high} ], got: {text}"
        )
    return n


def _one(name: str, values: list[str]) -> str:
    if len(values) != 1:
        raise invalid_arg(f"expect only 1 value for '{name}'")
    return values[0]


def parse_changes(changes: Changes) -> _New:
    """A settings request → new values, with tritonserver's validation messages. Unknown
    settings are ignored, as tritonserver does."""
    if "trace_file" in changes:
        raise unsupported(FILE_READONLY)
    new = _New()
    for key, values in changes.items():
        if key not in ("trace_level", "trace_rate", "trace_count", "log_frequency"):
            continue
        field_name = key.removeprefix("trace_")
        if values is None or (not values and key != "trace_level"):
            new.cleared.add(field_name)
        elif key == "trace_level":
            if not values:
                new.cleared.add("level")
                continue
            level = 0
            known = False
            for v in values:
                if v == "OFF":
                    if len(values) != 1:
                        raise invalid_arg("Expect only one trace level 'OFF' is specified")
                    known = True
                elif v in ("TIMESTAMPS", "TENSORS"):
                    level |= Level[v]
                    known = True
            if known:  # levels tritonserver does not know are ignored, as it does
                new.values["level"] = level
        elif key == "trace_rate":
            new.values["rate"] = _stoi(key, _one(key, values), 0, UINT32_MAX)
        elif key == "log_frequency":
            new.values["log_frequency"] = _stoi(key, _one(key, values), 0, UINT32_MAX)
        else:
            text = _one(key, values)
            count = _stoi(key, text, MIN_COUNT, INT32_MAX)
            if count < MIN_COUNT:
                raise invalid_arg(
                    f"Unable to parse '{key}'. Expecting value >= {MIN_COUNT}, got: {text}"
                )
            new.values["count"] = count
    return new
