"""A minimal HTTP/1.1 keep-alive client on asyncio protocols, and the V2 HTTP transport.

Requests are serialised once (request line, headers and body in one `bytes`) and written as
they are; the response parser reads the status line, Content-Length / chunked framing and the
Connection header, nothing else. One connection carries one request at a time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import orjson

from torchtide.bench.inputs import Tensor
from torchtide.bench.serverstats import ServerCounters
from torchtide.bench.transport import ShmPlacement, TransportError, Unreachable


@dataclass(slots=True)
class Response:
    status: int
    body: bytes


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.must_close = False
        self._hlen = -1  # end of the current response's headers, -1 until seen
        self._status = 0
        self._clen = -1  # Content-Length; -1 chunked or until close
        self._chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.waiter
        if w is None or w.done():
            return
        if self._hlen >= 0 and self._clen < 0 and not self._chunked:  # body until close
            w.set_result(Response(self._status, bytes(self.buf[self._hlen :])))
            return
        w.set_exception(
            ConnectionError(f"connection closed by the server{f': {exc}' if exc else ''}")
        )

    def _parse(self) -> None:
        buf = self.buf
        if self._hlen < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            try:
                self._status = int(head[9:12])
            except ValueError:
                self._fail(f"bad HTTP status line {bytes(buf[:40])!r}")
                return
            self._hlen = end + 4
            self._clen = -1
            self._chunked = False
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 17)
                self._clen = int(head[i + 17 : j if j >= 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in head and b"chunked" in head:
                self._chunked = True
            elif self._status in (204, 304) or 100 <= self._status < 200:
                self._clen = 0
            self.must_close = b"\r\nconnection: close" in head
        start = self._hlen
        if self._clen >= 0:
            end = start + self._clen
            if len(buf) < end:
                return
            body = bytes(buf[start:end])
        elif self._chunked:
            parsed = _dechunk(buf, start)
            if parsed is None:
                return
            body, end = parsed
        else:
            return  # read until the server closes
        del buf[:end]
        self._hlen = -1
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(Response(self._status, body))

    def _fail(self, message: str) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(ConnectionError(message))
        if self.transport is not None:
            self.transport.close()


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", eol)
            if buf[eol : eol + 4] == b"\r\n\r\n":
                return b"".join(parts), eol + 4
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        parts.append(bytes(buf[start : start + size]))
        pos = start + size + 2


class HttpConnection:
    """One keep-alive connection; reconnects after the server closes it. A reconnect that fails
    raises Unreachable: the server is gone (a request that failed on a live connection is only
    that request's error)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._proto: _Protocol | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(_Protocol, self.host, self.port), self.timeout
            )
        except (OSError, TimeoutError) as e:
            authority = (
                f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            )
            raise Unreachable(
                f"cannot reach the HTTP server at {authority}: {type(e).__name__}: {e}"
            ) from None
        self._proto = proto

    async def send(self, data: bytes) -> Response:
        """Write a serialised request and wait for its response."""
        proto = self._proto
        if proto is None or proto.closed:
            await self.connect()
            proto = self._proto
            assert proto is not None and proto.transport is not None
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        proto.waiter = fut
        proto.transport.write(data)  # type: ignore[union-attr]
        try:
            return await fut
        except BaseException:
            self.close()  # a broken or cancelled exchange leaves the stream out of step
            raise
        finally:
            proto.waiter = None
            if proto.must_close:
                self.close()

    async def infer(self, request: bytes) -> str | None:
        try:
            resp = await self.send(request)
        except (OSError, ConnectionError) as e:
            return f"{type(e).__name__}: {e}"
        if resp.status == 200:
            return None
        return f"HTTP {resp.status}: {error_text(resp.body)}"

    def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()


def error_text(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", "replace")


def build_request(
    method: str, path: str, host: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def model_path(model: str, version: str) -> str:
    p = f"/v2/models/{quote(model, safe='')}"
    return f"{p}/versions/{quote(version, safe='')}" if version else p


def infer_body(
    tensors: list[Tensor], shm: ShmPlacement | None, *, binary: bool
) -> tuple[bytes, dict[str, str]]:
    """The body of a V2 infer request and its extra headers."""
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    doc: dict[str, Any] = {"inputs": inputs}
    for i, t in enumerate(tensors):
        entry: dict[str, Any] = {"name": t.name, "shape": t.shape, "datatype": t.datatype}
        if shm is not None:
            ref = shm.inputs[i]
            entry["parameters"] = {
                "shared_memory_region": ref.region,
                "shared_memory_offset": ref.offset,
                "shared_memory_byte_size": ref.byte_size,
            }
        elif binary:
            entry["parameters"] = {"binary_data_size": len(t.raw)}
            blobs.append(t.raw)
        else:
            entry["data"] = t.json_data()
        inputs.append(entry)
    if shm is not None:
        doc["outputs"] = [
            {
                "name": o.name,
                "parameters": {
                    "shared_memory_region": o.region,
                    "shared_memory_offset": o.offset,
                    "shared_memory_byte_size": o.byte_size,
                },
            }
            for o in shm.outputs
        ]
    elif binary:
        doc["parameters"] = {"binary_data_output": True}
    header = orjson.dumps(doc)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


class HttpTransport:
    protocol = "http"

    def __init__(self, host: str, port: int, *, binary: bool = True, timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.binary = binary
        self.timeout = timeout
        self._control = HttpConnection(host, port, timeout)
        self._workers: list[HttpConnection] = []

    async def _call(self, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
        body = b"" if doc is None else orjson.dumps(doc)
        headers = {"Content-Type": "application/json"} if doc is not None else None
        data = build_request(method, path, self.authority, body, headers)
        for attempt in (1, 2):  # a server may close an idle keep-alive connection: retry once
            try:
                resp = await asyncio.wait_for(self._control.send(data), self.timeout)
                break
            except (OSError, TimeoutError) as e:
                retry = attempt == 1 and not isinstance(e, ConnectionRefusedError | TimeoutError)
                if not retry:
                    raise Unreachable(
                        f"cannot reach the HTTP server at {self.authority}: {type(e).__name__}: {e}"
                    ) from None
        try:
            parsed = orjson.loads(resp.body) if resp.body else None
        except orjson.JSONDecodeError:
            parsed = None
        return resp.status, parsed

    async def _ok(self, method: str, path: str, doc: Any = None) -> Any:
        status, parsed = await self._call(method, path, doc)
        if status != 200:
            msg = parsed.get("error") if isinstance(parsed, dict) else None
            raise TransportError(f"{method} {path}: HTTP {status}{f': {msg}' if msg else ''}")
        return parsed

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        doc = await self._ok("GET", model_path(model, version))
        if not isinstance(doc, dict):
            raise TransportError(f"model metadata of '{model}' is not a JSON object")
        return doc

    async def max_batch_size(self, model: str, version: str) -> int | None:
        status, doc = await self._call("GET", model_path(model, version) + "/config")
        if status != 200 or not isinstance(doc, dict):
            return None
        config = doc.get("config", doc)  # some servers wrap the config
        return int(config.get("max_batch_size", 0))

    async def statistics(self, model: str, version: str) -> ServerCounters | None:
        status, doc = await self._call("GET", model_path(model, version) + "/stats")
        if status != 200 or not isinstance(doc, dict):
            return None
        return ServerCounters.from_json(doc, version)

    async def register_shm(self, name: str, key: str, byte_size: int) -> None:
        path = f"/v2/systemsharedmemory/region/{quote(name, safe='')}/register"
        await self._ok("POST", path, {"key": key, "offset": 0, "byte_size": byte_size})

    async def unregister_shm(self, name: str) -> None:
        await self._ok("POST", f"/v2/systemsharedmemory/region/{quote(name, safe='')}/unregister")

    def prepare(
        self, model: str, version: str, tensors: list[Tensor], shm: ShmPlacement | None
    ) -> bytes:
        body, headers = infer_body(tensors, shm, binary=self.binary)
        return build_request(
            "POST", model_path(model, version) + "/infer", self.authority, body, headers
        )

    async def new_worker(self) -> HttpConnection:
        conn = HttpConnection(self.host, self.port, self.timeout)
        await conn.connect()
        self._workers.append(conn)
        return conn

    async def close(self) -> None:
        for c in self._workers:
            c.close()
        self._workers.clear()
        self._control.close()
