"""The variants the optimizer tries. Each one is written as a model folder (its config plus a
version `1/` with its files) that the real backend loads, so what is measured and gated is
what the server will serve. A variant that the installed packages or this CPU cannot build
says why in one line instead.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from torchtide.backends.precision import cpu_has_bf16
from torchtide.config import CONFIG_FILE, ModelConfig
from torchtide.optimize.gates import Tier
from torchtide.optimize.samples import Samples, batch_of
from torchtide.optimize.source import Source

Step = Callable[[str], None]  # reports what a long step is doing


class Unavailable(Exception):
    """The variant cannot be built here; the message is the one-line reason."""


@dataclass(slots=True)
class Built:
    model_dir: Path  # <work>/<variant>/<model name>, a loadable model folder
    build_s: float
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BuildContext:
    source: Source
    samples: Samples
    work: Path
    step: Step
    cache: dict[str, Built | Exception] = field(default_factory=dict)

    def need(self, name: str) -> Built:
        """Another variant's result (built once), e.g. int8 starts from the fp32 ONNX file."""
        if name not in self.cache:
            try:
                self.cache[name] = CANDIDATES[name].build(self)
            except Exception as e:
                self.cache[name] = e
        got = self.cache[name]
        if isinstance(got, Exception):
            raise Unavailable(f"needs the '{name}' variant, which failed: {_short(got)}")
        return got


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    tier: Tier
    what: str  # one line for the report
    check: Callable[[Source], str | None]  # why it cannot be built here, or None
    builder: Callable[[BuildContext, Path], list[str]]  # writes files into 1/, returns notes

    def build(self, ctx: BuildContext) -> Built:
        why = self.check(ctx.source)
        if why:
            raise Unavailable(why)
        t0 = time.perf_counter()
        model_dir = ctx.work / self.name / ctx.source.name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        _copy_model_files(ctx.source.model_dir, model_dir)
        notes = self.builder(ctx, model_dir)
        return Built(model_dir, time.perf_counter() - t0, notes)


def _short(e: BaseException) -> str:
    from torchtide.backends.base import one_line

    return one_line(e)


def _copy_model_files(src: Path, dst: Path) -> None:
    """Label files and warm-up data beside the config (the version folders are not copied)."""
    for p in src.iterdir():
        if p.is_file() and p.name != CONFIG_FILE and not p.name.startswith("config.pbtxt."):
            shutil.copy2(p, dst / p.name)
        elif p.is_dir() and p.name == "warmup":
            shutil.copytree(p, dst / p.name)


# --------------------------------------------------------------------------- configs

# Parameters only one backend reads; the thread count is carried over under the target's key.
_BACKEND_PARAMS = {
    "pytorch": {"INFERENCE_PRECISION", "INTRA_OP_THREAD_COUNT"},
    "onnxruntime": {
        "intra_op_thread_count",
        "inter_op_thread_count",
        "execution_mode",
        "enable_mem_pattern",
        "enable_mem_arena",
    },
    "openvino": {
        "INFERENCE_NUM_THREADS",
        "COMPILATION_NUM_THREADS",
        "NUM_STREAMS",
        "PERFORMANCE_HINT",
        "HINT_BF16",
        "ENABLE_BATCH_PADDING",
        "RESHAPE_IO_LAYERS",
        "SKIP_OV_DYNAMIC_BATCHSIZE",
        "TARGET_DEVICE",
        "CPU_EXTENSION_PATH",
        "INFERENCE_PRECISION_HINT",
    },
}
_THREAD_KEYS = (
    "NUM_THREADS",
    "INTRA_OP_THREAD_COUNT",
    "intra_op_thread_count",
    "INFERENCE_NUM_THREADS",
)


def derive_config(
    source: Source,
    backend: str,
    platform: str,
    filename: str,
    parameters: dict[str, str] | None = None,
) -> ModelConfig:
    """The user's config.pbtxt with the backend, platform and model file of a variant: the
    source backend's own parameters dropped (the thread count kept as NUM_THREADS, which every
    tensor backend reads), `parameters` set."""
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig()
    cfg.CopyFrom(source.raw_config)
    old = source.backend
    cfg.backend = backend
    cfg.platform = platform
    cfg.default_model_filename = filename
    if old != backend:
        threads = next(
            (cfg.parameters[k].string_value for k in _THREAD_KEYS if k in cfg.parameters), ""
        )
        for key in list(cfg.parameters):
            if key in _BACKEND_PARAMS.get(old, set()) or key in _THREAD_KEYS:
                del cfg.parameters[key]
        if threads:
            cfg.parameters["NUM_THREADS"].string_value = threads
        if old == "onnxruntime":
            cfg.optimization.ClearField("execution_accelerators")
            cfg.optimization.ClearField("graph")
    for key, value in (parameters or {}).items():
        cfg.parameters[key].string_value = value
    return cfg


def write_config(cfg: ModelConfig, model_dir: Path) -> None:
    (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(cfg), encoding="utf-8")


def output_order(source: Source) -> list[str]:
    """Config output names by the position of the model's flat outputs."""
    from torchtide.backends.pytorch import _index_of

    names = [t.name for t in source.config.output]
    if len(names) == 1:
        return names
    idx = {n: _index_of(n) for n in names}
    if all(i is not None for i in idx.values()):
        return sorted(names, key=lambda n: idx[n] or 0)
    return names


# --------------------------------------------------------------------------- availability


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torch_source(src: Source) -> str | None:
    if src.module is None and src.kind not in ("torchscript", "export"):
        return f"needs a PyTorch model (this one is {src.kind})"
    return None


def _check_aoti(src: Source) -> str | None:
    why = _torch_source(src)
    if why:
        return why
    from torchtide.backends.pytorch import _index_of

    named = [t.name for t in src.config.input if _index_of(t.name) is None]
    if named:
        return (
            f"an AOTInductor package binds inputs by position only, but the config names "
            f"input '{named[0]}' (use INPUT__<i>)"
        )
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "AOTInductor needs a C++ compiler (g++) on PATH"
    return None


def _check_onnx(src: Source) -> str | None:
    if src.kind == "onnx":
        return "the served model is already ONNX (it is the baseline)"
    if not (_has("onnx") and _has("onnxruntime")):
        return "needs onnx and onnxruntime (pip install 'torchtide[onnx]')"
    return _torch_source(src)


def _check_openvino(src: Source) -> str | None:
    if src.kind == "openvino":
        return "the served model is already OpenVINO (it is the baseline)"
    if not _has("openvino"):
        return "needs openvino (pip install 'torchtide[openvino]')"
    if src.kind == "aoti":
        return "an AOTInductor package cannot be converted"
    return None


def _check_onnx_int8(src: Source) -> str | None:
    if not (_has("onnx") and _has("onnxruntime")):
        return "needs onnx and onnxruntime (pip install 'torchtide[onnx]')"
    return None if src.kind == "onnx" else _torch_source(src)


def _check_openvino_int8(src: Source) -> str | None:
    if not _has("nncf"):
        return "needs nncf for OpenVINO int8 (pip install 'torchtide[optimize]')"
    return _check_openvino(src) if src.kind != "openvino" else None


def _check_bf16(src: Source) -> str | None:
    if not cpu_has_bf16():
        return (
            "this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16): bf16 would be "
            "emulated, slower than fp32"
        )
    return None


def _check_eager_bf16(src: Source) -> str | None:
    if src.kind not in ("torchscript", "export"):
        return f"bf16 autocast runs TorchScript or torch.export models (this one is {src.kind})"
    return _check_bf16(src)


def _check_openvino_bf16(src: Source) -> str | None:
    return _check_bf16(src) or _check_openvino(src)


# --------------------------------------------------------------------------- builders


def _example(ctx: BuildContext) -> Any:
    """Two rows (a batch of one specialises dims to 1 in the exporters)."""
    n = 2 if ctx.source.batched else 1
    return batch_of(ctx.samples.items, n)


def build_aoti(ctx: BuildContext, model_dir: Path) -> list[str]:
    import torch

    src = ctx.source
    ctx.step("torch.export with dynamic batch/dims")
    ep = src.exported_program(_example(ctx))
    ctx.step("AOTInductor compile with freezing (tens of seconds)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch._inductor.aoti_compile_and_package(  # type: ignore[attr-defined]
            ep,
            package_path=str(model_dir / "1" / "model.pt2"),
            inductor_configs={"freezing": True},
        )
    write_config(derive_config(src, "pytorch", "torch_aoti", "model.pt2"), model_dir)
    return ["AOTInductor package: loads without compiling (no torch.compile at load)"]


def export_onnx(src: Source, example: Any, path: Path, step: Step) -> str:
    """The legacy TorchScript-based exporter first (fast, and ONNX Runtime's fusions find its
    patterns), then the dynamo exporter. Returns which one worked."""
    import torch

    module = src.torch_module()
    args = src.torch_args(example)
    outs = output_order(src)
    dyn = src.dynamic_dims()
    axes: dict[str, dict[int, str]] = {n: {i: f"{n}_d{i}" for i in dyn[n]} for n in src.arg_order}
    if src.batched:
        axes.update({n: {0: "batch"} for n in outs})
    errors = []
    for dynamo in (False, True):
        step(f"ONNX export ({'dynamo' if dynamo else 'TorchScript'} exporter)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs: dict[str, Any] = {"dynamic_axes": axes}
                if dynamo:
                    kwargs = {
                        "dynamic_shapes": tuple(
                            {i: torch.export.Dim.AUTO for i in dyn[n]} for n in src.arg_order
                        )
                    }
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=src.arg_order,
                    output_names=outs,
                    dynamo=dynamo,
                    opset_version=18 if dynamo else 17,
                    **kwargs,
                )
            return "dynamo" if dynamo else "torchscript"
        except Exception as e:
            errors.append(_short(e))
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


def build_onnx(ctx: BuildContext, model_dir: Path) -> list[str]:
    path = model_dir / "1" / "model.onnx"
    exporter = export_onnx(ctx.source, _example(ctx), path, ctx.step)
    write_config(
        derive_config(ctx.source, "onnxruntime", "onnxruntime_onnx", "model.onnx"), model_dir
    )
    return [f"ONNX ({exporter} exporter); ONNX Runtime graph optimisation ORT_ENABLE_ALL at load"]


def convert_openvino(ctx: BuildContext) -> tuple[Any, str]:
    """An OpenVINO model named like the config: from the PyTorch model when there is one,
    else from the ONNX file."""
    import openvino as ov

    src = ctx.source
    if src.kind == "openvino":
        return ov.Core().read_model(str(src.model_file)), "the served IR"
    errors = []
    # TorchScript converts with dynamic element types: it goes through ONNX (which records
    # them); nn.Modules and torch.export programs convert directly.
    if src.module is not None or src.kind == "export":
        ctx.step("OpenVINO conversion from the PyTorch model")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = ov.convert_model(
                    src.torch_module(), example_input=src.torch_args(_example(ctx))
                )
            return _name_ports(model, src), "PyTorch"
        except Exception as e:
            errors.append(_short(e))
    ctx.step("OpenVINO conversion from ONNX")
    try:
        onnx_file = (
            src.model_file
            if src.kind == "onnx"
            else ctx.need("onnx").model_dir / "1" / "model.onnx"
        )
        return _name_ports(ov.convert_model(str(onnx_file)), src), "ONNX"
    except Exception as e:
        errors.append(_short(e))
    raise RuntimeError("OpenVINO conversion failed: " + " | ".join(errors))


def _name_ports(model: Any, src: Source) -> Any:
    for port, name in zip(model.inputs, src.arg_order, strict=False):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_order(src), strict=False):
        port.get_tensor().set_names({name})
    return model


def build_openvino(ctx: BuildContext, model_dir: Path) -> list[str]:
    import openvino as ov

    model, origin = convert_openvino(ctx)
    ov.save_model(model, str(model_dir / "1" / "model.xml"), compress_to_fp16=False)
    write_config(derive_config(ctx.source, "openvino", "", "model.xml"), model_dir)
    return [f"OpenVINO IR f32 (converted from {origin})"]


def build_eager_bf16(ctx: BuildContext, model_dir: Path) -> list[str]:
    src = ctx.source
    shutil.copy2(src.model_file, model_dir / "1" / src.model_file.name)
    cfg = derive_config(
        src,
        "pytorch",
        str(src.raw_config.platform),
        src.model_file.name,
        {"INFERENCE_PRECISION": "bf16"},
    )
    write_config(cfg, model_dir)
    return ["the served model under torch.autocast(bfloat16)"]


def build_openvino_bf16(ctx: BuildContext, model_dir: Path) -> list[str]:
    fp32 = ctx.need("openvino").model_dir / "1"
    for f in ("model.xml", "model.bin"):
        shutil.copy2(fp32 / f, model_dir / "1" / f)
    write_config(
        derive_config(
            ctx.source, "openvino", "", "model.xml", {"INFERENCE_PRECISION_HINT": "bf16"}
        ),
        model_dir,
    )
    return ["OpenVINO IR f32 run with the bf16 inference precision hint"]


def _build_onnx_int8(ctx: BuildContext, model_dir: Path) -> list[str]:
    from torchtide.optimize.quantize import quantize_onnx

    return quantize_onnx(ctx, model_dir)


def _build_openvino_int8(ctx: BuildContext, model_dir: Path) -> list[str]:
    from torchtide.optimize.quantize import quantize_openvino

    return quantize_openvino(ctx, model_dir)


def _eager_check(src: Source) -> str | None:
    return None


def _eager_build(ctx: BuildContext, model_dir: Path) -> list[str]:
    raise Unavailable("the baseline is the served version itself")


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate(
            "eager",
            Tier.LOSSLESS,
            "the served version, fp32 (baseline)",
            _eager_check,
            _eager_build,
        ),
        Candidate(
            "aoti",
            Tier.LOSSLESS,
            "torch.export + AOTInductor package, freezing (torch_aoti)",
            _check_aoti,
            build_aoti,
        ),
        Candidate(
            "onnx", Tier.LOSSLESS, "ONNX export + ONNX Runtime fp32", _check_onnx, build_onnx
        ),
        Candidate("openvino", Tier.LOSSLESS, "OpenVINO IR f32", _check_openvino, build_openvino),
        Candidate(
            "eager-bf16",
            Tier.BF16,
            "served model under bf16 autocast",
            _check_eager_bf16,
            build_eager_bf16,
        ),
        Candidate(
            "openvino-bf16",
            Tier.BF16,
            "OpenVINO with the bf16 precision hint",
            _check_openvino_bf16,
            build_openvino_bf16,
        ),
        Candidate(
            "onnx-int8",
            Tier.INT8,
            "ONNX Runtime int8 (static QDQ for convolutions, dynamic per-channel else)",
            _check_onnx_int8,
            _build_onnx_int8,
        ),
        Candidate(
            "openvino-int8",
            Tier.INT8,
            "OpenVINO int8 (NNCF post-training, calibrated)",
            _check_openvino_int8,
            _build_openvino_int8,
        ),
    )
}

TIERS_FOR_PRECISION = {
    "fp32": (Tier.LOSSLESS,),
    "bf16": (Tier.LOSSLESS, Tier.BF16),
    "int8": (Tier.LOSSLESS, Tier.BF16, Tier.INT8),
}
