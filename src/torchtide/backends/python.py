"""Python backend: Triton's `TritonPythonModel` API, run in-process on the instance's thread.

Each instance imports its own copy of `model.py` and of the files beside it (Triton gives each
instance its own stub process, so module globals must not be shared): see pymodules. Tensors
wrap the request's numpy arrays without copying.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from google.protobuf import json_format

import triton_python_backend_utils as pb_utils
from torchtide.backends.base import (
    Array,
    Backend,
    LoadContext,
    ModelInstance,
    Outputs,
    Result,
    TensorInstance,
    Timing,
    Work,
    log,
    one_line,
)
from torchtide.backends.pymodules import ModelPackage
from torchtide.config import ConfigError, ModelConfig, parameter, to_json_dict
from torchtide.errors import ServerError, Status, internal

STACKED_BATCH_PARAM = "TORCHTIDE_STACKED_BATCH"

# Python models share one interpreter here (Triton gives each instance its own process), so
# their imports and initialize() calls take turns: lazy-import libraries are not thread-safe
# (two minilm instances importing transformers' BertModel at once failed with ImportError).
_INIT_LOCK = threading.Lock()

_CODE_STATUS = {
    pb_utils.TritonError.UNKNOWN: Status.UNKNOWN,
    pb_utils.TritonError.INTERNAL: Status.INTERNAL,
    pb_utils.TritonError.NOT_FOUND: Status.NOT_FOUND,
    pb_utils.TritonError.INVALID_ARG: Status.INVALID_ARG,
    pb_utils.TritonError.UNAVAILABLE: Status.UNAVAILABLE,
    pb_utils.TritonError.UNSUPPORTED: Status.UNSUPPORTED,
    pb_utils.TritonError.ALREADY_EXISTS: Status.ALREADY_EXISTS,
    pb_utils.TritonError.CANCELLED: Status.CANCELLED,
}
_BF16 = 14  # TRITONSERVER_TYPE_BF16


def import_model_module(package: ModelPackage) -> ModuleType:
    """Import the package's `model.py` (with its own copies of the files beside it)."""
    path = package.model_file
    try:
        module = package.import_model()
    except Exception as e:
        log.debug("%s: import failed", path, exc_info=e)
        raise ConfigError(f"{path}: import failed: {one_line(e)}") from None
    if not hasattr(module, "TritonPythonModel"):
        raise ConfigError(f"{path}: defines no class TritonPythonModel")
    return module


class PythonBackend(Backend):
    name = "python"
    completes_from = "auto_complete_config() in model.py"

    def auto_complete(self, cfg: ModelConfig, model_file: Path, model_dir: Path) -> None:
        if not model_file.is_file():
            return
        package = ModelPackage(model_file, f"{cfg.name or model_dir.name}_autocomplete")
        try:
            with _INIT_LOCK, package.aliases():
                as_dict = _auto_complete(package, cfg)
        finally:
            package.close()
        if as_dict is not None:
            cfg.Clear()
            json_format.ParseDict(as_dict, cfg)

    def load(self, ctx: LoadContext) -> ModelInstance:
        if ctx.config.model_transaction_policy.decoupled:
            raise ConfigError(
                f"{ctx.model_file}: model_transaction_policy.decoupled: decoupled models are not "
                "supported by torchtide yet"
            )
        if parameter(ctx.config, STACKED_BATCH_PARAM).lower() in ("1", "true", "yes"):
            return StackedPythonInstance(ctx)
        return PythonInstance(ctx)


def _auto_complete(package: ModelPackage, cfg: ModelConfig) -> dict[str, Any] | None:
    hook = getattr(import_model_module(package).TritonPythonModel, "auto_complete_config", None)
    if hook is None:
        return None
    try:
        completed = hook(pb_utils.ModelConfig(to_json_dict(cfg)))
        as_dict: dict[str, Any] = completed.as_dict()
    except Exception as e:
        log.debug("%s: auto_complete_config failed", package.model_file, exc_info=e)
        raise ConfigError(
            f"{package.model_file}: auto_complete_config failed: {one_line(e)}"
        ) from None
    return as_dict


class _PythonModel:
    """Owns the TritonPythonModel object, its private package of modules, and a private
    event loop for `async def` methods."""

    def __init__(self, ctx: LoadContext) -> None:
        tag = f"{ctx.spec.name}_{ctx.version}_{ctx.instance.name}"
        self.package = ModelPackage(ctx.model_file, tag)
        try:
            with _INIT_LOCK, self.package.aliases():
                self._initialize(ctx)
        except BaseException:
            self.package.close()
            raise

    def _initialize(self, ctx: LoadContext) -> None:
        self.label = f"model '{ctx.spec.name}' instance '{ctx.instance.name}'"
        module = import_model_module(self.package)
        self.model = module.TritonPythonModel()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.spec = ctx.spec
        args = {
            "model_config": json.dumps(to_json_dict(ctx.config)),
            "model_instance_kind": ctx.instance.kind,
            "model_instance_name": ctx.instance.name,
            "model_instance_device_id": str(ctx.instance.device_id),
            "model_repository": str(ctx.model_dir),
            "model_version": str(ctx.version),
            "model_name": ctx.spec.name,
        }
        if hasattr(self.model, "initialize"):
            try:
                self.call(self.model.initialize, args)
            except Exception as e:
                log.debug("%s: initialize() failed", ctx.model_file, exc_info=e)
                raise ConfigError(f"{ctx.model_file}: initialize() failed: {one_line(e)}") from None

    def call(self, fn: Any, *args: Any) -> Any:
        result = fn(*args)
        if inspect.isawaitable(result):
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            result = self.loop.run_until_complete(result)
        return result

    def finalize(self) -> None:
        try:
            if hasattr(self.model, "finalize"):
                self.call(self.model.finalize)
        finally:
            if self.loop is not None:
                self.loop.close()
            self.package.close()

    def make_request(self, w: Work) -> Any:
        tensors = [_to_pb_tensor(n, a, self.spec.inputs[n].datatype) for n, a in w.inputs.items()]
        req = pb_utils.InferenceRequest(
            model_name=self.spec.name,
            inputs=tensors,
            requested_output_names=w.output_names,
            request_id=w.request_id,
            parameters=w.parameters,
        )
        req._cancel_check = lambda: w.cancelled
        return req


def _to_pb_tensor(name: str, arr: Array, wire: str) -> Any:
    if wire == "BF16":
        return pb_utils.Tensor._from_bf16_bits(name, arr)
    return pb_utils.Tensor(name, arr)


def _from_response(resp: Any, wanted: list[str]) -> Result:
    if resp is None:
        return internal("execute() returned None instead of an InferenceResponse")
    if resp.has_error():
        err = resp.error()
        return ServerError(_CODE_STATUS.get(err.code(), Status.INTERNAL), err.message())
    out: Outputs = {}
    for t in resp.output_tensors():
        name = t.name()
        if name not in wanted:
            continue
        out[name] = t._bf16_bits() if t.triton_dtype() == _BF16 else np.asarray(t.as_numpy())
    return out


class PythonInstance(ModelInstance):
    """Triton's contract: N requests in, N responses out, an error per response."""

    def __init__(self, ctx: LoadContext) -> None:
        self.pm = _PythonModel(ctx)

    def execute(self, work: list[Work], timing: Timing) -> list[Result]:
        t0 = time.perf_counter_ns()
        live = [w for w in work if not w.cancelled]
        requests = [self.pm.make_request(w) for w in live]
        t1 = time.perf_counter_ns()
        try:
            responses = self.pm.call(self.pm.model.execute, requests) if requests else []
        except Exception as e:
            err = _exception_error(e, self.pm.label)
            responses = None
        t2 = time.perf_counter_ns()
        if responses is None:
            results: list[Result] = [err for _ in live]
        elif not isinstance(responses, (list, tuple)) or len(responses) != len(live):
            n = len(responses) if isinstance(responses, (list, tuple)) else type(responses).__name__
            msg = (
                f"execute() must return one InferenceResponse per request: got {n} for {len(live)}"
            )
            results = [internal(msg) for _ in live]
        else:
            results = [
                _from_response(r, w.output_names) for r, w in zip(responses, live, strict=True)
            ]
        it = iter(results)
        final = [
            ServerError(Status.CANCELLED, "request cancelled") if w.cancelled else next(it)
            for w in work
        ]
        timing.mark(t0, t1, t2, time.perf_counter_ns())
        return final

    def finalize(self) -> None:
        self.pm.finalize()


def _exception_error(e: Exception, label: str) -> ServerError:
    log.debug("%s: execute() raised", label, exc_info=e)
    if isinstance(e, pb_utils.TritonModelException):
        return internal(str(e))
    return internal(one_line(e))


class StackedPythonInstance(TensorInstance):
    """Opt-in (beyond Triton): execute() receives one request holding the whole stacked batch
    and returns one response, which the server splits back by rows."""

    def __init__(self, ctx: LoadContext) -> None:
        self.pm = _PythonModel(ctx)
        self.batched = ctx.spec.max_batch_size > 0
        self.label = self.pm.label

    def run(self, inputs: dict[str, Array], output_names: list[str]) -> Outputs:
        request = self.pm.make_request(Work(inputs=inputs, rows=0, output_names=output_names))
        responses = self.pm.call(self.pm.model.execute, [request])
        if not isinstance(responses, (list, tuple)) or len(responses) != 1:
            raise internal(
                "execute() must return a list with one InferenceResponse in stacked mode"
            )
        result = _from_response(responses[0], output_names)
        if isinstance(result, ServerError):
            raise result
        return result

    def finalize(self) -> None:
        self.pm.finalize()
