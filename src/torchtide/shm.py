"""Shared-memory regions registered by clients (Triton's system and CUDA shared-memory
extensions).

Lives in the core so HTTP and gRPC share one registry. System regions are POSIX shm objects
(/dev/shm/<key>) mapped with mmap; inputs are read as numpy views without a copy. CUDA regions
are device memory opened from the client's IPC handle (cuda_ipc.py), present only when the
server has a GPU; inputs are copied to the host, outputs back to the device. A request names a
region without saying its kind, so one lookup serves both.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchtide.cuda_ipc import CudaError, CudaRuntime
from torchtide.errors import ServerError, Status, invalid_arg, not_found, unsupported

SHM_DIR = "/dev/shm"


@dataclass(slots=True)
class Region:
    """A system region: a mapped /dev/shm object; reads are views of the mapping."""

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

    def read(self, start: int, nbytes: int) -> memoryview:
        start += self.offset
        return memoryview(self.mm)[start : start + nbytes]

    def write(self, start: int, data: bytes | memoryview) -> None:
        start += self.offset
        self.mm[start : start + len(data)] = data

    def close(self) -> None:
        # a live numpy view may still reference it; then GC closes it
        with contextlib.suppress(BufferError):
            self.mm.close()


@dataclass(slots=True)
class CudaRegion:
    """A CUDA region: device memory opened from the client's IPC handle; reads and writes copy
    between the device and the host."""

    name: str
    device_id: int
    byte_size: int
    ptr: int
    cuda: CudaRuntime

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}

    def read(self, start: int, nbytes: int) -> memoryview:
        try:
            return memoryview(self.cuda.to_host(self.ptr + start, nbytes))
        except CudaError as e:
            raise ServerError(Status.INTERNAL, f"CUDA shared memory: {e}") from None

    def write(self, start: int, data: bytes | memoryview) -> None:
        try:
            self.cuda.to_device(self.ptr + start, data)
        except CudaError as e:
            raise ServerError(Status.INTERNAL, f"CUDA shared memory: {e}") from None

    def close(self) -> None:
        with contextlib.suppress(CudaError):
            self.cuda.close(self.ptr)


def _unregister(regions: dict[str, Any], name: str) -> None:
    """Unregister one region, or all when name is empty; unknown names are not an error."""
    for n in [name] if name else list(regions):
        region = regions.pop(n, None)
        if region is not None:
            region.close()


def _status(regions: dict[str, Any], name: str, kind: str) -> list[dict[str, Any]]:
    if name:
        region = regions.get(name)
        if region is None:
            raise not_found(f"Unable to find {kind} shared memory region: '{name}'")
        return [region.status()]
    return [r.status() for r in regions.values()]


class SharedMemoryRegistry:
    def __init__(self, cuda: CudaRuntime | None = None) -> None:
        self.regions: dict[str, Region] = {}
        self.cuda = cuda  # None: no GPU, CUDA regions are refused
        self.cuda_regions: dict[str, CudaRegion] = {}

    def _check_new(self, name: str) -> None:
        if name in self.regions or name in self.cuda_regions:
            raise ServerError(
                Status.ALREADY_EXISTS, f"shared memory region '{name}' already in manager"
            )

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_new(name)
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
        _unregister(self.regions, name)

    def status(self, name: str = "") -> list[dict[str, Any]]:
        return _status(self.regions, name, "system")

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        if self.cuda is None:
            raise unsupported(
                f"failed to register CUDA shared memory region '{name}': CUDA shared memory "
                "is not supported (this server has no GPU); use system shared memory instead"
            )
        self._check_new(name)
        if device_id < 0 or byte_size <= 0:
            raise invalid_arg(
                f"failed to register CUDA shared memory region '{name}': invalid args"
            )
        try:
            ptr = self.cuda.open(raw_handle, device_id)
        except CudaError as e:
            raise invalid_arg(
                f"failed to register CUDA shared memory region '{name}': {e}"
            ) from None
        self.cuda_regions[name] = CudaRegion(name, device_id, byte_size, ptr, self.cuda)

    def unregister_cuda(self, name: str = "") -> None:
        _unregister(self.cuda_regions, name)

    def cuda_status(self, name: str = "") -> list[dict[str, Any]]:
        return _status(self.cuda_regions, name, "cuda")

    # ------------------------------------------------------------------ tensors in regions

    def _region(self, name: str, offset: int, byte_size: int) -> Region | CudaRegion:
        region: Region | CudaRegion | None = self.regions.get(name) or self.cuda_regions.get(name)
        if region is None:
            raise not_found(f"Unable to find shared memory region: '{name}'")
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise invalid_arg(f"Invalid offset + byte size for shared memory region: '{name}'")
        return region

    def view(self, name: str, offset: int, byte_size: int) -> memoryview:
        """The bytes of an input placed in shared memory: a view of a system region (no copy),
        a host copy of a CUDA region's bytes."""
        return self._region(name, offset, byte_size).read(offset, byte_size)

    def write(
        self, name: str, offset: int, byte_size: int, data: bytes | memoryview, output: str
    ) -> None:
        region = self._region(name, offset, byte_size)
        n = len(data)
        if n > byte_size:
            raise ServerError(
                Status.INTERNAL,
                f"shared memory size specified with the request for output '{output}' "
                f"({byte_size} bytes) should be at least {n} bytes to hold the results",
            )
        region.write(offset, data)

    def close(self) -> None:
        self.unregister()
        self.unregister_cuda()


def array_bytes(arr: np.ndarray[Any, Any]) -> memoryview:
    return memoryview(np.ascontiguousarray(arr).data).cast("B")
