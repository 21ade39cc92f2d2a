"""Shared state between tests and the probe Python model they serve (same process, so the
model's `import tests.probe` sees this very module)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Call:
    instance: str
    ids: list[str]
    rows: list[int]
    parameters: list[dict[str, Any]] = field(default_factory=list)


CALLS: list[Call] = []
BARRIER: threading.Barrier | None = None
GATE: threading.Event = threading.Event()  # a "blocker" request waits on it
GATE.set()
ENTERED: threading.Event = threading.Event()
BARRIER_TIMEOUT = 20.0


def reset() -> None:
    global BARRIER, BARRIER_TIMEOUT
    CALLS.clear()
    BARRIER = None
    BARRIER_TIMEOUT = 20.0
    GATE.set()
    ENTERED.clear()


PROBE_PY = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils
from tests import probe


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]
        self.args = args

    def execute(self, requests):
        params = [json.loads(r.parameters()) for r in requests]
        probe.CALLS.append(probe.Call(
            self.name,
            [r.request_id() for r in requests],
            [int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy().shape[0]) for r in requests],
            params,
        ))
        if any(p.get("block") for p in params):
            probe.ENTERED.set()
            probe.GATE.wait(30)
        if any(p.get("barrier") for p in params):
            probe.BARRIER.wait(timeout=probe.BARRIER_TIMEOUT)
        out = []
        for r, p in zip(requests, params):
            if p.get("fail"):
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("asked to fail")))
                continue
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", 2 * x + 1)]))
        return out
"""


def probe_config(
    extra: str = "", max_batch_size: int = 8, dims: str = "[-1]", ragged: bool = False
) -> str:
    flag = "allow_ragged_batch: true" if ragged else ""
    return f"""
backend: "python"
max_batch_size: {max_batch_size}
input [{{ name: "IN" data_type: TYPE_FP32 dims: {dims} {flag} }}]
output [{{ name: "OUT" data_type: TYPE_FP32 dims: {dims} }}]
{extra}
"""


def rows(n: int, width: int = 2, value: float = 0.0) -> np.ndarray[Any, Any]:
    return np.full((n, width), value, dtype=np.float32)
