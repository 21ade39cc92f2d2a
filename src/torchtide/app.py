"""Runs the core and its front-ends (HTTP, gRPC, metrics) on one event loop."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import uvloop
from prometheus_client import CollectorRegistry

from torchtide.access import AccessPolicy, ApiGroup, Restrictions, TokenFile, grpc_policy
from torchtide.frontends.limits import GrpcLimits, HttpLimits
from torchtide.server import InferenceServer, ServerOptions
from torchtide.tls import TlsOptions, server_context


class Frontend(Protocol):
    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class AppOptions:
    server: ServerOptions
    http_port: int | None = 8000  # None: disabled; 0: any free port
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    http_address: str = "0.0.0.0"
    grpc_address: str = "0.0.0.0"
    metrics_address: str = "0.0.0.0"
    http_max_input_size: int = 64 * 2**20
    http_limits: HttpLimits = field(default_factory=HttpLimits)  # timeouts, connections
    grpc_limits: GrpcLimits = field(default_factory=GrpcLimits)  # message size, HTTP/2 floods
    allow_client_shm: bool = False
    # Security (README "Security"): TLS per listener, Triton's restricted API groups per
    # protocol, and bearer tokens (one file for both protocols) for every group not left open.
    http_tls: TlsOptions | None = None
    grpc_tls: TlsOptions | None = None
    http_restricted: Restrictions = field(default_factory=dict)
    grpc_restricted: Restrictions = field(default_factory=dict)
    auth_token_file: Path | None = None
    auth_open_apis: frozenset[ApiGroup] = frozenset({ApiGroup.HEALTH})
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Security:
    http_ssl: ssl.SSLContext | None
    grpc_ssl: ssl.SSLContext | None
    http_access: AccessPolicy
    grpc_access: AccessPolicy


def _security(o: AppOptions) -> _Security:
    """Every certificate, key and token file read and checked before any listener opens
    (ValueError naming the problem)."""
    tokens = TokenFile(o.auth_token_file) if o.auth_token_file is not None else None
    return _Security(
        server_context(o.http_tls) if o.http_tls else None,
        server_context(o.grpc_tls, alpn=["h2"]) if o.grpc_tls else None,
        AccessPolicy(o.http_restricted, tokens, o.auth_open_apis),
        grpc_policy(o.grpc_restricted, tokens, o.auth_open_apis),
    )


class ListenError(OSError):
    """A front-end could not open its listener: the port is taken, the address is not this
    machine's, or the port needs privileges. `errno` is the socket error's."""

    def __init__(self, frontend: str, host: str, port: int, cause: OSError) -> None:
        err = _socket_errno(cause)
        self.frontend, self.host, self.port = frontend, host, port
        self.reason = os.strerror(err).lower() if err else str(cause)
        super().__init__(err, f"{frontend} could not listen on {host}:{port}: {self.reason}")


def _socket_errno(e: BaseException | None) -> int | None:
    # A front-end may re-raise the socket's error with its own message; the errno is below it.
    while e is not None:
        if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno > 0:
            return e.errno
        e = e.__cause__ or e.__context__
    return None


class App:
    def __init__(self, options: AppOptions) -> None:
        self.options = options
        self.server = InferenceServer(options.server)
        # This app's metrics page serves this registry; more collectors may be registered in it.
        self.metrics_registry = CollectorRegistry()
        self.frontends: dict[str, Frontend] = {}

    async def start(self) -> None:
        o = self.options
        sec = _security(o)
        if o.http_port is not None:
            from torchtide.frontends.http import HttpFrontend

            self.frontends["http"] = HttpFrontend(
                self.server,
                o.http_address,
                o.http_port,
                max_input_size=o.http_max_input_size,
                allow_client_shm=o.allow_client_shm,
                ssl_context=sec.http_ssl,
                access=sec.http_access,
                limits=o.http_limits,
            )
        if o.grpc_port is not None:
            from torchtide.frontends.grpc import GrpcFrontend

            self.frontends["grpc"] = GrpcFrontend(
                self.server,
                o.grpc_address,
                o.grpc_port,
                allow_client_shm=o.allow_client_shm,
                ssl_context=sec.grpc_ssl,
                access=sec.grpc_access,
                limits=o.grpc_limits,
            )
        if o.metrics_port is not None:
            from torchtide.frontends.metrics import MetricsFrontend

            self.frontends["metrics"] = MetricsFrontend(
                self.server, o.metrics_address, o.metrics_port, self.metrics_registry
            )
        # Listeners open before models load, so liveness answers during a long start-up load.
        started: list[Frontend] = []
        for name, fe in self.frontends.items():
            try:
                await fe.start()
            except OSError as e:
                for other in reversed(started):
                    await other.stop()
                host = getattr(fe, "host", "")
                raise ListenError(name, host, fe.port, e) from e
            started.append(fe)
        await self.server.start()

    async def stop(self, timeout: float | None = None) -> bool:
        """Refuse new work on every protocol at once, drain, then close the listeners."""
        drained = await self.server.stop(timeout)
        for fe in self.frontends.values():
            await fe.stop()
        return drained

    def port(self, name: str) -> int:
        return self.frontends[name].port


class AppThread:
    """An App on its own event loop in a background thread (tests, notebooks). The loop is
    uvloop's, as under `torchtide serve`, unless `loop_factory` says otherwise."""

    def __init__(
        self,
        options: AppOptions,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        self.app = App(options)
        self.loop = (loop_factory or uvloop.new_event_loop)()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="torchtide-app", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.app.start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self, timeout: float = 120) -> AppThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("torchtide did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def call(self, coro: Any, timeout: float | None = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 30) -> bool:
        drained: bool = self.call(self.app.stop(timeout), timeout + 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()
        return drained
