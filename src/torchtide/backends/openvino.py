"""OpenVINO backend: Triton's openvino backend layout (`model.xml` + `model.bin`, or any file
OpenVINO reads through `default_model_filename`) and its `parameters`, on the CPU.

Inputs and outputs bind by tensor name, or by position with `<name>__<index>` (IR outputs
converted from PyTorch carry no names; auto-complete calls them `OUTPUT__<index>`). The batch
dimension stays dynamic, so any batch up to max_batch_size runs as it is; Triton's fixed batch
with `ENABLE_BATCH_PADDING` is kept as an opt-in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from tritonclient.grpc import model_config_pb2 as mc

from torchtide import dtypes
from torchtide.backends.base import Array, Backend, LoadContext, Outputs, TensorInstance
from torchtide.config import ConfigError, ModelConfig, TensorSpec, parameter

log = logging.getLogger("torchtide.openvino")

DEFAULT_AUTOCOMPLETE_MAX_BATCH = 4  # Triton's default-max-batch-size

_OV_WIRE = {
    "boolean": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
    "bf16": "BF16",
}

# Triton's openvino backend parameters passed on as the OpenVINO property of the same name:
# key -> (the words it accepts, whether a non-negative integer is accepted); case-insensitive.
_PROPERTIES: dict[str, tuple[tuple[str, ...], bool]] = {
    "INFERENCE_NUM_THREADS": ((), True),
    "COMPILATION_NUM_THREADS": ((), True),
    "NUM_STREAMS": (("AUTO", "NUMA"), True),
    "PERFORMANCE_HINT": (("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"), False),
}
_FLAGS = ("ENABLE_BATCH_PADDING", "RESHAPE_IO_LAYERS", "SKIP_OV_DYNAMIC_BATCHSIZE", "HINT_BF16")
# INFERENCE_PRECISION_HINT is torchtide's (OpenVINO's property name); unlike Triton's HINT_BF16,
# which stays a hint as in Triton, it refuses to load where the device cannot run it.
_PRECISIONS = {"F32": "f32", "FP32": "f32", "BF16": "bf16", "F16": "f16", "FP16": "f16"}


@dataclass(slots=True)
class Settings:
    """The config's parameters, checked."""

    properties: dict[str, Any] = field(default_factory=dict)
    device: str = "CPU"
    extension: str = ""
    batch_padding: bool = False
    reshape_io: bool = False
    strict_precision: bool = False  # INFERENCE_PRECISION_HINT (ours) refuses; HINT_BF16 hints


def settings(cfg: ModelConfig, source: str) -> Settings:
    """Read the openvino parameters; a bad value is a ConfigError naming the key."""
    s = Settings()
    for key in cfg.parameters:
        value = str(cfg.parameters[key].string_value).strip()
        if key in _PROPERTIES:
            s.properties[key] = _property(key, value, source)
        elif key in _FLAGS:
            _set_flag(s, key, _flag(key, value, source), source)
        elif key == "TARGET_DEVICE":
            s.device = value.upper() or "CPU"
        elif key == "CPU_EXTENSION_PATH":
            s.extension = value
        elif key == "INFERENCE_PRECISION_HINT":
            if value.upper() not in _PRECISIONS:
                raise ConfigError(
                    f"{source}: parameters: expected the parameter 'INFERENCE_PRECISION_HINT' "
                    f"to be f32/bf16/f16, got '{value}'"
                )
            s.properties[key] = _PRECISIONS[value.upper()]
            s.strict_precision = True
        elif key != "NUM_THREADS":
            log.warning(
                "%s: parameter '%s' is not an openvino backend parameter; ignored", source, key
            )
    threads = parameter(cfg, "NUM_THREADS")
    if threads.isdigit():  # torchtide's server-wide thread key, as for the other backends
        s.properties.setdefault("INFERENCE_NUM_THREADS", int(threads))
    return s


def _property(key: str, value: str, source: str) -> int | str:
    words, numeric = _PROPERTIES[key]
    if numeric and value.isdigit():
        return int(value)
    if value.upper() in words:
        return value.upper()
    want = "/".join((*words, "<int>") if numeric else words) if words else "a non-negative number"
    raise ConfigError(
        f"{source}: parameters: expected the parameter '{key}' to be {want}, got '{value}'"
    )


def _flag(key: str, value: str, source: str) -> bool:
    v = value.lower()
    if v in ("yes", "true", "1"):
        return True
    if v in ("no", "false", "0", ""):
        return False
    raise ConfigError(
        f"{source}: parameters: expected the parameter '{key}' to be YES or NO, got '{value}'"
    )


def _set_flag(s: Settings, key: str, on: bool, source: str) -> None:
    if key == "ENABLE_BATCH_PADDING":
        s.batch_padding = on
    elif key == "RESHAPE_IO_LAYERS":
        s.reshape_io = on
    elif key == "HINT_BF16":
        if on:
            s.properties.setdefault("INFERENCE_PRECISION_HINT", "bf16")
    elif on:  # SKIP_OV_DYNAMIC_BATCHSIZE: an auto-batching hint for OpenVINO's GPU plugin
        log.warning(
            "%s: parameter '%s' has no effect in torchtide (the batch dimension is dynamic "
            "unless ENABLE_BATCH_PADDING is YES)",
            source,
            key,
        )


# --------------------------------------------------------------------------- reading the IR


def _wire(port: Any) -> str | None:
    return _OV_WIRE.get(port.get_element_type().get_type_name())


def _port_name(port: Any, index: int, kind: str) -> str:
    names = port.get_names()
    return port.get_any_name() if names else f"{kind.upper()}__{index}"


def _shape(port: Any) -> list[int] | None:
    """The port's dims, -1 for a dynamic one; None when even the rank is unknown."""
    ps = port.get_partial_shape()
    if ps.rank.is_dynamic:
        return None
    return [d.get_length() if d.is_static else -1 for d in ps]


def _read(core: Any, path: Path) -> Any:
    try:
        return core.read_model(str(path))
    except Exception as e:
        raise ConfigError(f"{path}: cannot read the OpenVINO model: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # OpenVINO's messages start with "Exception from src/...cpp:N:" then say what is wrong.
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(e).__name__])[0]


class OpenVinoBackend(Backend):
    name = "openvino"

    def auto_complete(self, cfg: ModelConfig, model_file: Path, model_dir: Path) -> None:
        if cfg.input and cfg.output:
            return
        model = _read(ov.Core(), model_file)
        ports = list(model.inputs) + list(model.outputs)
        if cfg.max_batch_size == 0 and ports and all(_batchable(p) for p in ports):
            cfg.max_batch_size = DEFAULT_AUTOCOMPLETE_MAX_BATCH
            if not cfg.HasField("dynamic_batching"):
                cfg.dynamic_batching.SetInParent()
        skip = 1 if cfg.max_batch_size > 0 else 0

        def fill(tensors: Any, ports: Any, kind: str) -> None:
            for i, port in enumerate(ports):
                name = _port_name(port, i, kind)
                wire = _wire(port)
                shape = _shape(port)
                if wire is None or shape is None:
                    what = (
                        f"has unsupported element type {port.get_element_type().get_type_name()}"
                        if wire is None
                        else "has a dynamic rank; list it in config.pbtxt"
                    )
                    raise ConfigError(f"{model_file}: {kind} '{name}' {what}")
                tensors.add(
                    name=name,
                    data_type=mc.DataType.Value(dtypes.BY_WIRE[wire].config),
                    dims=shape[skip:],
                )

        if not cfg.input:
            fill(cfg.input, model.inputs, "input")
        if not cfg.output:
            fill(cfg.output, model.outputs, "output")

    def load(self, ctx: LoadContext) -> OpenVinoInstance:
        return OpenVinoInstance(ctx)


def _batchable(port: Any) -> bool:
    """Triton's rule (a layout with N) or ours for the ONNX backend (a dynamic first dim)."""
    if ov.layout_helpers.get_layout(port).has_name("N"):
        return True
    ps = port.get_partial_shape()
    return bool(ps.rank.is_static and ps.rank.get_length() > 0 and ps[0].is_dynamic)


# --------------------------------------------------------------------------- binding and checks


def bind(ports: Any, specs: dict[str, TensorSpec], kind: str, source: Path) -> dict[str, int]:
    """Config tensor name -> port index, by name or by `<name>__<index>`."""
    by_name: dict[str, int] = {}
    for i, port in enumerate(ports):
        for n in port.get_names():
            by_name.setdefault(n, i)
    found: dict[str, int] = {}
    for name in specs:
        if name in by_name:
            found[name] = by_name[name]
            continue
        head, sep, tail = name.rpartition("__")
        if sep and head and tail.isdigit() and int(tail) < len(ports):
            found[name] = int(tail)
            continue
        listed = ", ".join(_port_name(p, i, kind) for i, p in enumerate(ports)) or "none"
        raise ConfigError(
            f"{source}: {kind} '{name}' is not an {kind} of the model "
            f"(model {kind}s: {listed}; or use the <name>__<index> convention, "
            f"index < {len(ports)})"
        )
    if kind == "input":
        missing = [_port_name(p, i, kind) for i, p in enumerate(ports) if i not in found.values()]
        if missing:
            raise ConfigError(
                f"{source}: the model's input '{missing[0]}' is not listed in config.pbtxt "
                f"(configured inputs: {', '.join(specs) or 'none'})"
            )
    return found


def check_tensor(
    port: Any, spec: TensorSpec, kind: str, source: Path, batched: bool, padded: int
) -> None:
    """The config's data type, rank and fixed dims against the port's."""
    where = f"{source}: {kind} '{spec.name}'"
    got = _wire(port)
    if got != spec.datatype:
        ov_type = port.get_element_type().get_type_name()
        have = dtypes.BY_WIRE[got].config if got else "no torchtide data type"
        raise ConfigError(
            f"{where}: data_type {dtypes.BY_WIRE[spec.datatype].config} does not match the "
            f"model's element type {ov_type} ({have})"
        )
    shape = _shape(port)
    if shape is None:
        return
    dims = list(spec.reshape if spec.reshape is not None else spec.dims)
    full = ([-1] if batched else []) + dims
    shown = f"[{', '.join(map(str, full))}]"
    model = f"[{', '.join('?' if d < 0 else str(d) for d in shape)}]"
    note = " (the first is the batch dimension: max_batch_size > 0)" if batched else ""
    if len(shape) != len(full):
        raise ConfigError(
            f"{where}: the model has {len(shape)} dimensions {model} but the config gives "
            f"{len(full)} {shown}{note}"
        )
    if batched and shape[0] >= 0 and shape[0] != padded:
        raise ConfigError(
            f"{where}: the model's batch dimension is fixed at {shape[0]} {model}; convert it "
            "with a dynamic batch dimension, set max_batch_size: 0, or set the parameter "
            "ENABLE_BATCH_PADDING: YES"
        )
    for i, (m, c) in enumerate(zip(shape, full, strict=True)):
        if i == 0 and batched:
            continue
        if m >= 0 and c >= 0 and m != c:
            raise ConfigError(
                f"{where}: dims {shown} do not match the model's shape {model} "
                f"at dimension {i}{note}"
            )


def _reshape_inputs(
    model: Any, ctx: LoadContext, found: dict[str, int], s: Settings, source: Path
) -> None:
    """Batch dimension dynamic (or the padded size), and with RESHAPE_IO_LAYERS the config's
    dims; the model's outputs are re-inferred from these."""
    batched = ctx.spec.max_batch_size > 0
    batch = ov.Dimension(ctx.spec.max_batch_size) if s.batch_padding else ov.Dimension()
    shapes: dict[int, Any] = {}
    for name, idx in found.items():
        port = model.inputs[idx]
        ps = port.get_partial_shape()
        if s.reshape_io:
            spec = ctx.spec.inputs[name]
            dims = spec.reshape if spec.reshape is not None else spec.dims
            new = [ov.Dimension(d) if d > 0 else ov.Dimension() for d in dims]
            ps = ov.PartialShape(([batch] if batched else []) + new)
        elif batched and ps.rank.is_static and ps.rank.get_length() > 0:
            ps = ov.PartialShape([batch, *list(ps)[1:]])
        else:
            continue
        if ps != port.get_partial_shape():
            shapes[idx] = ps
    if not shapes:
        return
    try:
        model.reshape({model.inputs[i]: ps for i, ps in shapes.items()})
    except Exception as e:
        what = "to the config's dims" if s.reshape_io else "to a dynamic batch dimension"
        raise ConfigError(
            f"{source}: cannot reshape the model's inputs {what}: {_first_line(e)}"
        ) from None


# --------------------------------------------------------------------------- the instance


class OpenVinoInstance(TensorInstance):
    def __init__(self, ctx: LoadContext) -> None:
        source = ctx.model_file
        s = settings(ctx.config, str(ctx.model_dir / "config.pbtxt"))
        core = ov.Core()
        if s.extension:
            try:
                core.add_extension(s.extension)
            except Exception as e:
                raise ConfigError(
                    f"{source}: CPU_EXTENSION_PATH '{s.extension}': {_first_line(e)}"
                ) from None
        model = _read(core, source)
        self.batched = ctx.spec.max_batch_size > 0
        self.pad_to = ctx.spec.max_batch_size if s.batch_padding and self.batched else 0
        inputs = bind(model.inputs, ctx.spec.inputs, "input", source)
        _reshape_inputs(model, ctx, inputs, s, source)
        outputs = bind(model.outputs, ctx.spec.outputs, "output", source)
        for kind, found, ports, specs in (
            ("input", inputs, model.inputs, ctx.spec.inputs),
            ("output", outputs, model.outputs, ctx.spec.outputs),
        ):
            for name, idx in found.items():
                check_tensor(ports[idx], specs[name], kind, source, self.batched, self.pad_to)
        self.compiled = _compile(core, model, s, source)
        self.request = self.compiled.create_infer_request()
        self.inputs = inputs
        self.outputs = outputs
        self.spec = ctx.spec

    def run(self, inputs: dict[str, Array], output_names: list[str]) -> Outputs:
        rows = next(iter(inputs.values())).shape[0] if self.batched and inputs else 0
        feed: dict[int, Any] = {}
        for name, arr in inputs.items():
            spec = self.spec.inputs[name]
            if spec.reshape is not None:
                lead = (arr.shape[0],) if self.batched else ()
                arr = arr.reshape(lead + spec.reshape)
            if self.pad_to and rows < self.pad_to:
                pad = np.zeros((self.pad_to - rows, *arr.shape[1:]), arr.dtype)
                arr = np.concatenate([arr, pad])
            feed[self.inputs[name]] = _to_ov(arr, spec.datatype)
        result = self.request.infer(feed, share_inputs=True)
        out: Outputs = {}
        for name in output_names:
            arr = np.asarray(result[self.outputs[name]])
            spec = self.spec.outputs[name]
            if self.pad_to:
                arr = arr[:rows]
            if spec.datatype == "BF16":
                arr = arr.view(np.uint16)
            if spec.reshape is not None:
                lead = (arr.shape[0],) if self.batched else ()
                arr = arr.reshape(lead + spec.dims)
            out[name] = arr
        return out


def _to_ov(arr: Array, wire: str) -> Any:
    if wire != "BF16":
        return np.ascontiguousarray(arr)
    t = ov.Tensor(ov.Type.bf16, list(arr.shape))
    t.data.view(np.uint16)[...] = arr
    return t


def _compile(core: Any, model: Any, s: Settings, source: Path) -> Any:
    try:
        compiled = core.compile_model(model, s.device, s.properties)
    except Exception as e:
        raise ConfigError(
            f"{source}: OpenVINO cannot compile the model for {s.device}: {_first_line(e)}"
        ) from None
    want = s.properties.get("INFERENCE_PRECISION_HINT", "f32")
    got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if want != "f32" and got != want:
        caps = ", ".join(core.get_property(s.device, "OPTIMIZATION_CAPABILITIES"))
        why = (
            f"{s.device} cannot run {want} (OpenVINO reports capabilities {caps}; it would run "
            f"{got}); a CPU with {'avx512_bf16 or AMX' if want == 'bf16' else 'AMX-FP16'} can"
        )
        if s.strict_precision:
            raise ConfigError(f"{source}: parameters: INFERENCE_PRECISION_HINT '{want}': {why}")
        log.warning("%s: parameters: HINT_BF16 is a hint: %s; running %s", source, why, got)
    return compiled
