"""Per-model-version scheduling: Triton's default scheduler and dynamic batcher.

One asyncio task owns the queues and the futures. Batches are formed only when an instance is
free, so while every instance is busy the next batch keeps growing (as Triton's does). Rows, not
requests, count against max_batch_size; a request of another shape closes the batch; the delay
is measured from the oldest queued request on a monotonic clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from torchtide.backends.base import Result, Timing, Work
from torchtide.errors import ServerError, Status, unavailable
from torchtide.instances import InstanceRunner
from torchtide.stats import ModelStats

log = logging.getLogger("torchtide.scheduler")


class State(Enum):
    QUEUED = 1
    RUNNING = 2
    DONE = 3


@dataclass(slots=True, eq=False)
class Pending:
    work: Work
    future: asyncio.Future[Result]
    key: tuple[Any, ...]
    enqueue_ns: int
    level: int = 0
    deadline_ns: int = 0  # 0 = no queue timeout
    state: State = State.QUEUED


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    reject_on_timeout: bool = True
    timeout_us: int = 0
    allow_override: bool = False
    max_queue_size: int = 0

    @classmethod
    def of(cls, p: Any) -> QueuePolicy:
        return cls(
            reject_on_timeout=p.timeout_action == 0,  # REJECT
            timeout_us=int(p.default_timeout_microseconds),
            allow_override=bool(p.allow_timeout_override),
            max_queue_size=int(p.max_queue_size),
        )


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """What the scheduler needs from the config: `dynamic` False is the default scheduler."""

    dynamic: bool = False
    max_batch_size: int = 0
    preferred: frozenset[int] = frozenset()
    delay_ns: int = 0
    preserve_ordering: bool = False
    levels: int = 1
    default_level: int = 0  # 0-based
    policies: tuple[QueuePolicy, ...] = (QueuePolicy(),)
    execute_timeout_s: float = 0.0  # 0 = wait forever; else a hung execute() is cut loose

    @classmethod
    def of(cls, cfg: Any) -> BatchPolicy:
        timeout = 0.0
        if EXECUTE_TIMEOUT_PARAM in cfg.parameters:
            timeout = float(cfg.parameters[EXECUTE_TIMEOUT_PARAM].string_value or 0)
        if not cfg.HasField("dynamic_batching"):
            return cls(execute_timeout_s=timeout)
        db = cfg.dynamic_batching
        levels = max(1, int(db.priority_levels))
        default = QueuePolicy.of(db.default_queue_policy)
        policies = tuple(
            QueuePolicy.of(db.priority_queue_policy[lv])
            if lv in db.priority_queue_policy
            else default
            for lv in range(1, levels + 1)
        )
        return cls(
            dynamic=True,
            max_batch_size=int(cfg.max_batch_size),
            preferred=frozenset(int(p) for p in db.preferred_batch_size)
            or frozenset({int(cfg.max_batch_size)}),
            delay_ns=int(db.max_queue_delay_microseconds) * 1000,
            preserve_ordering=bool(db.preserve_ordering),
            levels=levels,
            default_level=max(0, int(db.default_priority_level) - 1),
            policies=policies,
            execute_timeout_s=timeout,
        )


TIMEOUT_MESSAGE = "Request timeout expired"
EXECUTE_TIMEOUT_PARAM = "EXECUTE_TIMEOUT_SECS"


class Scheduler:
    def __init__(
        self, policy: BatchPolicy, instances: list[InstanceRunner], stats: ModelStats
    ) -> None:
        self.policy = policy
        self.stats = stats
        self.idle: deque[InstanceRunner] = deque(instances)
        self.instances = instances
        self.queues: list[deque[Pending]] = [deque() for _ in range(policy.levels)]
        self.delayed: deque[Pending] = deque()  # timed out with timeout_action DELAY
        self.deadlines: list[tuple[int, int, Pending]] = []
        self._seq = itertools.count()
        # No task of its own: enqueue and completion ask for one scheduling pass at the end of
        # the current loop iteration (coalesced), and one timer covers delays and timeouts.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pass_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._accepting = True
        self._running = 0  # batches executing
        self._idle_event = asyncio.Event()
        self._idle_event.set()
        # preserve_ordering: batches release their responses in dispatch order
        self._dispatch_seq = itertools.count()
        self._next_release = 0
        self._held: dict[int, list[tuple[Pending, Result]]] = {}
        self.dead: dict[str, str] = {}  # instance name -> why it was taken out of service

    # ------------------------------------------------------------------ admission

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def enqueue(self, work: Work, key: tuple[Any, ...], request_id: str) -> Pending:
        if not self._accepting:
            raise unavailable(
                "model is unloading or the server is shutting down; not accepting requests"
            )
        if not self.alive:
            raise unavailable(f"no instance left in service: {next(iter(self.dead.values()))}")
        now = time.monotonic_ns()
        level = self._level(work.parameters)
        policy = self.policy.policies[level]
        if policy.max_queue_size and len(self.queues[level]) >= policy.max_queue_size:
            self.stats.record_failure("REJECTED", 0)
            rid = request_id or "<id_unknown>"
            raise unavailable(f"[request id: {rid}] Exceeds maximum queue size")
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        p = Pending(work, fut, key, now, level)
        timeout_us = self._timeout_us(policy, work.parameters)
        if timeout_us:
            p.deadline_ns = now + timeout_us * 1000
            heapq.heappush(self.deadlines, (p.deadline_ns, next(self._seq), p))
        self.queues[level].append(p)
        self.stats.pending += 1
        self._idle_event.clear()
        self._wake()
        return p

    def _level(self, params: dict[str, Any]) -> int:
        if self.policy.levels == 1:
            return 0
        prio = params.get("priority", 0)
        if isinstance(prio, int) and not isinstance(prio, bool) and 1 <= prio <= self.policy.levels:
            return prio - 1
        return self.policy.default_level  # 0 or out of range: the default level, as Triton

    @staticmethod
    def _timeout_us(policy: QueuePolicy, params: dict[str, Any]) -> int:
        # The request may only shorten the queue timeout. With no default (0 = none) any
        # positive request timeout applies (Triton ignores it then; see README).
        asked = params.get("timeout")
        if not policy.allow_override or not isinstance(asked, int) or isinstance(asked, bool):
            return policy.timeout_us
        if asked > 0 and (policy.timeout_us == 0 or asked < policy.timeout_us):
            return asked
        return policy.timeout_us

    def cancel(self, p: Pending) -> None:
        """The caller went away: a queued request never reaches the model."""
        p.work.cancelled = True
        if p.state is State.QUEUED:
            self._wake()

    # ------------------------------------------------------------------ the loop

    def _wake(self) -> None:
        """Ask for a scheduling pass at the end of this loop iteration (once, however often
        asked), so requests arriving together are seen together."""
        if not self._pass_pending and self._loop is not None:
            self._pass_pending = True
            self._loop.call_soon(self._pass)

    def _pass(self) -> None:
        self._pass_pending = False
        wait = self._schedule()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wait is not None and self._loop is not None:
            self._timer = self._loop.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pass()

    def _schedule(self) -> float | None:
        """Dispatch what can go now; return seconds until the next timed event, or None."""
        now = time.monotonic_ns()
        self._expire(now)
        wait_ns: int | None = None
        while self.idle:
            batch, reason, ready_at = self._form(now)
            if batch:
                parts = self._balance(batch)
                for part in parts:
                    self._dispatch(part, reason if len(parts) == 1 else "balanced", now)
                continue
            if ready_at is not None:
                wait_ns = ready_at - now
            break
        if self.deadlines:
            until = self.deadlines[0][0] - now
            wait_ns = until if wait_ns is None else min(wait_ns, until)
        if self.stats.pending == 0 and self._running == 0:
            self._idle_event.set()
        return None if wait_ns is None else max(wait_ns, 0) / 1e9

    def _expire(self, now: int) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, p = heapq.heappop(self.deadlines)
            if p.state is not State.QUEUED or p.work.cancelled:
                continue
            if self.policy.policies[p.level].reject_on_timeout:
                self._remove(p)
                self._finish_early(
                    p, ServerError(Status.UNAVAILABLE, TIMEOUT_MESSAGE), "REJECTED", now
                )
            else:
                self._remove(p)
                p.state = State.QUEUED
                self.delayed.append(p)
                self.stats.pending += 1

    def _remove(self, p: Pending) -> None:
        q = self.queues[p.level]
        try:
            q.remove(p)
        except ValueError:
            self.delayed.remove(p)
        self.stats.pending -= 1

    def _order(self) -> Iterator[tuple[deque[Pending], Pending]]:
        for q in self.queues:
            for p in q:
                yield q, p
        for p in self.delayed:
            yield self.delayed, p

    def _form(self, now: int) -> tuple[list[Pending], str, int | None]:
        """The next batch to run now (with why it was released), or when to look again."""
        self._drop_cancelled_heads(now)
        pol = self.policy
        if not pol.dynamic:
            for q in self.queues:
                if q:
                    return [q[0]], "idle", None
            return [], "", None
        chosen: list[Pending] = []
        rows = 0
        closed = False
        oldest = None
        preferred_cut = 0
        for _, p in self._order():
            if p.work.cancelled:
                continue
            if chosen and (p.key != chosen[0].key or rows + p.work.rows > pol.max_batch_size):
                closed = True
                break
            chosen.append(p)
            rows += p.work.rows
            oldest = p.enqueue_ns if oldest is None else min(oldest, p.enqueue_ns)
            if rows in pol.preferred:
                preferred_cut = len(chosen)
            if rows >= pol.max_batch_size:
                closed = True
                break
        if not chosen:
            return [], "", None
        if closed and rows >= pol.max_batch_size:
            return chosen, "full", None
        if preferred_cut:
            return chosen[:preferred_cut], "preferred", None
        assert oldest is not None
        ready_at = oldest + pol.delay_ns
        if now >= ready_at:
            return chosen, "delay" if pol.delay_ns else "idle", None
        if closed:  # a request of another shape closes the pending batch at once
            return chosen, "full", None
        return [], "", ready_at

    def _balance(self, batch: list[Pending]) -> list[list[Pending]]:
        """Beyond Triton: when a batch would take everything queued while several instances
        are idle, spread it over them (equal rows, queue order kept) instead of leaving all
        but one instance idle."""
        k = min(len(self.idle), len(batch))
        if k < 2 or not self.policy.dynamic or self.stats.pending != len(batch):
            return [batch]
        total = sum(p.work.rows for p in batch)
        parts: list[list[Pending]] = [[]]
        rows = 0
        for p in batch:
            if parts[-1] and rows >= total * len(parts) / k and len(parts) < k:
                parts.append([])
            parts[-1].append(p)
            rows += p.work.rows
        return parts

    def _drop_cancelled_heads(self, now: int) -> None:
        for q in (*self.queues, self.delayed):
            while q and q[0].work.cancelled:
                p = q.popleft()
                self.stats.pending -= 1
                self._finish_early(
                    p, ServerError(Status.CANCELLED, "request cancelled"), "CANCELED", now
                )

    def _finish_early(self, p: Pending, err: ServerError, reason: str, now: int) -> None:
        p.state = State.DONE
        self.stats.record_failure(reason, now - p.enqueue_ns)
        if not p.future.done():
            p.future.set_result(err)

    def _dispatch(self, batch: list[Pending], reason: str, now: int) -> None:
        ids = {id(p) for p in batch}
        for q in (*self.queues, self.delayed):
            if q and any(id(p) in ids for p in q):
                kept = [p for p in q if id(p) not in ids]
                q.clear()
                q.extend(kept)
        inst = self.idle.popleft()
        for p in batch:
            p.state = State.RUNNING
            self.stats.queue.add(now - p.enqueue_ns)
        self.stats.pending -= len(batch)
        self.stats.releases[reason] += 1
        self._running += 1
        timing = Timing()
        seq = next(self._dispatch_seq)
        fut = inst.submit([p.work for p in batch], timing)
        fut.add_done_callback(lambda f: self._complete(inst, batch, timing, seq, f))
        if self.policy.execute_timeout_s > 0:
            loop = asyncio.get_running_loop()
            loop.call_later(self.policy.execute_timeout_s, self._watchdog, inst, batch, seq, fut)

    def _watchdog(
        self, inst: InstanceRunner, batch: list[Pending], seq: int, fut: asyncio.Future[Any]
    ) -> None:
        """execute() did not return in time: fail its requests now and retire the instance (its
        thread cannot be stopped; the model can be reloaded to get a fresh one)."""
        if fut.done():
            return
        why = (
            f"instance '{inst.info.name}' did not return from execute() within "
            f"{self.policy.execute_timeout_s:g} s ({EXECUTE_TIMEOUT_PARAM}); it was taken out of "
            "service"
        )
        self.dead[inst.info.name] = why
        log.error("%s%s", why, "" if self.alive else "; no instance left: the model is UNAVAILABLE")
        self._running -= 1
        now = time.monotonic_ns()
        err = ServerError(Status.UNAVAILABLE, why)
        if self.policy.preserve_ordering:
            self._held[seq] = [(p, err) for p in batch]
            self._release_held(now)
        else:
            self._release([(p, err) for p in batch], now)
        if not self.alive:
            self._fail_queued(unavailable(f"no instance left in service: {why}"))
        self._wake()

    def _fail_queued(self, err: ServerError) -> None:
        now = time.monotonic_ns()
        for q in (*self.queues, self.delayed):
            while q:
                p = q.popleft()
                self.stats.pending -= 1
                self._finish_early(p, err, "OTHER", now)

    @property
    def alive(self) -> bool:
        return len(self.dead) < len(self.instances)

    def _complete(
        self,
        inst: InstanceRunner,
        batch: list[Pending],
        timing: Timing,
        seq: int,
        fut: asyncio.Future[list[Result]],
    ) -> None:
        now = time.monotonic_ns()
        if inst.info.name in self.dead:
            return  # the watchdog already answered this batch; the instance stays retired
        self._running -= 1
        self.idle.append(inst)
        try:
            results = fut.result()
            if len(results) != len(batch):
                raise RuntimeError(
                    f"instance returned {len(results)} results for {len(batch)} requests"
                )
        except Exception as e:
            err = ServerError(Status.INTERNAL, f"{type(e).__name__}: {e}")
            results = [err] * len(batch)
        ran = [p for p, r in zip(batch, results, strict=True) if not p.work.cancelled]
        if ran:
            rows = sum(p.work.rows for p in ran)
            self.stats.record_execution(rows, timing.input_ns, timing.infer_ns, timing.output_ns)
        for _ in ran:
            self.stats.compute_input.add(timing.input_ns)
            self.stats.compute_infer.add(timing.infer_ns)
            self.stats.compute_output.add(timing.output_ns)
        pairs = list(zip(batch, results, strict=True))
        if self.policy.preserve_ordering:
            self._held[seq] = pairs
            self._release_held(now)
        else:
            self._release(pairs, now)
        self._wake()

    def _release_held(self, now: int) -> None:
        while self._next_release in self._held:
            self._release(self._held.pop(self._next_release), now)
            self._next_release += 1

    def _release(self, pairs: list[tuple[Pending, Result]], now: int) -> None:
        for p, r in pairs:
            p.state = State.DONE
            elapsed = now - p.enqueue_ns
            if isinstance(r, ServerError):
                reason = "CANCELED" if r.status is Status.CANCELLED else "BACKEND"
                self.stats.record_failure(reason, elapsed)
            else:
                self.stats.success.add(elapsed)
            if not p.future.done():
                p.future.set_result(r)

    # ------------------------------------------------------------------ shutdown

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting; wait for queued and running work. True when everything finished."""
        self._accepting = False
        self._wake()
        try:
            await asyncio.wait_for(self._idle_event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self._accepting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # anything still queued (drain timed out) fails cleanly
        now = time.monotonic_ns()
        for _, p in list(self._order()):
            self._finish_early(
                p, unavailable("model was unloaded before the request ran"), "OTHER", now
            )
        for q in (*self.queues, self.delayed):
            q.clear()
        self.stats.pending = 0
        await asyncio.gather(
            *(inst.close(finalize=inst.info.name not in self.dead) for inst in self.instances)
        )
