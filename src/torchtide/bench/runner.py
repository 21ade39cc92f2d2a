"""Runs load steps: closed loop (N workers, each with one request in flight) or open loop
(Poisson arrivals at a rate), measures latency, throughput, errors and the tool's own CPU."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from torchtide.bench.serverstats import ServerCounters, ServerSplit
from torchtide.bench.transport import Transport, TransportError, Unreachable, Worker

MAX_MESSAGES = 5  # distinct error messages kept per step
PERCENTILES = (50, 90, 95, 99)


class Mode(Enum):
    CONCURRENCY = "concurrency"
    RATE = "rate"


class Phase(Enum):
    WARMUP = "warm-up"
    MEASURE = "measuring"
    DRAIN = "draining"


@dataclass(slots=True, frozen=True)
class Step:
    mode: Mode
    value: float

    @property
    def label(self) -> str:
        if self.mode is Mode.CONCURRENCY:
            return f"concurrency {int(self.value)}"
        return f"rate {self.value:g}/s"

    @property
    def short(self) -> str:
        return f"c={int(self.value)}" if self.mode is Mode.CONCURRENCY else f"r={self.value:g}/s"


@dataclass(slots=True)
class StepResult:
    step: Step
    duration_s: float
    requests: int  # successful, completed inside the measurement window
    errors: int
    error_messages: dict[str, int]
    throughput: float  # successful infer/s
    latency_ms: dict[str, float]  # p50, p90, p95, p99, mean, max
    client_cpu_us: float  # the tool's process CPU per completed request
    client_cpu_pct: float  # the tool's CPU use over the window (100 = one core)
    offered_rate: float | None = None  # open loop: requests issued per second
    server: ServerSplit | None = None
    batch_size: int = 1

    def row(self) -> dict[str, Any]:
        """A flat record for CSV and JSON."""
        s = self.server
        return {
            "mode": self.step.mode.value,
            "value": self.step.value,
            "duration_s": round(self.duration_s, 4),
            "requests": self.requests,
            "errors": self.errors,
            "throughput": round(self.throughput, 3),
            "offered_rate": None if self.offered_rate is None else round(self.offered_rate, 3),
            **{f"{k}_ms": round(v, 4) for k, v in self.latency_ms.items()},
            "client_cpu_us_per_request": round(self.client_cpu_us, 2),
            "client_cpu_percent": round(self.client_cpu_pct, 1),
            "server_queue_us": None if s is None else round(s.queue_us, 2),
            "server_compute_input_us": None if s is None else round(s.compute_input_us, 2),
            "server_compute_infer_us": None if s is None else round(s.compute_infer_us, 2),
            "server_compute_output_us": None if s is None else round(s.compute_output_us, 2),
            "server_batch_size": None
            if s is None or s.batch_size is None
            else round(s.batch_size, 3),
            "error_messages": " | ".join(f"{m} (x{n})" for m, n in self.error_messages.items()),
        }


class Recorder:
    """What the workers write during a step. Plain attributes: the hot path stays cheap."""

    __slots__ = (
        "errors",
        "issued",
        "latencies",
        "lost",
        "messages",
        "recording",
        "running",
        "stopped",
        "t0",
        "total",
    )

    def __init__(self) -> None:
        self.latencies: list[int] = []  # ns, successful requests in the window
        self.errors = 0
        self.messages: dict[str, int] = {}
        self.recording = False
        self.running = True
        self.t0 = 1 << 62  # window start (perf_counter_ns); requests started before are warm-up
        self.total = 0  # every completion, for the live display
        self.issued = 0  # open loop: arrivals scheduled inside the window
        self.lost: str | None = None  # why the server could not be reached: ends the step
        self.stopped = asyncio.Event()  # set when the step must end early

    def lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        self.running = False
        self.stopped.set()

    def error(self, message: str) -> None:
        self.errors += 1
        if message in self.messages:
            self.messages[message] += 1
        elif len(self.messages) < MAX_MESSAGES:
            self.messages[message] = 1


# (step, phase, seconds into the phase, completions so far, recent infer/s)
TickFn = Callable[[Step, Phase, float, int, float], None]


@dataclass
class Runner:
    transport: Transport
    requests: list[Any]  # prepared requests, sent in turn
    model: str
    version: str = ""
    warmup_s: float = 1.0
    duration_s: float = 5.0
    max_connections: int = 256  # open loop: workers (HTTP connections) at most
    grace_s: float = 30.0  # how long a step waits for requests still in flight
    seed: int = 0
    batch_size: int = 1
    on_tick: TickFn | None = None
    tick_s: float = 0.25
    _idle: list[Worker] = field(default_factory=list)
    _count: int = 0
    _waiters: collections.deque[asyncio.Future[Worker]] = field(default_factory=collections.deque)
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)

    async def _acquire(self, capped: bool) -> Worker:
        if self._idle:
            return self._idle.pop()
        if not capped or self._count < self.max_connections:
            self._count += 1
            try:
                return await self.transport.new_worker()
            except BaseException:
                self._count -= 1
                raise
        fut: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return await fut

    def _release(self, worker: Worker) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(worker)
                return
        self._idle.append(worker)

    async def _closed(self, worker: Worker, rec: Recorder, offset: int) -> None:
        reqs = self.requests
        n = len(reqs)
        i = offset % n
        pc = time.perf_counter_ns
        infer = worker.infer
        lat = rec.latencies
        while rec.running:
            t = pc()
            try:
                err = await infer(reqs[i])
            except Unreachable as e:  # the server is gone: the step ends
                rec.lose(str(e))
                return
            except Exception as e:  # never let one request end a worker
                err = f"{type(e).__name__}: {e}"
            end = pc()
            i += 1
            if i == n:
                i = 0
            rec.total += 1
            if rec.recording and t >= rec.t0:
                if err is None:
                    lat.append(end - t)
                else:
                    rec.error(err)
            if err is not None:
                # A failing client may answer without ever waiting: give the loop its turn
                # (timers, other workers, Ctrl-C), or this loop would be all it runs.
                await asyncio.sleep(0)

    async def _one(self, scheduled: int, request: Any, rec: Recorder) -> None:
        try:
            worker = await self._acquire(capped=True)
        except Unreachable as e:
            rec.lose(str(e))
            return
        except Exception as e:
            err: str | None = f"{type(e).__name__}: {e}"
        else:
            try:
                err = await worker.infer(request)
            except Unreachable as e:
                rec.lose(str(e))
                return
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
            finally:
                self._release(worker)
        end = time.perf_counter_ns()
        rec.total += 1
        if rec.recording and scheduled >= rec.t0:
            if err is None:
                rec.latencies.append(end - scheduled)  # from the arrival: queueing counts
            else:
                rec.error(err)

    async def _open(self, rate: float, rec: Recorder) -> None:
        loop = asyncio.get_running_loop()
        rng = np.random.default_rng(self.seed)
        reqs = self.requests
        n = len(reqs)
        i = 0
        pc = time.perf_counter_ns
        t = pc()
        while rec.running:
            for gap in rng.exponential(1e9 / rate, size=1024).tolist():
                t += int(gap)
                delay = t - pc()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                if not rec.running:
                    return
                if rec.recording and t >= rec.t0:
                    rec.issued += 1
                task = loop.create_task(self._one(t, reqs[i], rec))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                i += 1
                if i == n:
                    i = 0
            await asyncio.sleep(0)  # behind schedule, no gap waits: let the arrivals run

    async def _ticker(self, step: Step, rec: Recorder, phase: list[Phase]) -> None:
        assert self.on_tick is not None
        history: collections.deque[tuple[float, int]] = collections.deque(maxlen=8)
        start = time.monotonic()
        current = phase[0]
        while True:
            now = time.monotonic()
            if phase[0] is not current:
                current, start = phase[0], now
            history.append((now, rec.total))
            t0, n0 = history[0]
            rate = (rec.total - n0) / (now - t0) if now > t0 else 0.0
            self.on_tick(step, current, now - start, rec.total, rate)
            await asyncio.sleep(self.tick_s)

    @staticmethod
    async def _pause(rec: Recorder, seconds: float) -> None:
        """Wait `seconds`, or less if the server is lost (then raise Unreachable)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rec.stopped.wait(), seconds)
        if rec.lost is not None:
            raise Unreachable(rec.lost)

    async def _stats(self) -> ServerCounters | None:
        try:
            return await self.transport.statistics(self.model, self.version)
        except TransportError:
            return None

    async def run_step(self, step: Step) -> StepResult:
        rec = Recorder()
        loop = asyncio.get_running_loop()
        phase = [Phase.WARMUP]
        tasks: list[asyncio.Task[None]] = []
        workers: list[Worker] = []
        ticker = (
            loop.create_task(self._ticker(step, rec, phase)) if self.on_tick is not None else None
        )
        interrupted = False
        try:
            if step.mode is Mode.CONCURRENCY:
                workers = [await self._acquire(capped=False) for _ in range(int(step.value))]
                tasks = [
                    loop.create_task(self._closed(w, rec, k * 7919)) for k, w in enumerate(workers)
                ]
            else:
                tasks = [loop.create_task(self._open(step.value, rec))]
            if self.warmup_s > 0:
                await self._pause(rec, self.warmup_s)
            before = await self._stats()
            phase[0] = Phase.MEASURE
            cpu0, t0 = time.process_time(), time.perf_counter_ns()
            rec.t0, rec.recording = t0, True
            await self._pause(rec, self.duration_s)
            rec.recording = False
            cpu1, t1 = time.process_time(), time.perf_counter_ns()
            after = await self._stats()
        except asyncio.CancelledError:  # Ctrl-C: stop now, do not wait for requests in flight
            interrupted = True
            raise
        finally:
            phase[0] = Phase.DRAIN
            rec.running = False
            pending = [*tasks, *self._inflight]
            if pending:
                grace = 0 if interrupted or rec.lost is not None else self.grace_s
                _, late = await asyncio.wait(pending, timeout=grace)
                for t in late:
                    t.cancel()
                if late:
                    await asyncio.wait(late)
            for t in tasks:  # surface a bug in a worker rather than hiding it
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            for w in workers:
                self._release(w)
            if ticker is not None:
                ticker.cancel()
        return self._result(step, rec, (t1 - t0) / 1e9, cpu1 - cpu0, before, after)

    def _result(
        self,
        step: Step,
        rec: Recorder,
        duration: float,
        cpu: float,
        before: ServerCounters | None,
        after: ServerCounters | None,
    ) -> StepResult:
        lat = np.asarray(rec.latencies, dtype=np.float64) / 1e6
        if lat.size:
            pct = np.percentile(lat, PERCENTILES)
            latency = {f"p{p}": float(v) for p, v in zip(PERCENTILES, pct, strict=True)}
            latency |= {"mean": float(lat.mean()), "max": float(lat.max())}
        else:
            latency = {k: float("nan") for k in ("p50", "p90", "p95", "p99", "mean", "max")}
        completed = lat.size + rec.errors
        return StepResult(
            step=step,
            duration_s=duration,
            requests=int(lat.size),
            errors=rec.errors,
            error_messages=dict(rec.messages),
            throughput=lat.size * self.batch_size / duration if duration > 0 else 0.0,
            latency_ms=latency,
            client_cpu_us=cpu / completed * 1e6 if completed else float("nan"),
            client_cpu_pct=cpu / duration * 100 if duration > 0 else 0.0,
            offered_rate=rec.issued / duration if step.mode is Mode.RATE and duration else None,
            server=ServerSplit.between(before, after) if before and after else None,
            batch_size=self.batch_size,
        )

    async def close(self) -> None:
        for w in self._idle:
            w.close()
        self._idle.clear()
        self._count = 0
