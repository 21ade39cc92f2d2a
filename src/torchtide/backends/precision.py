"""`INFERENCE_PRECISION` (torchtide's pytorch backend parameter; Triton's pytorch backend has
none): run the model under `torch.autocast` in the instance thread, outputs cast back to the
config's data types."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from torchtide.config import ConfigError, ModelConfig, parameter

PARAMETER = "INFERENCE_PRECISION"
_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def autocast_dtype(cfg: ModelConfig, device: torch.device, source: str) -> torch.dtype | None:
    """The autocast dtype the config asks for, or None; refused where the device lacks it."""
    value = parameter(cfg, PARAMETER).strip().lower()
    if value not in _DTYPES and value:
        raise ConfigError(
            f"{source}: parameters: expected the parameter '{PARAMETER}' to be fp32/bf16/fp16, "
            f"got '{value}'"
        )
    dtype = _DTYPES.get(value)
    if dtype is None:
        return None
    where = f"{source}: parameters: {PARAMETER} '{value}'"
    if device.type == "cpu":
        if dtype is torch.float16:
            raise ConfigError(f"{where}: fp16 autocast is for GPU instances; use bf16 on CPU")
        if not cpu_has_bf16():
            raise ConfigError(
                f"{where}: this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 among "
                "its flags), so bf16 would be emulated and slower than fp32"
            )
    elif dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{where}: GPU {device.index} has no bf16 support; use fp16")
    return dtype


def cpu_has_bf16() -> bool:
    """x86 avx512_bf16 / amx_bf16, or Arm's bf16, in /proc/cpuinfo; else torch's own probe."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        flags = set()
    if flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        return True
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
