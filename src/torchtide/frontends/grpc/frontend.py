"""GrpcFrontend: starts and stops the grpc.aio server that carries the inference service and
the standard `grpc.health.v1.Health` service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from torchtide.frontends.grpc.service import InferenceService
from torchtide.server import InferenceServer

# Chosen by benchmarks/grpc_machinery.py (figures in docs/grpc.md).
SERVER_OPTIONS: list[tuple[str, Any]] = [
    # Triton accepts tensors far beyond gRPC's 4 MB default; so do we (-1: no limit).
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # A second server on a taken port must fail to start, not share the port silently.
    ("grpc.so_reuseport", 0),
]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVICE_NAMES = ("", "inference.GRPCInferenceService")
WATCH_INTERVAL_S = 0.5


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1: SERVING exactly when the server is ready (the whole server, `""`, and
    `inference.GRPCInferenceService` mean the same thing); other names are NOT_FOUND."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        self.closed = asyncio.Event()

    def status(self, service: str) -> int | None:
        if service not in SERVICE_NAMES:
            return None
        ready = not self.closed.is_set() and self.server.is_ready()
        return int(SERVING if ready else NOT_SERVING)

    async def Check(self, request: Any, context: Any) -> Any:
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> None:
        """Sends the status, then each change (readiness is sampled; the core has no event)."""
        last: int | None = -1
        while True:
            status = self.status(request.service)
            status = SERVICE_UNKNOWN if status is None else status
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self.closed.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), WATCH_INTERVAL_S)


class GrpcFrontend:
    def __init__(
        self,
        server: InferenceServer,
        host: str,
        port: int,
        *,
        allow_client_shm: bool = False,
        options: Sequence[tuple[str, Any]] | None = None,
        grace_s: float | None = None,
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.options = list(SERVER_OPTIONS if options is None else options)
        self.grace_s = server.options.exit_timeout_s if grace_s is None else grace_s
        self.service = InferenceService(server, allow_client_shm=allow_client_shm)
        self.health = HealthService(server)
        self._grpc: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        srv = grpc.aio.server(options=self.options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, srv)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, srv)
        try:
            bound = srv.add_insecure_port(self.address)
        except RuntimeError as e:
            raise OSError(f"gRPC front-end could not listen on {self.address}: {e}") from None
        if not bound:
            raise OSError(f"gRPC front-end could not listen on {self.address}")
        self.port = bound
        await srv.start()
        self._grpc = srv

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs at once (UNAVAILABLE; readiness and health say not ready), let the
        ones in flight finish within `grace` seconds, then close the listener."""
        self.service.close()
        self.health.closed.set()
        srv, self._grpc = self._grpc, None
        if srv is not None:
            await srv.stop(self.grace_s if grace is None else grace)
