"""System shared-memory regions registered by clients (Triton's shared-memory extension).

Lives in the core so HTTP and gRPC share one registry. Regions are POSIX shm objects
(/dev/shm/<key>) mapped with mmap; inputs are read as numpy views without a copy.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchtide.errors import ServerError, Status, invalid_arg, not_found

SHM_DIR = "/dev/shm"


@dataclass(slots=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mm: mmap.mmap

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }


class SharedMemoryRegistry:
    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if name in self.regions:
            raise ServerError(
                Status.ALREADY_EXISTS, f"shared memory region '{name}' already in manager"
            )
        if offset < 0 or byte_size <= 0:
            raise invalid_arg(f"failed to register shared memory region '{name}': invalid args")
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            raise ServerError(
                Status.INTERNAL, f"Unable to open shared memory region: '{key}'"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise invalid_arg(f"failed to register shared memory region '{name}': invalid args")
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.regions[name] = Region(name, key, offset, byte_size, mm)

    def unregister(self, name: str = "") -> None:
        """Unregister one region, or all when name is empty; unknown names are not an error."""
        names = [name] if name else list(self.regions)
        for n in names:
            region = self.regions.pop(n, None)
            if region is not None:
                # a live numpy view may still reference it; then GC closes it
                with contextlib.suppress(BufferError):
                    region.mm.close()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        if name:
            region = self.regions.get(name)
            if region is None:
                raise not_found(f"Unable to find system shared memory region: '{name}'")
            return [region.status()]
        return [r.status() for r in self.regions.values()]

    def _span(self, name: str, offset: int, byte_size: int) -> tuple[Region, int]:
        region = self.regions.get(name)
        if region is None:
            raise not_found(f"Unable to find shared memory region: '{name}'")
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise invalid_arg(f"Invalid offset + byte size for shared memory region: '{name}'")
        return region, region.offset + offset

    def view(self, name: str, offset: int, byte_size: int) -> memoryview:
        """The bytes of an input placed in shared memory, without copying."""
        region, start = self._span(name, offset, byte_size)
        return memoryview(region.mm)[start : start + byte_size]

    def write(
        self, name: str, offset: int, byte_size: int, data: bytes | memoryview, output: str
    ) -> None:
        region, start = self._span(name, offset, byte_size)
        n = len(data)
        if n > byte_size:
            raise ServerError(
                Status.INTERNAL,
                f"shared memory size specified with the request for output '{output}' "
                f"({byte_size} bytes) should be at least {n} bytes to hold the results",
            )
        region.mm[start : start + n] = data

    def close(self) -> None:
        self.unregister()


def array_bytes(arr: np.ndarray[Any, Any]) -> memoryview:
    return memoryview(np.ascontiguousarray(arr).data).cast("B")
