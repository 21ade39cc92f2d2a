"""ONNX Runtime backend: `model.onnx`, session options from the config, inputs and outputs
auto-completed from the graph."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc

from torchtide import dtypes
from torchtide.backends.base import Array, Backend, LoadContext, Outputs, TensorInstance
from torchtide.backends.checks import ModelTensor, check_required, check_tensor
from torchtide.config import ConfigError, ModelConfig, parameter

DEFAULT_AUTOCOMPLETE_MAX_BATCH = 4  # Triton's default-max-batch-size

_ORT_WIRE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}


def _session_options(cfg: ModelConfig) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    intra = parameter(cfg, "intra_op_thread_count") or parameter(cfg, "NUM_THREADS")
    if intra:
        opts.intra_op_num_threads = int(intra)
    inter = parameter(cfg, "inter_op_thread_count")
    if inter:
        opts.inter_op_num_threads = int(inter)
    if parameter(cfg, "execution_mode") == "1":
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    level = cfg.optimization.graph.level
    opts.graph_optimization_level = {
        -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if parameter(cfg, "enable_mem_pattern") == "0":
        opts.enable_mem_pattern = False
    if parameter(cfg, "enable_mem_arena") == "0":
        opts.enable_cpu_mem_arena = False
    return opts


def _providers(device: str, accelerators: list[Any]) -> list[Any]:
    if device.startswith("cuda"):
        return [
            ("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])}),
            *accelerators,
            "CPUExecutionProvider",
        ]
    return [*accelerators, "CPUExecutionProvider"]


_OPENVINO_EP = "OpenVINOExecutionProvider"
# Triton: "ONNX session creation with OpenVINO is not thread-safe"; instances load in parallel.
_OPENVINO_SESSION_LOCK = threading.Lock()


def cpu_accelerators(cfg: ModelConfig, source: Path) -> list[Any]:
    """Triton's `optimization { execution_accelerators { cpu_execution_accelerator } }`: the
    execution providers it names, refused when the installed ONNX Runtime lacks them."""
    found: list[Any] = []
    where = f"{source}: optimization.execution_accelerators.cpu_execution_accelerator"
    for ea in cfg.optimization.execution_accelerators.cpu_execution_accelerator:
        if ea.name != "openvino":
            raise ConfigError(
                f"{where}: unknown Execution Accelerator '{ea.name}' is requested "
                "(on CPU ONNX Runtime offers: openvino)"
            )
        available = ort.get_available_providers()
        if _OPENVINO_EP not in available:
            raise ConfigError(
                f"{where}: 'openvino' needs ONNX Runtime's {_OPENVINO_EP}, which the installed "
                f"onnxruntime {ort.__version__} lacks (it has: {', '.join(available)}); "
                "install the onnxruntime-openvino wheel in place of onnxruntime"
            )
        found.append((_OPENVINO_EP, {"device_type": "CPU", **dict(ea.parameters)}))
    return found


class OnnxBackend(Backend):
    name = "onnxruntime"
    completes_from = "the ONNX graph"

    def auto_complete(self, cfg: ModelConfig, model_file: Path, model_dir: Path) -> None:
        if cfg.input and cfg.output:
            return
        sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        ins, outs = sess.get_inputs(), sess.get_outputs()
        batchable = all(len(a.shape) > 0 and not isinstance(a.shape[0], int) for a in ins + outs)
        if cfg.max_batch_size == 0 and batchable:
            cfg.max_batch_size = DEFAULT_AUTOCOMPLETE_MAX_BATCH
            if not cfg.HasField("dynamic_batching"):
                cfg.dynamic_batching.SetInParent()
        skip = 1 if cfg.max_batch_size > 0 else 0

        def fill(tensors: Any, arg: Any) -> None:
            wire = _ORT_WIRE.get(arg.type)
            if wire is None:
                raise ConfigError(
                    f"{model_file}: tensor '{arg.name}' has unsupported type {arg.type}"
                )
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape[skip:]]
            tensors.add(
                name=arg.name, data_type=mc.DataType.Value(dtypes.BY_WIRE[wire].config), dims=dims
            )

        if not cfg.input:
            for a in ins:
                fill(cfg.input, a)
        if not cfg.output:
            for a in outs:
                fill(cfg.output, a)

    def load(self, ctx: LoadContext) -> OnnxInstance:
        return OnnxInstance(ctx)


class OnnxInstance(TensorInstance):
    def __init__(self, ctx: LoadContext) -> None:
        self.batched = ctx.spec.max_batch_size > 0
        accelerators = cpu_accelerators(ctx.config, ctx.model_dir / "config.pbtxt")
        with _OPENVINO_SESSION_LOCK if accelerators else contextlib.nullcontext():
            self.session = ort.InferenceSession(
                str(ctx.model_file),
                _session_options(ctx.config),
                providers=_providers(ctx.instance.device, accelerators),
            )
        self.label = f"model '{ctx.spec.name}' instance '{ctx.instance.name}'"
        check_graph(self.session, ctx)
        self.spec = ctx.spec

    def run(self, inputs: dict[str, Array], output_names: list[str]) -> Outputs:
        feed = {n: (a.astype(np.str_) if a.dtype == np.object_ else a) for n, a in inputs.items()}
        values = self.session.run(output_names, feed)
        out: Outputs = {}
        for name, v in zip(output_names, values, strict=True):
            arr = np.asarray(v)
            if arr.dtype.kind == "U":
                arr = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(arr)
            out[name] = arr
        return out


def _model_tensor(arg: Any) -> ModelTensor:
    shape = arg.shape
    return ModelTensor(
        wire=_ORT_WIRE.get(arg.type),
        shape=None
        if shape is None
        else tuple(d if isinstance(d, int) and d > 0 else None for d in shape),
    )


def check_graph(session: ort.InferenceSession, ctx: LoadContext) -> None:
    """The config's inputs and outputs against the graph's: names, then datatypes and shapes;
    every input the graph requires must be configured."""
    source = str(ctx.model_file)
    spec = ctx.spec
    required = {a.name: a for a in session.get_inputs()}
    overridable = {a.name: a for a in session.get_overridable_initializers()}
    graph_inputs = required | overridable
    graph_outputs = {a.name: a for a in session.get_outputs()}
    for name in spec.inputs:
        if name not in graph_inputs:
            raise ConfigError(
                f"{source}: input '{name}' is not an input of the model "
                f"(graph inputs: {', '.join(graph_inputs)})"
            )
    for name in spec.outputs:
        if name not in graph_outputs:
            raise ConfigError(
                f"{source}: output '{name}' is not an output of the model "
                f"(graph outputs: {', '.join(sorted(graph_outputs))})"
            )
    check_required(source, [n for n in required if n not in spec.inputs], list(spec.inputs))
    for name, t in spec.inputs.items():
        check_tensor(source, "input", t, _model_tensor(graph_inputs[name]), spec.max_batch_size)
    for name, t in spec.outputs.items():
        check_tensor(source, "output", t, _model_tensor(graph_outputs[name]), spec.max_batch_size)
