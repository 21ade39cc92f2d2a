"""Model instances, each on its own worker thread so execution never blocks the event loop.

torch and ONNX Runtime release the GIL while they compute, so two instances really run at once.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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


class InstanceRunner:
    """One instance and the single thread it runs on (loads, executes and finalizes there)."""

    def __init__(self, info: InstanceInfo) -> None:
        self.info = info
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=info.name)
        self.instance: ModelInstance | None = None

    async def load(self, backend: Backend, ctx: LoadContext) -> None:
        loop = asyncio.get_running_loop()
        self.instance = await loop.run_in_executor(self.executor, backend.load, ctx)

    def submit(self, work: list[Work], timing: Timing) -> asyncio.Future[list[Result]]:
        assert self.instance is not None
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.executor, self.instance.execute, work, timing)

    async def close(self, finalize: bool = True) -> None:
        """Finalize on the instance's thread, then let the thread go. A hung instance
        (finalize=False) is abandoned: its thread cannot be interrupted."""
        loop = asyncio.get_running_loop()
        if self.instance is not None and finalize:
            inst, self.instance = self.instance, None
            try:
                await loop.run_in_executor(self.executor, inst.finalize)
            finally:
                self.executor.shutdown(wait=False)
        else:
            self.executor.shutdown(wait=False)


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
