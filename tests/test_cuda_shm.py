"""CUDA shared memory through the real code paths (cuda_ipc.CudaRuntime, the registry, both
front-ends, tritonclient) over a stand-in libcudart whose "device memory" is host buffers: an IPC
handle names a buffer, cudaMemcpy is memmove. What this cannot check is the real libcudart's
ABI; no GPU is lent to this project's CI. Without a GPU the server refuses CUDA regions clearly
(test_http / test_grpc)."""

from __future__ import annotations

import base64
import ctypes
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import start_app
from tests.models import write_add_sub
from torchtide.app import AppThread
from torchtide.cuda_ipc import CudaRuntime
from torchtide.errors import ServerError, Status
from torchtide.shm import SharedMemoryRegistry


class _Fn:
    """A C function stand-in that, like ctypes' own, accepts argtypes/restype."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.argtypes: Any = None
        self.restype: Any = None

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class FakeCudart:
    """libcudart's calls over host memory, with the same argument conventions."""

    INVALID_VALUE, INVALID_DEVICE = 1, 101

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.buffers: dict[bytes, Any] = {}
        self.opened: set[int] = set()
        self.cudaGetErrorString = _Fn(
            lambda code: {1: b"invalid argument", 101: b"invalid device ordinal"}[code]
        )
        self.cudaSetDevice = _Fn(lambda d: 0 if 0 <= d < self.devices else self.INVALID_DEVICE)
        self.cudaIpcOpenMemHandle = _Fn(self._open)
        self.cudaIpcCloseMemHandle = _Fn(self._close)
        self.cudaMemcpy = _Fn(self._memcpy)

    def allocate(self, nbytes: int) -> tuple[bytes, Any]:
        handle = os.urandom(64)
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[handle] = buf
        return handle, buf

    def _open(self, ptr_ref: Any, handle: Any, flags: int) -> int:
        buf = self.buffers.get(bytes(handle))
        if buf is None:
            return self.INVALID_VALUE
        ptr_ref._obj.value = ctypes.addressof(buf)
        self.opened.add(ctypes.addressof(buf))
        return 0

    def _close(self, ptr: Any) -> int:
        self.opened.discard(ptr.value)
        return 0

    def _memcpy(self, dst: Any, src: Any, n: int, kind: int) -> int:
        ctypes.memmove(dst, src, n)
        return 0


def test_registry_reads_and_writes_device_regions() -> None:
    cudart = FakeCudart()
    reg = SharedMemoryRegistry(CudaRuntime(cudart))
    handle, buf = cudart.allocate(128)
    ctypes.memmove(buf, bytes(range(128)), 128)
    reg.register_cuda("g", handle, 0, 128)
    assert reg.cuda_status() == [{"name": "g", "device_id": 0, "byte_size": 128}]
    assert bytes(reg.view("g", 16, 8)) == bytes(range(16, 24))
    reg.write("g", 100, 4, b"\xff\xfe\xfd\xfc", "OUT")
    assert buf.raw[100:104] == b"\xff\xfe\xfd\xfc"

    with pytest.raises(ServerError) as ei:
        reg.register_cuda("g", handle, 0, 128)
    assert ei.value.status == Status.ALREADY_EXISTS
    with pytest.raises(ServerError, match="Invalid offset"):
        reg.view("g", 120, 16)
    with pytest.raises(ServerError, match="should be at least 8 bytes"):
        reg.write("g", 0, 4, b"12345678", "OUT")
    with pytest.raises(ServerError, match="64 bytes, this raw_handle is 3") as ei:
        reg.register_cuda("h", b"abc", 0, 16)
    assert ei.value.status == Status.INVALID_ARG
    with pytest.raises(ServerError, match="invalid device ordinal"):
        reg.register_cuda("h", handle, 3, 16)
    with pytest.raises(ServerError, match="cudaIpcOpenMemHandle failed: invalid argument"):
        reg.register_cuda("h", os.urandom(64), 0, 16)

    assert cudart.opened == {ctypes.addressof(buf)}
    reg.unregister_cuda()
    assert reg.cuda_status() == [] and not cudart.opened


def test_without_a_gpu_registration_is_refused() -> None:
    reg = SharedMemoryRegistry(None)
    with pytest.raises(ServerError, match="this server has no GPU") as ei:
        reg.register_cuda("g", b"\0" * 64, 0, 64)
    assert ei.value.status == Status.UNSUPPORTED


@pytest.fixture(scope="module")
def gpu_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppThread, FakeCudart]]:
    repo: Path = tmp_path_factory.mktemp("cuda-repo")
    write_add_sub(repo)
    app = start_app(repo, allow_client_shm=True)
    cudart = FakeCudart()
    app.app.server.shm.cuda = CudaRuntime(cudart)  # as the server sets it when torch sees a GPU
    yield app, cudart
    app.stop()


A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


def _regions(cudart: FakeCudart) -> tuple[bytes, Any, bytes, Any]:
    h_in, b_in = cudart.allocate(128)
    ctypes.memmove(b_in, A.tobytes() + B.tobytes(), 128)
    h_out, b_out = cudart.allocate(128)
    return h_in, b_in, h_out, b_out


def _infer_through_regions(module: Any, client: Any, b_out: Any) -> None:
    """add_sub with both inputs in region "in" and both outputs in region "out"."""
    inputs = [module.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in range(2)]
    outputs = [module.InferRequestedOutput(f"OUTPUT{i}") for i in range(2)]
    for i in range(2):
        inputs[i].set_shared_memory("in", 64, offset=64 * i)
        outputs[i].set_shared_memory("out", 64, offset=64 * i)
    client.infer("add_sub", inputs, outputs=outputs)
    raw = np.frombuffer(b_out.raw, np.int32).reshape(2, 1, 16)
    np.testing.assert_array_equal(raw[0], A + B)
    np.testing.assert_array_equal(raw[1], A - B)


def test_http_inputs_and_outputs_in_cuda_regions(gpu_app: tuple[AppThread, FakeCudart]) -> None:
    app, cudart = gpu_app
    c = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
    assert "cuda_shared_memory" in c.get_server_metadata()["extensions"]
    h_in, _, h_out, b_out = _regions(cudart)
    c.register_cuda_shared_memory("in", base64.b64encode(h_in).decode(), 0, 128)
    c.register_cuda_shared_memory("out", base64.b64encode(h_out).decode(), 0, 128)
    try:
        status = {r["name"]: r for r in c.get_cuda_shared_memory_status()}
        assert status["in"] == {"name": "in", "device_id": 0, "byte_size": 128}
        _infer_through_regions(httpclient, c, b_out)
        with pytest.raises(InferenceServerException, match="cudaIpcOpenMemHandle failed"):
            c.register_cuda_shared_memory("bad", base64.b64encode(os.urandom(64)).decode(), 0, 8)
    finally:
        c.unregister_cuda_shared_memory()
    assert c.get_cuda_shared_memory_status() == [] and not cudart.opened


def test_grpc_inputs_and_outputs_in_cuda_regions(gpu_app: tuple[AppThread, FakeCudart]) -> None:
    app, cudart = gpu_app
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{app.app.port('grpc')}")
    h_in, _, h_out, b_out = _regions(cudart)
    c.register_cuda_shared_memory("in", base64.b64encode(h_in), 0, 128)
    c.register_cuda_shared_memory("out", base64.b64encode(h_out), 0, 128)
    try:
        status = c.get_cuda_shared_memory_status().regions
        assert status["out"].byte_size == 128 and status["out"].device_id == 0
        _infer_through_regions(grpcclient, c, b_out)
    finally:
        c.unregister_cuda_shared_memory()
        c.close()
    assert not cudart.opened
