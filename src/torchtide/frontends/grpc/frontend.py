"""GrpcFrontend: listens for gRPC (our HTTP/2 transport, connection.py) and routes each RPC
of the inference service and of the standard `grpc.health.v1.Health` service to its handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2 as pb

from torchtide.access import GRPC_METHOD_GROUPS, AccessPolicy, Refusal
from torchtide.frontends.grpc import http2 as h2
from torchtide.frontends.grpc.connection import (
    AbortError,
    Admit,
    GrpcConnection,
    Hub,
    Kind,
    Method,
)
from torchtide.frontends.grpc.service import InferenceService
from torchtide.frontends.limits import GrpcLimits
from torchtide.server import InferenceServer

log = logging.getLogger("torchtide.grpc")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVICE_NAMES = ("", "inference.GRPCInferenceService")
WATCH_INTERVAL_S = 0.5
CLOSE_WAIT_S = 1.0  # after the grace period: how long connections get to end their streams

# The one mapping from an access refusal to a gRPC status (Triton's restriction: UNAVAILABLE).
REFUSAL_CODES: dict[Refusal, grpc.StatusCode] = {
    Refusal.RESTRICTED: grpc.StatusCode.UNAVAILABLE,
    Refusal.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Refusal.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
}


class HealthService:
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


def method_table(file_descriptor: Any, service: str, servicer: Any) -> dict[str, Method]:
    """`/package.Service/Method` → handler, kinds and request types read from the protos."""
    table: dict[str, Method] = {}
    for m in file_descriptor.services_by_name[service].methods:
        if m.client_streaming:
            kind = Kind.BIDI
        elif m.server_streaming:
            kind = Kind.SERVER_STREAM
        else:
            kind = Kind.UNARY
        request_type = message_factory.GetMessageClass(m.input_type)
        path = f"/{file_descriptor.package}.{service}/{m.name}"
        table[path] = Method(kind, request_type, getattr(servicer, m.name))
    return table


def access_check(methods: dict[str, Method], policy: AccessPolicy) -> Admit:
    """The check a connection runs when a stream opens: the method's API group, then the
    policy over the request's metadata (the first value of each key, as grpc's lookup)."""
    groups = {path: GRPC_METHOD_GROUPS[path.rsplit("/", 1)[1]] for path in methods}

    def admit(path: str, headers: h2.Headers) -> tuple[grpc.StatusCode, str] | None:
        group = groups.get(path)
        if group is None:
            return None
        metadata = dict(reversed(headers))
        denial = policy.check(group, metadata)
        return None if denial is None else (REFUSAL_CODES[denial.reason], denial.message)

    return admit


class GrpcFrontend:
    def __init__(
        self,
        server: InferenceServer,
        host: str,
        port: int,
        *,
        allow_client_shm: bool = False,
        grace_s: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        access: AccessPolicy | None = None,
        limits: GrpcLimits | None = None,
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.ssl_context = ssl_context  # TLS (ALPN h2), or plaintext HTTP/2 when None
        self.access = access
        self.grace_s = server.options.exit_timeout_s if grace_s is None else grace_s
        self.limits = limits or GrpcLimits()
        self.service = InferenceService(server, allow_client_shm=allow_client_shm)
        self.health = HealthService(server)
        self._listener: asyncio.base_events.Server | None = None
        self._hub: Hub | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        methods = method_table(pb.DESCRIPTOR, "GRPCInferenceService", self.service)
        methods |= method_table(health_pb2.DESCRIPTOR, "Health", self.health)
        access = self.access
        hub = Hub(
            methods,
            self.limits,
            access_check(methods, access) if access and access.active else None,
        )
        hub.timestamps = self.server.tracer
        loop = asyncio.get_running_loop()
        try:
            # No SO_REUSEPORT: a second server on a taken port must fail, not share it.
            listener = await loop.create_server(
                lambda: GrpcConnection(hub),
                self.host.strip("[]") or None,
                self.port,
                family=socket.AF_UNSPEC,
                reuse_address=True,
                backlog=1024,
                ssl=self.ssl_context,
            )
        except OSError as e:
            raise OSError(f"gRPC front-end could not listen on {self.address}: {e}") from None
        self.port = listener.sockets[0].getsockname()[1]
        self._listener, self._hub = listener, hub
        hub.start()
        log.info("Started GRPCInferenceService at %s", self.address)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs at once (UNAVAILABLE; readiness and health say not ready), let the
        ones in flight finish within `grace` seconds, then close the listener and connections."""
        self.service.close()
        self.health.closed.set()
        listener, hub = self._listener, self._hub
        self._listener = self._hub = None
        if listener is None or hub is None:
            return
        hub.close()
        grace = self.grace_s if grace is None else grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hub.idle.wait(), grace)
        listener.close()
        for conn in list(hub.connections):
            conn.closing_when_idle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hub.idle.wait(), CLOSE_WAIT_S)
        for conn in list(hub.connections):
            conn.close(0, "server stopped")


__all__ = ["AbortError", "GrpcFrontend", "HealthService"]
