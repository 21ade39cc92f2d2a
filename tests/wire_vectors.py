"""Bad requests and what each must answer, shared by the HTTP and gRPC tests so the same bad
request means the same thing on both protocols.

Each vector names the model (from tests' shared repository fixture), the inputs to send
(name -> (datatype, numpy array)), optional requested outputs, and the expected neutral
status (torchtide.errors.Status name) plus a substring of the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Vector:
    id: str
    model: str
    inputs: dict[str, tuple[str, Any]]
    status: str  # Status name: INVALID_ARG, NOT_FOUND, UNAVAILABLE, INTERNAL, ...
    message: str  # a substring the error message must contain
    outputs: list[str] | None = None
    version: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


_I = np.arange(16, dtype=np.int32).reshape(1, 16)

VECTORS = [
    Vector("unknown-model", "nope", {"INPUT0": ("INT32", _I)}, "NOT_FOUND",
           "Request for unknown model: 'nope' is not found"),
    Vector("unknown-version", "add_sub", {"INPUT0": ("INT32", _I), "INPUT1": ("INT32", _I)},
           "NOT_FOUND", "Request for unknown model: 'add_sub' version 7 is not found", version="7"),
    Vector("wrong-shape", "add_sub",
           {"INPUT0": ("INT32", _I[:, :15]), "INPUT1": ("INT32", _I[:, :15])}, "INVALID_ARG",
           "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [-1,16], got [1,15]"),
    Vector("wrong-datatype", "add_sub",
           {"INPUT0": ("FP32", _I.astype(np.float32)), "INPUT1": ("INT32", _I)}, "INVALID_ARG",
           "inference input 'INPUT0' data-type is 'FP32', but model 'add_sub' expects 'INT32'"),
    Vector("missing-input", "add_sub", {"INPUT0": ("INT32", _I)}, "INVALID_ARG",
           "missing required input(s) ['INPUT1']"),
    Vector("unknown-input", "add_sub",
           {"INPUT0": ("INT32", _I), "INPUT1": ("INT32", _I), "EXTRA": ("INT32", _I)},
           "INVALID_ARG", "unexpected inference input 'EXTRA' for model 'add_sub'"),
    Vector("unknown-output", "add_sub", {"INPUT0": ("INT32", _I), "INPUT1": ("INT32", _I)},
           "INVALID_ARG", "unexpected inference output 'NOPE' for model 'add_sub'",
           outputs=["NOPE"]),
    Vector("batch-too-large", "add_sub",
           {"INPUT0": ("INT32", np.zeros((65, 16), np.int32)),
            "INPUT1": ("INT32", np.zeros((65, 16), np.int32))}, "INVALID_ARG",
           "inference request batch-size must be <= 64 for 'add_sub'"),
]
