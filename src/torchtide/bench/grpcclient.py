"""The V2 gRPC transport: control calls on grpc.aio with the stubs shipped in tritonclient; infer
calls on a few connections shared by all workers, by default on our lean HTTP/2 client
(h2client.py), else on grpc.aio. ModelInferRequest messages are built and serialised once; the
infer call sends those bytes and drops the response bytes (no protobuf work per request)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from torchtide.bench.h2client import H2Error, H2GrpcClient
from torchtide.bench.inputs import Tensor
from torchtide.bench.serverstats import ServerCounters
from torchtide.bench.transport import ShmPlacement, ShmRef, TransportError, Unreachable

_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


def _rpc_error(e: grpc.aio.AioRpcError) -> str:
    return f"{e.code().name}: {e.details()}"


INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


class GrpcWorker:
    def __init__(self, infer: Any, reachable: Callable[[], Awaitable[None]]) -> None:
        self._infer = infer  # a raw unary-unary callable: bytes in, bytes out
        self._reachable = reachable

    async def infer(self, request: bytes) -> str | None:
        try:
            await self._infer(request)
        except grpc.aio.AioRpcError as e:
            if e.code() is grpc.StatusCode.UNAVAILABLE:
                await self._reachable()  # UNAVAILABLE from a live server, or no server at all
            return _rpc_error(e)
        return None

    def close(self) -> None:
        pass


class NativeChannel:
    """One lean HTTP/2 connection that workers share. Once it is lost (closed, reset, GOAWAY),
    the next call reconnects, one attempt shared by every worker waiting; a refused reconnect
    raises Unreachable: the server is gone."""

    def __init__(self, host: str, port: int, target: str, timeout: float) -> None:
        self.host, self.port, self.target, self.timeout = host, port, target, timeout
        self.client: H2GrpcClient | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> H2GrpcClient:
        async with self._lock:
            client = self.client
            if client is not None and client.transport is not None and client.error is None:
                return client  # another worker reconnected meanwhile
            if client is not None:
                client.close()
                self.client = None
            try:
                client = await asyncio.wait_for(
                    H2GrpcClient.connect(self.host, self.port), self.timeout
                )
            except (OSError, TimeoutError) as e:
                raise Unreachable(
                    f"cannot reach the gRPC server at {self.target}: {type(e).__name__}: {e}"
                ) from None
            self.client = client
            return client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class NativeGrpcWorker:
    def __init__(self, channel: NativeChannel) -> None:
        self._channel = channel

    async def infer(self, request: bytes) -> str | None:
        client = self._channel.client
        if client is None or client.transport is None or client.error is not None:
            client = await self._channel.connect()
        try:
            status, message = await client.unary(INFER_METHOD, request)
        except H2Error as e:
            return f"UNAVAILABLE: {e}"
        if status:
            return f"{_CODE_NAMES.get(status, 'UNKNOWN')}: {message}"
        return None

    def close(self) -> None:
        pass


def _shm_params(params: Any, ref: ShmRef) -> None:
    params["shared_memory_region"].string_param = ref.region
    params["shared_memory_byte_size"].int64_param = ref.byte_size
    params["shared_memory_offset"].int64_param = ref.offset


class GrpcTransport:
    protocol = "grpc"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        channels: int = 1,
        timeout: float = 10.0,
        native: bool = True,
    ) -> None:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.target = target
        self.timeout = timeout
        self.host, self.port, self.native = host, port, native
        self._native: list[NativeChannel] = []
        self._native_count = max(1, channels)
        self._native_turn = 0
        self._channels = [
            grpc.aio.insecure_channel(target, options=_OPTIONS) for _ in range(max(1, channels))
        ]
        self._control = pb_grpc.GRPCInferenceServiceStub(self._channels[0])
        self._next = itertools.cycle([ch.unary_unary(INFER_METHOD) for ch in self._channels])

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._control, method)(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unreachable(
                    f"cannot reach the gRPC server at {self.target}: {_rpc_error(e)}"
                ) from None
            raise TransportError(f"{method}: {_rpc_error(e)}") from None

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        r = await self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version))

        def specs(ts: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]

        return {
            "name": r.name,
            "versions": list(r.versions),
            "platform": r.platform,
            "inputs": specs(r.inputs),
            "outputs": specs(r.outputs),
        }

    async def max_batch_size(self, model: str, version: str) -> int | None:
        try:
            r = await self._call("ModelConfig", pb.ModelConfigRequest(name=model, version=version))
        except TransportError:
            return None
        return int(r.config.max_batch_size)

    async def statistics(self, model: str, version: str) -> ServerCounters | None:
        try:
            r = await self._call(
                "ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version)
            )
        except TransportError:
            return None
        return ServerCounters.from_proto(r, version)

    async def register_shm(self, name: str, key: str, byte_size: int) -> None:
        await self._call(
            "SystemSharedMemoryRegister",
            pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=0, byte_size=byte_size),
        )

    async def unregister_shm(self, name: str) -> None:
        await self._call(
            "SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name)
        )

    def prepare(
        self, model: str, version: str, tensors: list[Tensor], shm: ShmPlacement | None
    ) -> bytes:
        req = pb.ModelInferRequest(model_name=model, model_version=version)
        for i, t in enumerate(tensors):
            inp = req.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            if shm is not None:
                _shm_params(inp.parameters, shm.inputs[i])
            else:
                req.raw_input_contents.append(t.raw)
        if shm is not None:
            for o in shm.outputs:
                _shm_params(req.outputs.add(name=o.name).parameters, o)
        data: bytes = req.SerializeToString()
        return data

    async def reachable(self) -> None:
        """Raise Unreachable unless something accepts a connection at the server's address."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
        except (OSError, TimeoutError) as e:
            raise Unreachable(
                f"cannot reach the gRPC server at {self.target}: {type(e).__name__}: {e}"
            ) from None
        writer.close()

    async def new_worker(self) -> GrpcWorker | NativeGrpcWorker:
        if not self.native:
            return GrpcWorker(next(self._next), self.reachable)
        if len(self._native) < self._native_count:
            channel = NativeChannel(self.host, self.port, self.target, self.timeout)
            await channel.connect()
            self._native.append(channel)
        channel = self._native[self._native_turn % len(self._native)]
        self._native_turn += 1
        return NativeGrpcWorker(channel)

    async def close(self) -> None:
        for channel in self._native:
            channel.close()
        for ch in self._channels:
            await ch.close()
