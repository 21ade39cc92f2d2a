"""The core's InferResponse -> a KServe V2 response body (JSON, or JSON + binary sections)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from torchtide.frontends.http.decode import LENGTH_PREFIX, OutputPlan, ShmAccess
from torchtide.types import InferResponse, InferTensor

_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class Encoded:
    """An encoded response body: the JSON header, then the binary sections (maybe none)."""

    header: bytes
    blobs: list[bytes | memoryview]


def encode_response(resp: InferResponse, plan: OutputPlan, shm: ShmAccess) -> Encoded:
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for t in resp.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.data.shape}
        target = plan.shm.get(t.name)
        if target is not None:
            region, offset, nbytes = target
            shm.check().write(region, offset, nbytes, _to_bytes(t), t.name)
        elif plan.is_binary(t.name):
            raw = _to_bytes(t)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            data = _to_json(t)
            if data is None:  # BYTES that are not UTF-8 cannot be JSON strings: send binary
                raw = _to_bytes(t)
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = data
        outputs.append(entry)
    doc: dict[str, Any] = {}
    if plan.echo_id:
        doc["id"] = resp.id
    doc["model_name"] = resp.model_name
    doc["model_version"] = resp.model_version
    doc["outputs"] = outputs
    if resp.parameters:
        doc["parameters"] = resp.parameters
    return Encoded(orjson.dumps(doc, option=_DUMPS_OPTS, default=_json_default), blobs)


def _to_bytes(t: InferTensor) -> bytes | memoryview:
    arr = t.data
    if t.datatype == "BYTES":
        parts: list[bytes] = []
        for v in arr.reshape(-1):
            b = v if isinstance(v, bytes) else v.encode("utf-8") if isinstance(v, str) else bytes(v)
            parts.append(LENGTH_PREFIX.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if arr.nbytes == 0:
        return b""
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return memoryview(np.ascontiguousarray(arr)).cast("B")  # type: ignore[arg-type]


def _to_json(t: InferTensor) -> Any:
    arr = t.data.reshape(-1)
    if t.datatype == "BYTES":
        out: list[str] = []
        for v in arr:
            if isinstance(v, bytes):
                try:
                    out.append(v.decode("utf-8"))
                except UnicodeDecodeError:
                    return None
            elif isinstance(v, str):
                out.append(v)
            else:
                out.append(str(v))
        return out
    if t.datatype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")
