"""The few CUDA runtime calls that CUDA shared memory needs, through ctypes on the libcudart
that torch's CUDA build already loaded: open a client's IPC handle, copy device <-> host.

A client (`tritonclient.utils.cuda_shared_memory`) allocates device memory, exports it with
`cudaIpcGetMemHandle` and registers the 64-byte handle; the server maps it into its own address
space with `cudaIpcOpenMemHandle`. The core works on host arrays, so inputs are copied to the
host and outputs copied back to the device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from typing import Any

IPC_HANDLE_SIZE = 64
_LAZY_ENABLE_PEER_ACCESS = 1
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2


class CudaError(RuntimeError):
    pass


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * IPC_HANDLE_SIZE)]


class CudaRuntime:
    """Device memory opened from IPC handles. Methods raise CudaError naming the failed call."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        lib.cudaSetDevice.argtypes = [ctypes.c_int]
        lib.cudaIpcOpenMemHandle.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            _IpcHandle,
            ctypes.c_uint,
        ]
        lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
        lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def _check(self, code: int, call: str) -> None:
        if code != 0:
            what = self.lib.cudaGetErrorString(code)
            text = what.decode() if isinstance(what, bytes) else str(code)
            raise CudaError(f"{call} failed: {text}")

    def open(self, handle: bytes, device_id: int) -> int:
        if len(handle) != IPC_HANDLE_SIZE:
            raise CudaError(
                f"a CUDA IPC handle is {IPC_HANDLE_SIZE} bytes, this raw_handle is {len(handle)}"
            )
        self._check(self.lib.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        ptr = ctypes.c_void_p()
        h = _IpcHandle.from_buffer_copy(handle)
        code = self.lib.cudaIpcOpenMemHandle(ctypes.byref(ptr), h, _LAZY_ENABLE_PEER_ACCESS)
        self._check(code, "cudaIpcOpenMemHandle")
        return int(ptr.value or 0)

    def close(self, ptr: int) -> None:
        self._check(self.lib.cudaIpcCloseMemHandle(ctypes.c_void_p(ptr)), "cudaIpcCloseMemHandle")

    def to_host(self, ptr: int, nbytes: int) -> bytearray:
        out = bytearray(nbytes)
        if nbytes:
            host = (ctypes.c_char * nbytes).from_buffer(out)
            code = self.lib.cudaMemcpy(host, ctypes.c_void_p(ptr), nbytes, _DEVICE_TO_HOST)
            self._check(code, "cudaMemcpy (device to host)")
        return out

    def to_device(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        host = (ctypes.c_char * view.nbytes).from_buffer_copy(view)
        code = self.lib.cudaMemcpy(ctypes.c_void_p(ptr), host, view.nbytes, _HOST_TO_DEVICE)
        self._check(code, "cudaMemcpy (host to device)")


def _libcudart_paths() -> list[str]:
    """Where torch's CUDA build keeps the runtime: bundled in torch/lib, or the nvidia wheel."""
    import torch

    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    site = os.path.dirname(os.path.dirname(torch.__file__))
    found = sorted(glob.glob(os.path.join(torch_lib, "libcudart*.so*")))
    found += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    system = ctypes.util.find_library("cudart")
    return found + ([system] if system else [])


def load_cuda_runtime() -> CudaRuntime | None:
    """The CUDA runtime when torch sees a GPU; None otherwise (CUDA shared memory is refused)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        torch.cuda.init()  # type: ignore[no-untyped-call]  # loads libcudart
    except Exception:
        return None
    for path in _libcudart_paths():
        try:
            return CudaRuntime(ctypes.CDLL(path))
        except OSError:
            continue
    return None
