"""The metrics page: `GET /metrics` in the Prometheus text format, on its own port.

A small HTTP/1.1 server on asyncio streams (request line and headers, no body; keep-alive, as
Prometheus scrapes). The page is rendered on the event loop: reading the counters is cheap and
does no I/O, and the loop is the only writer of those counters, so a scrape is one consistent
snapshot, the same one the statistics extension would report at that instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from torchtide.metrics import CONTENT_TYPE, ServerCollector, exposition

if TYPE_CHECKING:
    from torchtide.server import InferenceServer

log = logging.getLogger("torchtide.metrics")

IDLE_TIMEOUT_S = 120.0  # a kept-alive connection with no request for this long is closed
MAX_HEAD = 16 * 1024  # request line + headers
MAX_BODY = 64 * 1024  # a body (none expected) larger than this closes the connection


class MetricsFrontend:
    """Serves `registry` (a new one when None) with this server's collector registered in it."""

    def __init__(
        self,
        server: InferenceServer,
        host: str,
        port: int,
        registry: CollectorRegistry | None = None,
        *,
        cpu: bool = True,
        gpu: bool = True,
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.registry = registry if registry is not None else CollectorRegistry()
        self.collector = ServerCollector(server, cpu=cpu, gpu=gpu)
        self._listener: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.registry.register(self.collector)
        try:
            self._listener = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_HEAD
            )
        except BaseException:
            self.registry.unregister(self.collector)
            raise
        self.port = int(self._listener.sockets[0].getsockname()[1])
        log.info("Started Metrics Service at %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._listener is None:
            return
        self._listener.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._listener.wait_closed()
        self._listener = None
        self.registry.unregister(self.collector)
        self.collector.close()

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (
            ConnectionError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a client that went away, idled out or sent an oversized head: just close
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection should close."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise
            return False  # the client closed between requests
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._write(writer, 400, b"bad request\n", keep=False)
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY or "transfer-encoding" in headers:
            self._write(writer, 400, b"request body not accepted\n", keep=False)
            return False
        if int(length):
            await reader.readexactly(int(length))
        path = target.split("?", 1)[0]
        if path != "/metrics":
            self._write(writer, 404, b"not found\n", keep=keep)
        elif method not in ("GET", "HEAD"):
            self._write(writer, 405, b"method not allowed\n", keep=keep, allow="GET, HEAD")
        else:
            try:
                body = exposition(self.registry)
            except Exception:
                log.exception("collecting metrics failed")
                self._write(writer, 500, b"collecting metrics failed\n", keep=keep)
            else:
                self._write(writer, 200, body, keep=keep, head_only=method == "HEAD")
        await writer.drain()
        return keep

    @staticmethod
    def _write(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        keep: bool,
        head_only: bool = False,
        allow: str = "",
    ) -> None:
        reason = _REASONS[status]
        ctype = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + (f"Allow: {allow}\r\n" if allow else "")
            + ("" if keep else "Connection: close\r\n")
            + "\r\n"
        )
        writer.write(head.encode("latin-1") if head_only else head.encode("latin-1") + body)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}
