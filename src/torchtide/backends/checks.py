"""A model file's own description of its tensors, checked against the config at load.

A config that contradicts the model (dims [5] where the graph has [4], TYPE_INT32 where it has
FP32) is refused at load with a reason naming the file, the tensor and both values, as
Triton's onnxruntime backend refuses it, instead of loading READY and failing every request.
With max_batch_size > 0 the model's first dimension is the batch: it must be variable, and
the config's dims describe the dimensions after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torchtide import dtypes
from torchtide.config import ConfigError, TensorSpec
from torchtide.wire import shape_str

Dim = int | None  # None: a variable dimension


@dataclass(frozen=True, slots=True)
class ModelTensor:
    """What the model file says about one tensor; None where it says nothing."""

    wire: str | None  # V2 datatype name
    shape: tuple[Dim, ...] | None  # None: rank unknown


def config_type(wire: str) -> str:
    return dtypes.BY_WIRE[wire].config


def config_shape(spec: TensorSpec) -> tuple[int, ...]:
    """The shape the model sees for one batch item: reshape when given, else dims."""
    return spec.reshape if spec.reshape is not None else spec.dims


def shape_text(shape: Sequence[Dim]) -> str:
    return shape_str([-1 if d is None else d for d in shape])


def declared(spec: TensorSpec, batched: bool) -> str:
    """The configured shape as the model sees it, and where it comes from."""
    body = config_shape(spec)
    field = "reshape" if spec.reshape is not None else "dims"
    if not batched:
        return f"{shape_str(body)}" + (f" ({field})" if field == "reshape" else "")
    return (
        f"{shape_str((-1, *body))} ({field} {shape_str(body)} after the batch dimension "
        "that max_batch_size > 0 adds)"
    )


def check_tensor(
    source: str, kind: str, spec: TensorSpec, model: ModelTensor, max_batch_size: int
) -> None:
    """Raise ConfigError when the config's datatype, rank or a fixed dimension contradicts
    the model's. A dimension the model leaves variable accepts any configured size."""
    where = f"{source}: {kind} '{spec.name}'"
    if model.wire is not None and model.wire != spec.datatype:
        raise ConfigError(
            f"{where}: configuration expects datatype {config_type(spec.datatype)}, "
            f"the model provides {config_type(model.wire)}"
        )
    shape = model.shape
    if not shape:  # rank unknown, or a scalar the model may broadcast: nothing to compare
        return
    batched = max_batch_size > 0
    if batched and shape[0] is not None:
        raise ConfigError(
            f"{where}: max_batch_size is {max_batch_size}, so the model's first dimension "
            f"must be a variable batch dimension, but the model's shape is {shape_text(shape)}"
        )
    body = shape[1:] if batched else shape
    want = config_shape(spec)
    if len(body) != len(want) or any(
        m is not None and m != w for m, w in zip(body, want, strict=True)
    ):
        raise ConfigError(
            f"{where}: the model expects shape {shape_text(shape)} but the configuration "
            f"specifies {declared(spec, batched)}"
        )


def check_produced(
    source: str, spec: TensorSpec, shape: Sequence[int], batched: bool, desc: str
) -> None:
    """An output the model produced for `desc` (one item when batched) against the config."""
    want = config_shape(spec)
    body = shape[1:] if batched else shape
    rows_ok = not batched or (len(shape) > 0 and shape[0] == 1)
    if (
        rows_ok
        and len(body) == len(want)
        and all(w in (-1, g) for w, g in zip(want, body, strict=True))
    ):
        return
    raise ConfigError(
        f"{source}: output '{spec.name}': for {desc} the model returned shape "
        f"{shape_str(shape)}, but the configuration specifies {declared(spec, batched)}"
    )


def check_required(source: str, missing: Sequence[str], configured: Sequence[str]) -> None:
    """Every input the model cannot run without must be in the config."""
    if missing:
        raise ConfigError(
            f"{source}: the model's input '{missing[0]}' is not in the configuration "
            f"(configuration inputs: {', '.join(configured) or 'none'})"
        )
