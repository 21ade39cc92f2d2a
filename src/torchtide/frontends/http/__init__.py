"""The HTTP/REST front-end: KServe V2 with Triton's extensions, a drop-in for tritonserver's
HTTP port. See docs/http.md."""

from __future__ import annotations

import asyncio
import logging
import ssl

from torchtide.access import AccessPolicy
from torchtide.frontends.http.protocol import HttpConnection, Hub
from torchtide.frontends.http.routes import Api, error_response
from torchtide.frontends.limits import HttpLimits
from torchtide.server import InferenceServer

__all__ = ["HttpFrontend"]

log = logging.getLogger("torchtide.http")

DEFAULT_MAX_INPUT_SIZE = 64 * 2**20  # tritonserver's --http-max-input-size default


class HttpFrontend:
    def __init__(
        self,
        server: InferenceServer,
        host: str = "0.0.0.0",
        port: int = 8000,
        *,
        max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
        allow_client_shm: bool = False,
        drain_timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        access: AccessPolicy | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.max_input_size = max_input_size
        self.drain_timeout_s = drain_timeout_s
        self.limits = limits or HttpLimits()
        self.ssl_context = ssl_context  # HTTPS when set
        self.api = Api(
            server, allow_client_shm=allow_client_shm, max_input_size=max_input_size, access=access
        )
        self._hub: Hub | None = None
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        admit = self.api.admit if self.api.access is not None else None
        hub = self._hub = Hub(
            self.api.dispatch, error_response, self.max_input_size, self.limits, admit
        )
        self._listener = await loop.create_server(
            lambda: HttpConnection(hub),
            self.host,
            self.port,
            reuse_address=True,
            backlog=1024,
            ssl=self.ssl_context,
        )
        hub.start()
        self.port = int(self._listener.sockets[0].getsockname()[1])
        tls = " (TLS)" if self.ssl_context else ""
        log.info("Started HTTPService at %s:%d%s", self.host, self.port, tls)

    async def stop(self) -> None:
        """Stop accepting; close idle keep-alive connections at once; let requests in flight
        finish (new requests on a busy connection get 503); then close everything."""
        hub, listener = self._hub, self._listener
        if hub is None or listener is None:
            return
        hub.stopping = True
        listener.close()
        for conn in list(hub.connections):
            conn.shutdown()
        try:
            await asyncio.wait_for(hub.all_closed.wait(), self.drain_timeout_s)
        except TimeoutError:
            log.warning(
                "HTTP: %d connections still busy after %.0f s; closing them",
                len(hub.connections),
                self.drain_timeout_s,
            )
            for conn in list(hub.connections):
                if conn.transport is not None:
                    conn.transport.abort()
        await listener.wait_closed()
        hub.close()
        self._hub = self._listener = None
