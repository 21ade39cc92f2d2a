"""The V2 gRPC transport: control calls on grpc.aio with the stubs shipped in tritonclient; infer
calls on a few connections shared by all workers, by default on our lean HTTP/2 client
(h2client.py), else on grpc.aio. ModelInferRequest messages are built and serialised once; the
infer call sends those bytes and drops the response bytes (no protobuf work per request)."""

from __future__ import annotations

import itertools
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
    def __init__(self, infer: Any) -> None:
        self._infer = infer  # a raw unary-unary callable: bytes in, bytes out

    async def infer(self, request: bytes) -> str | None:
        try:
            await self._infer(request)
        except grpc.aio.AioRpcError as e:
            return _rpc_error(e)
        return None

    def close(self) -> None:
        pass


class NativeGrpcWorker:
    def __init__(self, client: H2GrpcClient) -> None:
        self._client = client

    async def infer(self, request: bytes) -> str | None:
        try:
            status, message = await self._client.unary(INFER_METHOD, request)
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
        self._native: list[H2GrpcClient] = []
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

    async def new_worker(self) -> GrpcWorker | NativeGrpcWorker:
        if not self.native:
            return GrpcWorker(next(self._next))
        if len(self._native) < self._native_count:
            try:
                self._native.append(await H2GrpcClient.connect(self.host, self.port))
            except OSError as e:
                raise Unreachable(f"cannot reach the gRPC server at {self.target}: {e}") from None
        client = self._native[self._native_turn % len(self._native)]
        self._native_turn += 1
        return NativeGrpcWorker(client)

    async def close(self) -> None:
        for client in self._native:
            client.close()
        for ch in self._channels:
            await ch.close()
