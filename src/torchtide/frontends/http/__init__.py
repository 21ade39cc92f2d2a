"""The HTTP/REST front-end: KServe V2 with Triton's extensions, a drop-in for tritonserver's
HTTP port. See docs/http.md."""

from __future__ import annotations

import asyncio
import logging

from torchtide.frontends.http.protocol import HttpConnection, Hub
from torchtide.frontends.http.routes import Api, error_response
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
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.max_input_size = max_input_size
        self.drain_timeout_s = drain_timeout_s
        self.api = Api(server, allow_client_shm=allow_client_shm, max_input_size=max_input_size)
        self._hub: Hub | None = None
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        hub = self._hub = Hub(self.api.dispatch, error_response, self.max_input_size)
        hub.timestamps = self.server.tracer
        self._listener = await loop.create_server(
            lambda: HttpConnection(hub), self.host, self.port, reuse_address=True, backlog=1024
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])
        log.info("HTTP front-end listening on %s:%d", self.host, self.port)

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
        self._hub = self._listener = None
