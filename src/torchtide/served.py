"""A loaded model version: validates requests, queues them, and shapes the responses."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from torchtide import batching, dtypes
from torchtide.backends.base import Array, Result, Work
from torchtide.config import ModelConfig, ModelSpec
from torchtide.errors import ServerError, Status, invalid_arg
from torchtide.instances import InstanceRunner
from torchtide.scheduler import BatchPolicy, Scheduler
from torchtide.stats import ModelStats
from torchtide.tracing import Trace
from torchtide.types import InferRequest, InferResponse, InferTensor
from torchtide.wire import shape_str

BATCH_NOTE = (
    " NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be"
    " prepended to each input shape. If you want to specify the full shape including the batch dim"
    " in your input dims config, try setting max_batch_size to zero. See the model configuration"
    " docs for allowed configuration."
)


def fmt_names(names: Any) -> str:
    return "[" + ",".join(f"'{n}'" for n in names) + "]"


class ServedVersion:
    def __init__(
        self,
        config: ModelConfig,
        version: int,
        instances: list[InstanceRunner],
        model_dir: Path,
        *,
        histograms: bool = True,
        completed: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        # Where a limit came from auto-complete, its messages say so.
        source = (completed or {}).get("max_batch_size")
        self._batch_note = f" (max_batch_size auto-completed from {source})" if source else ""
        self.spec = ModelSpec.of(config)
        self.version = version
        self.version_str = str(version)
        self.model_dir = model_dir
        self.stats = ModelStats(histograms=histograms)
        self.scheduler = Scheduler(BatchPolicy.of(config), instances, self.stats)
        self._ragged = frozenset(n for n, s in self.spec.inputs.items() if s.ragged)
        self._all_outputs = list(self.spec.outputs)
        self.labels = {
            n: (model_dir / s.label_filename).read_text(encoding="utf-8").splitlines()
            for n, s in self.spec.outputs.items()
            if s.label_filename
        }

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        self.scheduler.start()

    # ------------------------------------------------------------------ validation

    def validate(self, req: InferRequest) -> tuple[dict[str, Array], int, list[str]]:
        """Check a request against the config; return its inputs, row count and output names."""
        spec = self.spec
        rid = req.id or "<id_unknown>"
        inputs: dict[str, Array] = {}
        for t in req.inputs:
            if t.name in inputs:
                raise invalid_arg(f"[request id: {rid}] input '{t.name}' already exists in request")
            inputs[t.name] = t.data
        if inputs.keys() != spec.inputs.keys():
            self._check_names(inputs, rid)
        batched = spec.max_batch_size > 0
        rows = -1
        for t in req.inputs:
            s = spec.inputs[t.name]
            if t.datatype != s.datatype:
                raise invalid_arg(
                    f"[request id: {rid}] inference input '{t.name}' data-type is '{t.datatype}', "
                    f"but model '{spec.name}' expects '{s.datatype}'"
                )
            shape = t.data.shape
            body = shape[1:] if batched else shape
            if batched and not shape:
                raise invalid_arg(
                    f"[request id: {rid}] unexpected shape for input '{t.name}' for model "
                    f"'{spec.name}'. Expected {shape_str((-1, *s.dims))}, got {shape_str(shape)}."
                    + BATCH_NOTE
                )
            if len(body) != len(s.dims) or any(
                d != -1 and d != g for d, g in zip(s.dims, body, strict=False)
            ):
                expected = (-1, *s.dims) if batched else s.dims
                raise invalid_arg(
                    f"[request id: {rid}] unexpected shape for input '{t.name}' for model "
                    f"'{spec.name}'. Expected {shape_str(expected)}, got {shape_str(shape)}. "
                    + (BATCH_NOTE.lstrip() if batched else "")
                )
            if batched:
                if rows == -1:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise invalid_arg(
                        f"[request id: {rid}] input '{t.name}' has batch size {shape[0]}, but "
                        f"other inputs have {rows}: all inputs must share the batch dimension"
                    )
        if batched and rows > spec.max_batch_size:
            raise invalid_arg(
                f"[request id: {rid}] inference request batch-size must be <= "
                f"{spec.max_batch_size} for '{spec.name}'{self._batch_note}"
            )
        if req.outputs is None:
            names = self._all_outputs
        else:
            names = []
            for o in req.outputs:
                if o.name not in spec.outputs:
                    raise invalid_arg(
                        f"unexpected inference output '{o.name}' for model '{spec.name}'"
                    )
                names.append(o.name)
        return inputs, (rows if batched else 1), names

    def _check_names(self, inputs: dict[str, Array], rid: str) -> None:
        spec = self.spec
        for name in inputs:
            if name not in spec.inputs:
                raise invalid_arg(
                    f"[request id: {rid}] unexpected inference input '{name}' for model "
                    f"'{spec.name}' (model inputs: {fmt_names(spec.inputs)})"
                )
        missing = sorted(spec.required_inputs - inputs.keys())
        if missing:
            raise invalid_arg(
                f"[request id: {rid}] expected {len(spec.required_inputs)} inputs but got "
                f"{len(inputs)} inputs for model '{spec.name}'. Got input(s) "
                f"{fmt_names(sorted(inputs))}, but missing required input(s) {fmt_names(missing)}. "
                "Please provide all required input(s)."
            )

    # ------------------------------------------------------------------ inference

    async def infer(self, req: InferRequest) -> InferResponse:
        trace = req.trace
        if trace is None:
            return await self._infer(req, None)
        trace.request_start(self.version, req.id, req.inputs)
        try:
            resp = await self._infer(req, trace)
            for t in resp.outputs:
                trace.tensor("TENSOR_BACKEND_OUTPUT", t.name, t.datatype, t.data)
            return resp
        finally:
            trace.request_end()

    async def _infer(self, req: InferRequest, trace: Trace | None) -> InferResponse:
        inputs, rows, names = self.validate(req)
        work = Work(inputs, rows, names, req.id, req.parameters)
        key = batching.shape_key(inputs, self._ragged, self.spec.max_batch_size > 0)
        pending = self.scheduler.enqueue(work, key, req.id)
        if trace is not None:
            trace.pending = pending
        try:
            result: Result = await pending.future
        except asyncio.CancelledError:
            self.scheduler.cancel(pending)
            raise
        if isinstance(result, ServerError):
            raise result
        return InferResponse(
            req.model_name, self.version_str, req.id, self._outputs(req, result, rows)
        )

    def _outputs(self, req: InferRequest, result: dict[str, Array], rows: int) -> list[InferTensor]:
        wanted = {o.name: o for o in req.outputs} if req.outputs is not None else None
        out: list[InferTensor] = []
        for name in self._all_outputs:
            if wanted is not None and name not in wanted:
                continue
            arr = result.get(name)
            if arr is None:
                raise ServerError(
                    Status.INTERNAL, f"model '{self.name}' produced no output '{name}'"
                )
            spec_type = self.spec.outputs[name].datatype
            wire = spec_type if spec_type in ("BF16", "BYTES") else dtypes.wire_of_numpy(arr.dtype)
            if wire is None:
                raise ServerError(
                    Status.INTERNAL, f"output '{name}' has unsupported dtype {arr.dtype}"
                )
            k = wanted[name].classification if wanted is not None else 0
            if k:
                out.append(self._classify(name, arr, k))
            else:
                out.append(InferTensor(name, wire, arr))
        return out

    def _classify(self, name: str, arr: Array, k: int) -> InferTensor:
        """Triton's classification extension: top-k "value:index[:label]" strings per row."""
        labels = self.labels.get(name, [])
        batched = self.spec.max_batch_size > 0
        rows = arr.reshape(arr.shape[0], -1) if batched else arr.reshape(1, -1)
        k = min(k, rows.shape[1])
        table = []
        for row in rows:
            idx = np.argsort(-row, kind="stable")[:k]
            table.append(
                [
                    (
                        f"{float(row[i]):f}:{int(i)}" + (f":{labels[i]}" if i < len(labels) else "")
                    ).encode()
                    for i in idx
                ]
            )
        data = np.array(table, dtype=np.object_)
        return InferTensor(name, "BYTES", data if batched else data.reshape(k))
