"""The model being optimized: its folder, config and served version, how to run a variant
exactly as the server would (the real backend, loaded from a model folder), and the PyTorch
forms the converters start from."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchtide import dtypes
from torchtide.backends.base import InstanceInfo, LoadContext, TensorInstance
from torchtide.config import ConfigError, ModelConfig, ModelSpec, read_config
from torchtide.optimize.samples import Sample, input_descs

Array = np.ndarray[Any, Any]
Outputs = dict[str, Array]


class SourceError(ValueError):
    """The model cannot be optimized as given (a usage error): the message says why."""


@dataclass(slots=True)
class Runner:
    """A variant loaded through its real backend, as one server instance would run it."""

    instance: TensorInstance
    output_names: list[str]
    model_dir: Path

    def __call__(self, inputs: Sample) -> Outputs:
        return self.instance.run(inputs, self.output_names)

    def close(self) -> None:
        self.instance.finalize()


def load_runner(model_dir: Path) -> Runner:
    """Read, complete and validate `model_dir`'s config and load its served (latest) version
    on the CPU, with the config's thread settings."""
    from torchtide.repository import prepare

    prepared = prepare(model_dir.name, model_dir, cpu_count=_cores())
    version = prepared.versions[-1]
    cfg = prepared.config
    group = cfg.instance_group[0]
    info = InstanceInfo(f"{group.name}_0", "CPU", 0)
    ctx = LoadContext(
        cfg, ModelSpec.of(cfg), model_dir, version, prepared.model_files[version], info
    )
    instance = prepared.backend.load(ctx)
    if not isinstance(instance, TensorInstance):
        raise SourceError(f"{model_dir}: backend '{cfg.backend}' is not a tensor backend")
    return Runner(instance, [t.name for t in cfg.output], model_dir)


def _cores() -> int:
    import os

    return os.cpu_count() or 1


@dataclass(slots=True)
class Source:
    """The model folder, its raw config (as written) and completed config, the served version."""

    model_dir: Path
    raw_config: ModelConfig  # config.pbtxt as written by the user (what we edit)
    config: ModelConfig  # completed with defaults, as the server sees it
    version: int
    model_file: Path
    kind: str  # torchscript | export | aoti | onnx | openvino | module
    module: Any = None  # an nn.Module given through the Python API
    arg_order: list[str] = field(default_factory=list)  # config input names by position

    @property
    def name(self) -> str:
        return self.model_dir.name

    @property
    def batched(self) -> bool:
        return int(self.config.max_batch_size) > 0

    @property
    def backend(self) -> str:
        return str(self.config.backend)

    def label_files(self) -> frozenset[str]:
        return frozenset(t.name for t in self.config.output if t.label_filename)

    def dynamic_dims(self) -> dict[str, list[int]]:
        """Per input, the indices (batch dim included) that vary."""
        out: dict[str, list[int]] = {}
        skip = 1 if self.batched else 0
        for d in input_descs(self.config):
            out[d.name] = ([0] if self.batched else []) + [
                i + skip for i, x in enumerate(d.dims) if x < 0
            ]
        return out

    # -- PyTorch forms --------------------------------------------------------------------

    def torch_module(self) -> Any:
        """A callable torch module for the converters (positional inputs in arg_order)."""
        import torch

        if self.module is not None:
            return self.module
        if self.kind == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.jit.load(str(self.model_file), map_location="cpu")  # type: ignore[no-untyped-call]
        if self.kind == "export":
            return torch.export.load(str(self.model_file)).module()  # type: ignore[no-untyped-call]
        raise SourceError(f"a {self.kind} model has no PyTorch form")

    def torch_args(self, sample: Sample) -> tuple[Any, ...]:
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in self.arg_order)

    def exported_program(self, example: Sample) -> Any:
        """A torch.export program with the batch and -1 dims dynamic."""
        import torch

        args = self.torch_args(example)
        dyn = self.dynamic_dims()
        shapes = tuple({i: torch.export.Dim.AUTO for i in dyn[n]} for n in self.arg_order)
        if self.kind == "export" and self.module is None:
            ep = torch.export.load(str(self.model_file))  # type: ignore[no-untyped-call]
            module = ep.module()
        elif self.kind == "torchscript" and self.module is None:
            from torch._export.converter import TS2EPConverter

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = TS2EPConverter(self.torch_module(), args).convert().module()
        else:
            module = self.torch_module()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(module, args, dynamic_shapes=shapes)


def open_source(model_dir: Path, module: Any = None) -> Source:
    """Read the model folder's config and find what it serves; refuse what cannot be
    optimized with a one-line reason."""
    if not model_dir.is_dir():
        raise SourceError(f"{model_dir}: no such model folder")
    raw = read_config(model_dir)
    if raw is None:
        raise SourceError(f"{model_dir}: no config.pbtxt (the optimizer edits it)")
    from torchtide.repository import prepare

    try:
        prepared = prepare(model_dir.name, model_dir, cpu_count=_cores())
    except ConfigError as e:
        raise SourceError(str(e)) from None
    cfg = prepared.config
    if cfg.backend == "python":
        raise SourceError(
            f"{model_dir}: a Python-backend model's code cannot be converted; give its tensor "
            "part as an nn.Module to torchtide.optimize.optimize(..., module=...) as a new model"
        )
    if any(dtypes.BY_CONFIG.get(_dtype_name(t)) is None for t in cfg.input):
        raise SourceError(f"{model_dir}: an input has an unsupported data type")
    version = prepared.versions[-1]
    path = prepared.model_files[version]
    kind = _kind(str(cfg.backend), path)
    src = Source(model_dir, raw, cfg, version, path, kind, module)
    src.arg_order = _arg_order(src)
    return src


def _dtype_name(t: Any) -> str:
    from tritonclient.grpc import model_config_pb2 as mc

    return str(mc.DataType.Name(t.data_type))


def _kind(backend: str, path: Path) -> str:
    if backend == "onnxruntime":
        return "onnx"
    if backend == "openvino":
        return "openvino"
    if backend != "pytorch":
        raise SourceError(f"{path}: backend '{backend}' cannot be optimized")
    from torchtide.backends import aoti

    if aoti.is_aoti_package(path):
        return "aoti"
    return "export" if path.suffix == ".pt2" else "torchscript"


def _arg_order(src: Source) -> list[str]:
    """Config input names in the order of the model's positional arguments."""
    names = [t.name for t in src.config.input]
    arg_names = _forward_args(src)
    if arg_names is None:
        return names
    from torchtide.backends.pytorch import _bind_inputs

    try:
        positions = _bind_inputs(names, arg_names, src.model_file)
    except ConfigError as e:
        raise SourceError(str(e)) from None
    order = sorted(names, key=lambda n: positions[n])
    if sorted(positions.values()) != list(range(len(names))):
        raise SourceError(
            f"{src.model_file}: the config's inputs do not fill the model's first "
            f"{len(names)} arguments ({', '.join(arg_names)}); the converters pass inputs by "
            "position"
        )
    return order


def _forward_args(src: Source) -> list[str] | None:
    if src.module is not None:
        params = inspect.signature(src.module.forward).parameters.values()
        return [
            p.name
            for p in params
            if p.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
    if src.kind == "torchscript":
        m = src.torch_module()
        return [a.name for a in m.forward.schema.arguments[1:]]
    if src.kind == "export":
        import torch

        from torchtide.backends.pytorch import ExportSignature

        ep = torch.export.load(str(src.model_file))  # type: ignore[no-untyped-call]
        return ExportSignature.of(ep).input_names
    if src.kind == "aoti":
        return [f"ARGS[{i}]" for i in range(len(src.config.input))]
    return None
