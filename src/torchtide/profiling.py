"""On-demand profiling of a model's next executions (`torchtide profile`; ours, off by default).

A `ProfileSession` attaches itself to the instances of one model version. Each instance asks it,
on the event loop, whether to profile the execution it is about to hand to its thread (one
attribute check while no profile runs); the session claims the next `executions` executions and
profiles each on the thread that runs it:

- PyTorch models (`ModelInstance.profiler == "torch"`): `torch.profiler.profile(record_shapes=True)`
  (and CUDA activity on a GPU instance) around `execute()`. torch's profiler records only the
  thread that started it, and two profilers running at once on two threads crash the process, so
  the profiler is started per execution on the executing thread, and at most one execution in the
  process is profiled at a time (`_EXCLUSIVE`): while one is, the model's other instances keep
  serving unprofiled. The report merges the executions' operator averages (top operators by self
  CPU time, with input shapes) and concatenates their Chrome traces (absolute timestamps).
- Python-backend (and other) models: `cProfile` around `execute()`, merged with `pstats`.

The request waits on the loop (never blocking it) until the executions happened or `timeout_s`
passed; with none, the answer is an error naming the cause. Building the report runs in a worker
thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import cProfile
import io
import json
import logging
import marshal
import os
import pstats
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchtide.backends.base import Result, Timing, Work
from torchtide.errors import ServerError, Status, invalid_arg, unavailable, unsupported

if TYPE_CHECKING:
    from torchtide.instances import InstanceRunner

log = logging.getLogger("torchtide.profiling")

DEFAULT_EXECUTIONS = 10
MAX_EXECUTIONS = 100  # each profiled execution's events are kept until the report is built
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 3600.0
TABLE_ROWS = 25
EXECUTE_LABEL = "torchtide::execute"  # the span around each profiled execute() in the trace

DISABLED = (
    "profiling is disabled; start the server with '--allow-profiling' to enable "
    "POST /v2/models/<model>/profile"
)

# One profiled execution at a time in the whole process (see the module's docstring).
_EXCLUSIVE = threading.Lock()

Execute = Callable[[list[Work], Timing], list[Result]]


# ---------------------------------------------------------------------------- captures


@dataclass(slots=True)
class TorchCapture:
    events: Any  # torch's EventList of the execution's FunctionEvents
    trace: dict[str, Any]  # the execution's Chrome trace


@dataclass(slots=True)
class PythonCapture:
    profile: cProfile.Profile


Capture = TorchCapture | PythonCapture


Stop = Callable[[], Capture]  # stops a started profiler and returns what it recorded


def _torch_start(gpu: bool) -> Stop:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU]
    if gpu and torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    stack = contextlib.ExitStack()
    try:
        prof = stack.enter_context(profile(activities=activities, record_shapes=True))
        stack.enter_context(record_function(EXECUTE_LABEL))
    except BaseException:
        stack.close()
        raise

    def stop() -> Capture:
        stack.close()
        return TorchCapture(prof.events(), _chrome_trace(prof))

    return stop


def _chrome_trace(prof: Any) -> dict[str, Any]:
    fd, path = tempfile.mkstemp(prefix="torchtide-profile-", suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            doc: dict[str, Any] = json.load(f)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return doc


def _python_start(gpu: bool) -> Stop:
    prof = cProfile.Profile()
    prof.enable()

    def stop() -> Capture:
        prof.disable()
        prof.create_stats()
        return PythonCapture(prof)

    return stop


_STARTERS: dict[str, Callable[[bool], Stop]] = {"torch": _torch_start, "python": _python_start}
PROFILER_NAMES = {"torch": "torch.profiler", "python": "cProfile"}


def _stopped(stop: Stop | None, kind: str) -> Capture | None:
    if stop is None:
        return None
    try:
        return stop()
    except Exception:
        log.exception("profiling: could not read %s's profile of one execution", kind)
        return None


# ---------------------------------------------------------------------------- the report


@dataclass(slots=True)
class ProfileReport:
    model: str
    version: str
    profiler: str  # "torch.profiler" or "cProfile"
    requested: int
    executions: int  # profiled executions in the report (fewer than requested on a timeout)
    table: str  # the top entries as text
    top: list[dict[str, Any]]  # the same, as data
    chrome_trace: dict[str, Any] | None = None  # torch.profiler
    pstats: bytes | None = None  # cProfile: what pstats.Stats.dump_stats writes
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "model_name": self.model,
            "model_version": self.version,
            "profiler": self.profiler,
            "requested": self.requested,
            "executions": self.executions,
            "table": self.table,
            "top": self.top,
        }
        if self.note:
            doc["note"] = self.note
        if self.chrome_trace is not None:
            doc["chrome_trace"] = self.chrome_trace
        if self.pstats is not None:
            doc["pstats"] = base64.b64encode(self.pstats).decode("ascii")
        return doc


def torch_report(
    captures: list[TorchCapture], gpu: bool
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """Merged operator averages (table, rows) and one Chrome trace of every execution."""
    from torch.autograd.profiler_util import EventList

    merged: dict[tuple[str, str], Any] = {}
    for c in captures:  # averaged here, in the report's thread, not on the instance's
        for avg in c.events.key_averages(group_by_input_shapes=True):
            key = (avg.key, str(avg.input_shapes))
            if key in merged:
                merged[key].add(avg)
            else:
                merged[key] = avg
    averages = EventList(list(merged.values()), use_device="cuda" if gpu else None)  # type: ignore[no-untyped-call]
    table: str = averages.table(  # type: ignore[no-untyped-call]
        sort_by="self_cpu_time_total", row_limit=TABLE_ROWS, max_shapes_column_width=60
    )
    ranked = sorted(merged.values(), key=lambda a: a.self_cpu_time_total, reverse=True)
    top = [_torch_row(a, gpu) for a in ranked[:TABLE_ROWS]]
    return table, top, _merge_traces([c.trace for c in captures])


def _torch_row(avg: Any, gpu: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": avg.key,
        "input_shapes": avg.input_shapes,
        "calls": avg.count,
        "self_cpu_us": round(avg.self_cpu_time_total, 3),
        "cpu_total_us": round(avg.cpu_time_total, 3),
    }
    if gpu:
        row["self_device_us"] = round(avg.self_device_time_total, 3)
        row["device_total_us"] = round(avg.device_time_total, 3)
    return row


def _merge_traces(traces: list[dict[str, Any]]) -> dict[str, Any]:
    """One Chrome trace: the first's header, every execution's events. Timestamps are absolute;
    flow ids (CPU launch -> GPU kernel) restart in each export, so each gets its own range."""
    merged = {k: v for k, v in traces[0].items() if k != "traceEvents"}
    events: list[Any] = []
    for i, trace in enumerate(traces):
        for ev in trace.get("traceEvents", []):
            if i and isinstance(ev, dict) and ev.get("ph") in ("s", "t", "f"):
                ident = ev.get("id")
                if isinstance(ident, int):
                    ev["id"] = ident + i * 2**32
            events.append(ev)
    merged["traceEvents"] = events
    return merged


def python_report(captures: list[PythonCapture]) -> tuple[str, list[dict[str, Any]], bytes]:
    """pstats of every execution: the top functions by own time, and the .prof file."""
    stats = pstats.Stats(captures[0].profile)
    for c in captures[1:]:
        stats.add(c.profile)
    data = marshal.dumps(stats.stats)  # type: ignore[attr-defined]
    out = io.StringIO()
    shown = pstats.Stats(captures[0].profile, stream=out)
    for c in captures[1:]:
        shown.add(c.profile)
    shown.strip_dirs().sort_stats("tottime").print_stats(TABLE_ROWS)
    table = out.getvalue().strip("\n") + "\n"
    entries = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: kv[1][2],
        reverse=True,
    )
    top = [
        {
            "function": f"{func[0]}:{func[1]}({func[2]})",
            "calls": nc,
            "primitive_calls": cc,
            "self_s": round(tt, 6),
            "cumulative_s": round(ct, 6),
        }
        for func, (cc, nc, tt, ct, _) in entries[:TABLE_ROWS]
    ]
    return table, top, data


# ---------------------------------------------------------------------------- the session


@dataclass
class ProfileSession:
    """The next `wanted` executions of one model version's instances."""

    model: str
    version: str
    wanted: int
    runners: list[InstanceRunner]
    captures: list[Capture] = field(default_factory=list)
    kind: str = ""
    gpu: bool = False
    _claimed: int = 0
    finished: int = 0  # claimed executions that have returned
    _closed: bool = False
    _why_ended: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _done: asyncio.Future[None] | None = None

    def claim(self, runner: InstanceRunner) -> Execute | None:
        """On the loop, as `runner` is about to execute: the profiled execute, or None (the
        session has what it needs, or another execution in the process is being profiled)."""
        if self._closed or self._claimed >= self.wanted or runner.instance is None:
            return None
        if not _EXCLUSIVE.acquire(blocking=False):
            return None
        self._claimed += 1
        kind = getattr(runner.instance, "profiler", "python")
        if kind not in _STARTERS:
            kind = "python"
        gpu = runner.info.kind == "GPU"
        execute = runner.instance.execute

        def profiled(work: list[Work], timing: Timing) -> list[Result]:
            """On the instance's thread. A profiler that fails to start or to stop leaves this
            execution out of the report; the requests are served either way."""
            stop: Stop | None = None
            try:
                try:
                    stop = _STARTERS[kind](gpu)
                except Exception:
                    log.exception("profiling: could not start %s", PROFILER_NAMES[kind])
                return execute(work, timing)
            finally:
                capture = _stopped(stop, kind)
                _EXCLUSIVE.release()
                self._notify(capture, kind, gpu)

        return profiled

    def _notify(self, capture: Capture | None, kind: str, gpu: bool) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(self._finish_one, capture, kind, gpu)

    def _finish_one(self, capture: Capture | None, kind: str, gpu: bool) -> None:
        self.finished += 1
        if capture is not None and not self._closed:
            self.captures.append(capture)
            self.kind, self.gpu = kind, self.gpu or gpu
        if self.finished >= self.wanted:
            self.end("")

    def end(self, why: str) -> None:
        """Stop waiting (all executions happened, or `why` the profile ends early)."""
        if self._done is not None and not self._done.done():
            self._why_ended = why
            self._done.set_result(None)

    async def run(self, timeout_s: float) -> ProfileReport:
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        for r in self.runners:
            r.probe = self
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._done), timeout_s)
        finally:
            self._closed = True
            for r in self.runners:
                if r.probe is self:
                    r.probe = None
        captures = list(self.captures)
        if not captures:
            why = self._why_ended or (
                f"no execution of model '{self.model}' within {timeout_s:g} s: send it requests "
                "while profiling, or allow more time"
                if not self.finished
                else f"{self.finished} executions ran, but none could be profiled (see the "
                "server log)"
            )
            raise unavailable(f"profile of model '{self.model}' ended with nothing: {why}")
        return await asyncio.to_thread(self._report, captures, timeout_s)

    def _report(self, captures: list[Capture], timeout_s: float) -> ProfileReport:
        n = len(captures)
        note = ""
        if self._why_ended:
            note = self._why_ended
        elif n < self.finished:
            note = f"{self.finished - n} executions could not be profiled (see the server log)"
        elif n < self.wanted:
            note = f"only {n} of {self.wanted} executions within {timeout_s:g} s"
        report = ProfileReport(
            self.model, self.version, PROFILER_NAMES[self.kind], self.wanted, n, "", [], note=note
        )
        if self.kind == "torch":
            report.table, report.top, report.chrome_trace = torch_report(
                [c for c in captures if isinstance(c, TorchCapture)], self.gpu
            )
        else:
            report.table, report.top, report.pstats = python_report(
                [c for c in captures if isinstance(c, PythonCapture)]
            )
        return report


# ---------------------------------------------------------------------------- the server's part


def profile_parameters(params: Mapping[str, object]) -> tuple[int, float]:
    """A profile request's parameters -> (executions, timeout_s); INVALID_ARG otherwise."""
    unknown = sorted(set(params) - {"executions", "timeout"})
    if unknown:
        raise invalid_arg(
            f"unrecognized profile parameter '{unknown[0]}'; expected 'executions' or 'timeout'"
        )
    executions = params.get("executions", DEFAULT_EXECUTIONS)
    if (
        isinstance(executions, bool)
        or not isinstance(executions, int)
        or not 1 <= executions <= MAX_EXECUTIONS
    ):
        raise invalid_arg(
            f"profile parameter 'executions' must be an integer from 1 to {MAX_EXECUTIONS}"
        )
    timeout = params.get("timeout", DEFAULT_TIMEOUT_S)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT_S
    ):
        raise invalid_arg(
            f"profile parameter 'timeout' must be a number of seconds, more than 0 and at most "
            f"{MAX_TIMEOUT_S:g}"
        )
    return executions, float(timeout)


class Profiler:
    """The server's profiling switch and its one session at a time."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.session: ProfileSession | None = None

    def check(self) -> None:
        if not self.enabled:
            raise unsupported(DISABLED)
        s = self.session
        if s is not None:
            raise ServerError(
                Status.ALREADY_EXISTS,
                f"a profile is already running (model '{s.model}', {s.finished} of {s.wanted} "
                "executions); try again when it ends",
            )

    async def run(
        self,
        model: str,
        version: str,
        runners: list[InstanceRunner],
        executions: int,
        timeout_s: float,
    ) -> ProfileReport:
        self.check()
        session = self.session = ProfileSession(model, version, executions, runners)
        log.info("profiling the next %d executions of '%s' version %s", executions, model, version)
        try:
            report = await session.run(timeout_s)
        finally:
            self.session = None
        log.info("profile of '%s' done: %d executions", model, report.executions)
        return report

    def stop(self) -> None:
        if self.session is not None:
            self.session.end("the server is shutting down")
