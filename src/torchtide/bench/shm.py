"""`--shared-memory system`: every input set written once into one registered input region,
outputs placed in one registered output region (shared by all requests: the benchmark never
reads them, so concurrent writes do not matter)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchtide.bench.inputs import Batching, InputSet, TensorSpec, output_byte_size
from torchtide.bench.transport import ShmPlacement, ShmRef, Transport


@dataclass
class SharedMemory:
    transport: Transport
    prefix: str = field(default_factory=lambda: f"torchtide_bench_{os.getpid()}")
    _handles: list[tuple[str, Any]] = field(default_factory=list)
    _registered: list[str] = field(default_factory=list)

    async def _region(self, suffix: str, data: bytes | None, byte_size: int) -> str:
        from tritonclient.utils import shared_memory as shm

        name = f"{self.prefix}_{suffix}"
        key = f"/{name}"
        try:
            handle = shm.create_shared_memory_region(name, key, byte_size)
            self._handles.append((name, handle))
            if data:
                shm.set_shared_memory_region(handle, [np.frombuffer(data, dtype=np.uint8)])
        except shm.SharedMemoryException as e:
            raise OSError(f"shared memory region {key} ({byte_size} bytes): {e}") from None
        await self.transport.register_shm(name, key, byte_size)
        self._registered.append(name)
        return name

    async def place(
        self, sets: list[InputSet], outputs: list[TensorSpec], batching: Batching, output_size: int
    ) -> list[ShmPlacement]:
        """Write the input sets into shared memory; where each set's tensors lie."""
        blob = bytearray()
        layouts: list[list[tuple[str, int, int]]] = []
        for tensors in sets:
            layout = []
            for t in tensors:
                layout.append((t.name, len(blob), len(t.raw)))
                blob += t.raw
                blob += b"\0" * (-len(blob) % 64)  # keep every tensor 64-byte aligned
            layouts.append(layout)
        in_region = await self._region("input", bytes(blob), max(len(blob), 64))
        out_refs: list[ShmRef] = []
        offset = 0
        for spec in outputs:
            size = output_byte_size(spec, batching, output_size)
            out_refs.append(ShmRef(spec.name, "", offset, size))
            offset += size + (-size % 64)
        if out_refs:
            out_region = await self._region("output", None, max(offset, 64))
            for r in out_refs:
                r.region = out_region
        return [
            ShmPlacement([ShmRef(n, in_region, off, size) for n, off, size in layout], out_refs)
            for layout in layouts
        ]

    async def release(self) -> None:
        from tritonclient.utils import shared_memory as shm

        for name in self._registered:
            # the server may be gone; the regions are still ours to remove
            with contextlib.suppress(Exception):
                await self.transport.unregister_shm(name)
        self._registered.clear()
        for _, handle in self._handles:
            shm.destroy_shared_memory_region(handle)
        self._handles.clear()
