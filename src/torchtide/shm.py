"""Shared-memory regions registered by clients (Triton's system and CUDA shared-memory
extensions).

Lives in the core so HTTP and gRPC share one registry. System regions are POSIX shm objects
(/dev/shm/<key>) mapped with mmap; inputs are read as numpy views without a copy. A key names
one object, never a path: it is checked as shm_open checks a name, opened relative to /dev/shm
without following a link, and mapped only if it is a regular file. CUDA regions
are device memory opened from the client's IPC handle (cuda_ipc.py), present only when the
server has a GPU; inputs are copied to the host, outputs back to the device. A request names a
region without saying its kind, so one lookup serves both.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchtide.cuda_ipc import CudaError, CudaRuntime
from torchtide.errors import ServerError, Status, invalid_arg, not_found, unsupported

SHM_DIR = "/dev/shm"
MAX_SHM_NAME_BYTES = 255  # NAME_MAX: an object is one entry of SHM_DIR


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
        fd = _open_object(name, key, shm_object_name(name, key))
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


def shm_object_name(name: str, key: str) -> str:
    """The shm object a key names, read as shm_open reads one name: at most one leading '/',
    no other '/', not '.' or '..', no NUL, at most NAME_MAX bytes. INVALID_ARG otherwise."""
    obj = key[1:] if key.startswith("/") else key
    reason = ""
    if obj in ("", ".", ".."):
        reason = "it names no shared memory object"
    elif "/" in obj:
        reason = "a key is one object name: '/' only as its first character"
    elif "\x00" in obj:
        reason = "it contains a NUL character"
    elif len(obj.encode()) > MAX_SHM_NAME_BYTES:
        reason = f"it is longer than {MAX_SHM_NAME_BYTES} bytes"
    if reason:
        raise _bad_key(name, key, reason)
    return obj


def _bad_key(name: str, key: str, reason: str) -> ServerError:
    shown = key if len(key) <= 80 else key[:80] + "..."
    return invalid_arg(
        f"cannot register shared memory region '{name}' - invalid shm key '{shown}': {reason}"
    )


def _open_object(name: str, key: str, obj: str) -> int:
    """Open the object read-write inside SHM_DIR: never through a symbolic link, and only a
    regular file (a folder, FIFO or device is refused before it is opened)."""
    folder = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            mode = os.stat(obj, dir_fd=folder, follow_symlinks=False).st_mode
        except OSError:  # Triton's answer for a key that names nothing
            raise ServerError(
                Status.INTERNAL, f"Unable to open shared memory region: '{key}'"
            ) from None
        _check_kind(name, key, mode)
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(obj, flags, dir_fd=folder)
        except OSError as e:
            if e.errno == errno.ELOOP:  # replaced by a link since the check
                raise _bad_key(name, key, "it is a symbolic link") from None
            raise ServerError(
                Status.INTERNAL, f"Unable to open shared memory region: '{key}'"
            ) from None
    finally:
        os.close(folder)
    try:
        _check_kind(name, key, os.fstat(fd).st_mode)  # what was opened, not what was looked at
    except ServerError:
        os.close(fd)
        raise
    return fd


def _check_kind(name: str, key: str, mode: int) -> None:
    if stat.S_ISLNK(mode):
        raise _bad_key(name, key, "it is a symbolic link")
    if not stat.S_ISREG(mode):
        raise _bad_key(name, key, "it is not a regular file")


def array_bytes(arr: np.ndarray[Any, Any]) -> memoryview:
    return memoryview(np.ascontiguousarray(arr).data).cast("B")
