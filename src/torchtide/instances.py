"""Model instances, each on its own worker thread so execution never blocks the event loop.

torch and ONNX Runtime release the GIL while they compute, so two instances really run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tritonclient.grpc import model_config_pb2 as mc

from torchtide.backends.base import (
    Backend,
    InstanceInfo,
    LoadContext,
    ModelInstance,
    Result,
    Timing,
    Work,
)

if TYPE_CHECKING:
    from torchtide.profiling import ProfileSession


class InstanceRunner:
    """One instance and the single thread it runs on: it loads, executes and finalizes there.

    A plain thread fed by a SimpleQueue, answering through call_soon_threadsafe: cheaper per
    hand-off than run_in_executor, and a daemon, so a model hung in execute() cannot hold up
    the process at exit.
    """

    def __init__(self, info: InstanceInfo) -> None:
        self.info = info
        self.instance: ModelInstance | None = None
        self.probe: ProfileSession | None = None  # set while `torchtide profile` runs
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Reply] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=info.name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args, reply = item
            try:
                result = fn(*args)
            except BaseException as e:
                reply(None, e)
            else:
                reply(result, None)

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run fn(*args) on this instance's thread; await the result on the loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def reply(result: Any, error: BaseException | None) -> None:
            # The loop may have closed while this ran (a sibling instance's load failed and the
            # server stopped): then nobody waits for the answer.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, fut, result, error)

        self._queue.put((fn, args, reply))
        return fut

    def call_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on this instance's thread from another thread (tests, tools)."""
        done = threading.Event()
        box: list[Any] = []

        def reply(result: Any, error: BaseException | None) -> None:
            box.extend((result, error))
            done.set()

        self._queue.put((fn, args, reply))
        done.wait()
        if box[1] is not None:
            raise box[1]
        return cast(T, box[0])

    async def load(self, backend: Backend, ctx: LoadContext) -> None:
        self.instance = await self.call(backend.load, ctx)

    def submit(self, work: list[Work], timing: Timing) -> asyncio.Future[list[Result]]:
        assert self.instance is not None
        if self.probe is not None:  # one attribute check when nobody profiles
            profiled = self.probe.claim(self)
            if profiled is not None:
                return self.call(profiled, work, timing)
        return self.call(self.instance.execute, work, timing)

    async def close(self, finalize: bool = True) -> None:
        """Finalize on the instance's thread, then end it. A hung instance (finalize=False) is
        abandoned: its thread cannot be interrupted."""
        inst, self.instance = self.instance, None
        try:
            if inst is not None and finalize:
                await self.call(inst.finalize)
        finally:
            self._queue.put(None)


Reply = Callable[[Any, "BaseException | None"], None]
T = TypeVar("T")


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the waiter was cancelled
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def instance_infos(cfg: Any) -> list[InstanceInfo]:
    """Triton's naming: group `<model>_<g>`, instance `<group>_<i>`; GPU groups get `count`
    instances per listed GPU."""
    infos: list[InstanceInfo] = []
    for group in cfg.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            placements = [("GPU", g) for g in group.gpus for _ in range(group.count)]
        else:
            placements = [("CPU", 0)] * group.count
        for i, (kind, dev) in enumerate(placements):
            infos.append(InstanceInfo(name=f"{group.name}_{i}", kind=kind, device_id=dev))
    return infos
