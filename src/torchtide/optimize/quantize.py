"""int8 variants, calibrated on the samples: ONNX Runtime (static QDQ per-channel for graphs
with convolutions, dynamic per-channel MatMul/Gemm otherwise -- dynamic int8 convolutions ran
at 0.3x eager, research note section 3) and OpenVINO through NNCF post-training quantization."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchtide.optimize.candidates import (
    BuildContext,
    derive_config,
    write_config,
)

CALIBRATION_MAX = 300  # samples used for calibration at most


def _cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        return set()


def _onnx_source(ctx: BuildContext) -> Path:
    if ctx.source.kind == "onnx":
        return ctx.source.model_file
    return ctx.need("onnx").model_dir / "1" / "model.onnx"


def _op_types(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {n.op_type for n in model.graph.node}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger ("Please consider to run
    pre-processing ..."): keep its chatter off the terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Reader:
    """onnxruntime's CalibrationDataReader over the samples (one row each)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = iter(items)

    def get_next(self) -> dict[str, Any] | None:
        return next(self.items, None)


def quantize_onnx(ctx: BuildContext, model_dir: Path) -> list[str]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    src = _onnx_source(ctx)
    out = model_dir / "1" / "model.onnx"
    ops = _op_types(src)
    vnni = bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})
    with warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        if "Conv" in ops:
            ctx.step(f"ONNX Runtime static int8 calibration on {len(ctx.samples.items)} samples")
            reader: CalibrationDataReader = _Reader(  # type: ignore[assignment]
                ctx.samples.items[:CALIBRATION_MAX]
            )
            quantize_static(
                str(src),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=not vnni,
            )
            how = "static QDQ, per-channel weights, calibrated"
        else:
            import onnx

            ctx.step("ONNX Runtime dynamic int8 (per-channel weights)")
            quantize_dynamic(
                str(src),
                str(out),
                per_channel=True,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                reduce_range=not vnni,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            how = "dynamic, per-channel MatMul/Gemm weights"
    write_config(
        derive_config(ctx.source, "onnxruntime", "onnxruntime_onnx", "model.onnx"), model_dir
    )
    note = "" if vnni else " (no VNNI on this CPU: reduce_range, slower int8 kernels)"
    return [f"ONNX Runtime int8, {how}{note}"]


def quantize_openvino(ctx: BuildContext, model_dir: Path) -> list[str]:
    import nncf
    import openvino as ov

    if ctx.source.kind == "openvino":
        model = ov.Core().read_model(str(ctx.source.model_file))
    else:
        fp32 = ctx.need("openvino").model_dir / "1" / "model.xml"
        model = ov.Core().read_model(str(fp32))
    ops = {op.get_type_name() for op in model.get_ops()}
    # NNCF's transformer type keeps attention and normalisation in float; BERT from PyTorch
    # has ScaledDotProductAttention, not Softmax, so anything without convolutions gets it.
    transformer = not any(op.startswith(("Convolution", "GroupConvolution")) for op in ops)
    items = ctx.samples.items[:CALIBRATION_MAX]
    ctx.step(f"NNCF int8 calibration on {len(items)} samples")
    kwargs: dict[str, Any] = {"subset_size": len(items)}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        kwargs["preset"] = nncf.QuantizationPreset.MIXED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(model, nncf.Dataset(items), **kwargs)
    ov.save_model(quantized, str(model_dir / "1" / "model.xml"), compress_to_fp16=False)
    write_config(derive_config(ctx.source, "openvino", "", "model.xml"), model_dir)
    kind = "transformer model type, mixed preset" if transformer else "default preset"
    return [f"OpenVINO int8 via NNCF {nncf.__version__}, {kind}, {len(items)} samples"]
