"""Raw HTTP helpers for the HTTP front-end tests (curl-style requests, malformed bodies)."""

from __future__ import annotations

import http.client
import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchtide.errors import Status
from torchtide.frontends.http.errors import HTTP_STATUS


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return str(self.json()["error"])


def http_code(status_name: str) -> int:
    return HTTP_STATUS[Status[status_name]]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    try:
        c.request(method, path, body=data, headers=headers or {})
        r = c.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        if own:
            c.close()


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    """A JSON header followed by binary sections, and the headers that announce it."""
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def split_binary(reply: Reply) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Parse a binary-extension response into its JSON header and each output's bytes."""
    n = int(reply.headers.get("inference-header-content-length", len(reply.body)))
    doc = json.loads(reply.body[:n])
    pos, blobs = n, {}
    for out in doc["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[out["name"]] = reply.body[pos : pos + size]
            pos += size
    assert pos == len(reply.body)
    return doc, blobs


def serialize_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def raw_exchange(port: int, data: bytes, *, read_until_close: bool = True) -> bytes:
    """Send bytes on a fresh socket and read what comes back until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while read_until_close:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def add_sub_inputs(rows: int = 1) -> dict[str, np.ndarray[Any, Any]]:
    a = np.arange(16 * rows, dtype=np.int32).reshape(rows, 16)
    return {"INPUT0": a, "INPUT1": np.ones_like(a)}
