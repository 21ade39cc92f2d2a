"""Model configuration: Triton's own `ModelConfig` protobuf, parsed from config.pbtxt,
completed with Triton's semantic defaults and validated with messages that name the field.

There is no second schema: `ModelSpec` is a small read-only view precomputed for the hot path.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from torchtide import dtypes

ModelConfig = Any  # mc.ModelConfig; protobuf messages are untyped for mypy

CONFIG_FILE = "config.pbtxt"

# platform <-> backend, and each backend's default model file.
PLATFORM_BACKEND = {
    "pytorch_libtorch": "pytorch",
    "torch_export": "pytorch",
    "torch_aoti": "pytorch",
    "onnxruntime_onnx": "onnxruntime",
    "python": "python",
}
BACKEND_PLATFORM = {"pytorch": "pytorch_libtorch", "onnxruntime": "onnxruntime_onnx", "python": ""}
DEFAULT_FILENAMES = {
    "pytorch": "model.pt",
    "onnxruntime": "model.onnx",
    "python": "model.py",
    "openvino": "model.xml",
}
# What a version folder's files say about the backend when the config does not.
SUFFIX_BACKEND = {
    ".py": "python",
    ".pt": "pytorch",
    ".pt2": "pytorch",
    ".onnx": "onnxruntime",
    ".xml": "openvino",
}
FILE_BACKEND = {f"model{suffix}": backend for suffix, backend in SUFFIX_BACKEND.items()}


class ConfigError(Exception):
    """A configuration problem; the message names the file, the field and what is wrong."""


def new_config(name: str) -> ModelConfig:
    return mc.ModelConfig(name=name)


def parse_text(text: str, source: str) -> ModelConfig:
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: {_explain_parse_error(str(e))}") from None
    return cfg


def parse_json(text: str, source: str) -> ModelConfig:
    cfg = mc.ModelConfig()
    try:
        json_format.Parse(text, cfg)
    except json_format.ParseError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def read_config(model_dir: Path) -> ModelConfig | None:
    """Parse `<model>/config.pbtxt`, or None when there is none (auto-complete may still work)."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse_text(text, str(path))


def to_json_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The config as Triton's HTTP config endpoint shows it (enum names, int64 as numbers)."""
    d: dict[str, Any] = json_format.MessageToDict(
        cfg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_strings_to_numbers(d)
    return d


def _int64_strings_to_numbers(node: Any) -> None:
    # proto3 JSON writes int64 as strings; Triton's HTTP config endpoint writes numbers.
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str) and _INT_RE.fullmatch(v) and k not in _STRING_KEYS:
                node[k] = int(v)
            else:
                _int64_strings_to_numbers(v)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, str) and _INT_RE.fullmatch(v):
                node[i] = int(v)
            else:
                _int64_strings_to_numbers(v)


_INT_RE = re.compile(r"-?\d+")
_STRING_KEYS = {"name", "string_value", "label_filename", "default_model_filename", "key"}


def _names(full_name: str, message: bool) -> list[str]:
    """The field names of a ModelConfig message type, or the value names of an enum type."""
    pool = mc.DESCRIPTOR.pool
    try:
        if message:
            return [f.name for f in pool.FindMessageTypeByName(full_name).fields]
        return [v.name for v in pool.FindEnumTypeByName(full_name).values]
    except KeyError:
        return []


def _did_you_mean(word: str, names: list[str]) -> str:
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _explain_parse_error(msg: str) -> str:
    m = re.match(r'(\d+):(\d+) : Message type "([\w.]+)" has no field named "(\w+)"', msg)
    if m:
        line, col, typ, field = m.groups()
        hint = _did_you_mean(field, _names(typ, message=True))
        return f"line {line}:{col}: unknown field '{field}' in {typ}{hint}"
    m = re.match(r'(\d+):(\d+) : .*Enum type "([\w.]+)" has no value named (\w+)', msg)
    if m:
        line, col, typ, value = m.groups()
        hint = _did_you_mean(value, _names(typ, message=False))
        return f"line {line}:{col}: invalid value '{value}' for {typ}{hint}"
    m = re.match(r"(\d+):(\d+) : (.*)", msg, re.S)
    if m:
        line, col, rest = m.groups()
        return f"line {line}:{col}: syntax error: {rest.strip()}"
    return f"syntax error: {msg}"


# --------------------------------------------------------------------------- completion


def config_source(model_dir: Path, override: bool, from_file: bool) -> str:
    """What error messages name as the config: the file, or the folder when there is none."""
    if override:
        return f"{model_dir} (config from the load request)"
    if from_file:
        return str(model_dir / CONFIG_FILE)
    return f"{model_dir} (no {CONFIG_FILE})"


def resolve_backend(
    cfg: ModelConfig, model_dir: Path, versions: list[int], source: str | None = None
) -> str:
    """The backend named by `backend`/`platform`, else guessed from the model files."""
    source = source or str(model_dir / CONFIG_FILE)
    if cfg.backend:
        return str(cfg.backend)
    if cfg.platform:
        backend = PLATFORM_BACKEND.get(cfg.platform)
        if backend is None:
            raise ConfigError(
                f"{source}: platform: unsupported platform '{cfg.platform}' "
                f"(supported: {', '.join(sorted(PLATFORM_BACKEND))})"
            )
        return backend
    names = [cfg.default_model_filename] if cfg.default_model_filename else list(FILE_BACKEND)
    for v in sorted(versions, reverse=True):
        for fname in names:
            backend = SUFFIX_BACKEND.get(Path(fname).suffix)
            if backend is not None and (model_dir / str(v) / fname).exists():
                return backend
    raise ConfigError(
        f"{source}: backend: neither 'backend' nor 'platform' is set and no "
        f"model file ({', '.join(FILE_BACKEND)}) was found in the version folders"
    )


# Tensor backends on CPU with no instance_group: this many instances (Triton's own default
# for ONNX Runtime on CPU), sharing the cores between them. On 2 cores, 2 instances x 1 thread
# served ResNet-18 best (README, "Defaults chosen").
CPU_TENSOR_INSTANCES = 2
THREAD_PARAMS = {
    "pytorch": "NUM_THREADS",
    "onnxruntime": "intra_op_thread_count",
    "openvino": "INFERENCE_NUM_THREADS",
}
CPU_ONLY_BACKENDS = ("openvino",)  # KIND_AUTO means KIND_CPU even with GPUs (Triton's rule)


def complete_defaults(
    cfg: ModelConfig, model_name: str, backend: str, gpu_count: int, cpu_count: int = 0
) -> None:
    """Fill what Triton fills: name, backend/platform, version policy, instance groups,
    default file name, preferred batch sizes, pinned-memory flags."""
    auto_gpu = gpu_count > 0 and backend not in CPU_ONLY_BACKENDS
    if not cfg.instance_group and not auto_gpu and backend in THREAD_PARAMS:
        _cpu_layout(cfg, backend, cpu_count or os.cpu_count() or 1)
    if not cfg.name:
        cfg.name = model_name
    if not cfg.backend:
        cfg.backend = backend
    if not cfg.platform and backend in ("pytorch", "onnxruntime"):
        cfg.platform = BACKEND_PLATFORM[backend]
    if not cfg.HasField("version_policy"):
        cfg.version_policy.latest.num_versions = 1
    if not cfg.default_model_filename:
        cfg.default_model_filename = DEFAULT_FILENAMES.get(backend, "")
    if not cfg.instance_group:
        cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    for i, group in enumerate(cfg.instance_group):
        if not group.name:
            group.name = f"{cfg.name}_{i}"
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = (
                mc.ModelInstanceGroup.KIND_GPU if auto_gpu else mc.ModelInstanceGroup.KIND_CPU
            )
        if group.count == 0:
            group.count = 1
        if group.kind == mc.ModelInstanceGroup.KIND_GPU and not group.gpus:
            group.gpus.extend(range(gpu_count))
    db = cfg.dynamic_batching
    if cfg.HasField("dynamic_batching") and not db.preferred_batch_size and cfg.max_batch_size > 0:
        db.preferred_batch_size.append(cfg.max_batch_size)
    if not cfg.optimization.HasField("input_pinned_memory"):
        cfg.optimization.input_pinned_memory.enable = True
    if not cfg.optimization.HasField("output_pinned_memory"):
        cfg.optimization.output_pinned_memory.enable = True


def _cpu_layout(cfg: ModelConfig, backend: str, cores: int) -> None:
    """Beyond Triton: several instances splitting the cores keep them busy under load without
    the instances' threads fighting each other (or the event loop) for the same cores."""
    count = max(1, min(CPU_TENSOR_INSTANCES, cores))
    cfg.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)
    key = THREAD_PARAMS[backend]
    if key not in cfg.parameters and "NUM_THREADS" not in cfg.parameters:
        cfg.parameters[key].string_value = str(max(1, cores // count))


# --------------------------------------------------------------------------- validation


def validate(
    cfg: ModelConfig, source: str, gpu_count: int, model_dir: Path | None = None
) -> None:
    """Raise ConfigError naming the first problem found."""

    def fail(field: str, what: str) -> None:
        raise ConfigError(f"{source}: {field}: {what}")

    if cfg.max_batch_size < 0:
        fail("max_batch_size", f"must be >= 0, got {cfg.max_batch_size}")
    if cfg.HasField("sequence_batching"):
        fail("sequence_batching", "the sequence batcher is not supported by torchtide yet")
    if cfg.HasField("ensemble_scheduling"):
        fail("ensemble_scheduling", "ensembles are not supported by torchtide yet")
    if not cfg.input:
        fail(
            "input",
            "the model has no inputs (give them in config.pbtxt or a model file that names them)",
        )
    if not cfg.output:
        fail(
            "output",
            "the model has no outputs (give them in config.pbtxt or a model file that names them)",
        )
    for kind, tensors in (("input", cfg.input), ("output", cfg.output)):
        seen: set[str] = set()
        for t in tensors:
            where = f"{kind} '{t.name}'"
            if not t.name:
                fail(kind, "a tensor has no name")
            if t.name in seen:
                fail(where, "is declared twice")
            seen.add(t.name)
            if t.data_type == mc.TYPE_INVALID:
                fail(f"{where} data_type", "is missing or TYPE_INVALID")
            if not t.dims and not (t.HasField("reshape") and not t.reshape.shape):
                fail(f"{where} dims", "must have at least one dimension")
            for d in t.dims:
                if d == 0 or d < -1:
                    fail(f"{where} dims", f"dimension {d} is invalid (use a positive size or -1)")
            if t.HasField("reshape"):
                _check_reshape(t, fail, where)
            if kind == "output" and t.label_filename:
                p = (model_dir or Path(source).parent) / t.label_filename
                if not p.is_file():
                    fail(f"{where} label_filename", f"file '{p}' not found")
    if cfg.HasField("dynamic_batching"):
        _validate_batching(cfg, fail)
    for group in cfg.instance_group:
        where = f"instance_group '{group.name}'"
        if group.count < 0:
            fail(f"{where} count", f"must be >= 1, got {group.count}")
        if group.kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
            fail(f"{where} gpus", "KIND_CPU instances cannot list gpus")
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            if cfg.backend in CPU_ONLY_BACKENDS:
                fail(f"{where} kind", f"backend '{cfg.backend}' runs on KIND_CPU only")
            if gpu_count == 0:
                fail(f"{where} kind", "KIND_GPU requested but no CUDA GPU is available")
            for g in group.gpus:
                if g < 0 or g >= gpu_count:
                    fail(f"{where} gpus", f"GPU {g} does not exist ({gpu_count} available)")
    vp = cfg.version_policy
    if vp.HasField("latest") and vp.latest.num_versions < 1:
        fail("version_policy.latest.num_versions", f"must be >= 1, got {vp.latest.num_versions}")
    if vp.HasField("specific") and not vp.specific.versions:
        fail("version_policy.specific.versions", "lists no versions")
    if cfg.model_transaction_policy.decoupled and cfg.backend != "python":
        fail("model_transaction_policy.decoupled", "only Python-backend models can be decoupled")
    for w in cfg.model_warmup:
        _validate_warmup(cfg, w, fail)


def _check_reshape(t: Any, fail: Any, where: str) -> None:
    dims, shape = list(t.dims), list(t.reshape.shape)
    if (-1 in dims) != (-1 in shape):
        fail(f"{where} reshape", "variable dimensions (-1) must appear in both dims and reshape")
    if -1 not in dims:
        n_dims, n_shape = _prod(dims), _prod(shape)
        if n_dims != n_shape:
            fail(f"{where} reshape", f"has {n_shape} elements but dims {dims} have {n_dims}")


def _prod(xs: list[int]) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def _validate_batching(cfg: ModelConfig, fail: Any) -> None:
    db = cfg.dynamic_batching
    if cfg.max_batch_size == 0:
        fail(
            "dynamic_batching", "requires max_batch_size > 0 (max_batch_size is 0: batching is off)"
        )
    for p in db.preferred_batch_size:
        if p < 1 or p > cfg.max_batch_size:
            fail(
                "dynamic_batching.preferred_batch_size",
                f"{p} is outside 1..max_batch_size ({cfg.max_batch_size})",
            )
    levels = db.priority_levels
    if levels and not 1 <= db.default_priority_level <= levels:
        fail(
            "dynamic_batching.default_priority_level",
            f"must be in 1..priority_levels ({levels}), got {db.default_priority_level}",
        )
    if not levels and db.default_priority_level:
        fail("dynamic_batching.default_priority_level", "is set but priority_levels is 0")
    for level in db.priority_queue_policy:
        if not 1 <= level <= levels:
            fail(
                "dynamic_batching.priority_queue_policy",
                f"level {level} is outside 1..priority_levels ({levels})",
            )


def _validate_warmup(cfg: ModelConfig, w: Any, fail: Any) -> None:
    where = f"model_warmup '{w.name}'"
    if w.batch_size < 1:
        fail(f"{where} batch_size", "must be >= 1")
    if cfg.max_batch_size == 0 and w.batch_size != 1:
        fail(f"{where} batch_size", "must be 1 when max_batch_size is 0")
    if cfg.max_batch_size and w.batch_size > cfg.max_batch_size:
        fail(f"{where} batch_size", f"exceeds max_batch_size ({cfg.max_batch_size})")
    names = {t.name for t in cfg.input}
    for name in w.inputs:
        if name not in names:
            fail(f"{where} inputs", f"'{name}' is not an input of the model")


# --------------------------------------------------------------------------- hot-path view


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # wire name
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = False
    ragged: bool = False
    reshape: tuple[int, ...] | None = None
    label_filename: str = ""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the hot path needs from a validated config, computed once per load."""

    name: str
    backend: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    required_inputs: frozenset[str]
    batching: bool

    @property
    def platform(self) -> str:
        return BACKEND_PLATFORM.get(self.backend, self.backend) or self.backend

    @classmethod
    def of(cls, cfg: ModelConfig) -> ModelSpec:
        def spec(t: Any, is_input: bool) -> TensorSpec:
            d = dtypes.from_config(mc.DataType.Name(t.data_type))
            assert d is not None
            return TensorSpec(
                name=t.name,
                datatype=d.wire,
                dims=tuple(t.dims),
                optional=bool(t.optional) if is_input else False,
                ragged=bool(t.allow_ragged_batch) if is_input else False,
                reshape=tuple(t.reshape.shape) if t.HasField("reshape") else None,
                label_filename="" if is_input else t.label_filename,
            )

        inputs = {t.name: spec(t, True) for t in cfg.input}
        return cls(
            name=cfg.name,
            backend=cfg.backend,
            max_batch_size=int(cfg.max_batch_size),
            inputs=inputs,
            outputs={t.name: spec(t, False) for t in cfg.output},
            required_inputs=frozenset(n for n, s in inputs.items() if not s.optional),
            batching=cfg.HasField("dynamic_batching"),
        )


def parameter(cfg: ModelConfig, key: str, default: str = "") -> str:
    """A `parameters { key: ... value { string_value: ... } }` entry."""
    if key in cfg.parameters:
        return str(cfg.parameters[key].string_value)
    return default


def datatype_enum(wire: str) -> int:
    d = dtypes.from_wire(wire)
    assert d is not None
    return int(mc.DataType.Value(d.config))
