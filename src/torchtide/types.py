"""The core's request and response shapes.

Front-ends build these; the core never sees bytes on a wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from torchtide import dtypes

if TYPE_CHECKING:
    from torchtide.tracing import Trace

Array = np.ndarray[Any, Any]


@dataclass(slots=True)
class InferTensor:
    """A named tensor. BF16 data is a uint16 array of raw bits; BYTES an object array of bytes."""

    name: str
    datatype: str
    data: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @classmethod
    def of(cls, name: str, data: Any, datatype: str | None = None) -> InferTensor:
        """Build from numpy/list data, inferring the wire datatype when not given."""
        if datatype == "BYTES" or (datatype is None and _looks_textual(data)):
            return cls(name, "BYTES", dtypes.as_bytes_array(data))
        arr = np.asarray(data)
        if datatype is None:
            wire = dtypes.wire_of_numpy(arr.dtype)
            if wire is None:
                raise TypeError(f"tensor '{name}': unsupported numpy dtype {arr.dtype}")
            datatype = wire
        return cls(name, datatype, arr)


def _looks_textual(data: Any) -> bool:
    arr = data if isinstance(data, np.ndarray) else None
    if arr is not None:
        return arr.dtype.kind in ("S", "U", "O")
    return isinstance(data, (list, tuple, str, bytes)) and np.asarray(data).dtype.kind in "SUO"


@dataclass(slots=True)
class RequestedOutput:
    name: str
    classification: int = 0  # top-k classification extension; 0 = raw tensor
    parameters: dict[str, Any] = field(default_factory=dict)  # front-end specifics (binary, shm)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[InferTensor]
    model_version: str = ""  # "" = the newest ready version
    id: str = ""
    outputs: list[RequestedOutput] | None = None  # None = every output
    parameters: dict[str, Any] = field(default_factory=dict)
    trace: Trace | None = None  # set by a front-end when this request is traced


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[InferTensor]
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_numpy(self, name: str) -> Array:
        for t in self.outputs:
            if t.name == name:
                return t.data
        raise KeyError(name)
