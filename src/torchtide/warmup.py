"""`model_warmup`: run the configured samples on every instance before a model is READY."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np

from torchtide.backends.base import Timing, Work
from torchtide.config import ConfigError, ModelConfig, dtype_of
from torchtide.errors import ServerError
from torchtide.instances import InstanceRunner
from torchtide.wire import decode_bytes_elements

Array = np.ndarray[Any, Any]


def sample_inputs(cfg: ModelConfig, warmup: Any, model_dir: Path) -> dict[str, Array]:
    """Build one warmup sample's inputs, `batch_size` rows when the model batches."""
    batched = cfg.max_batch_size > 0
    out: dict[str, Array] = {}
    rng = np.random.default_rng(0)
    for name, spec in warmup.inputs.items():
        where = f"model_warmup '{warmup.name}' input '{name}'"
        d = dtype_of(spec.data_type)
        if d is None:
            raise ConfigError(f"{where}: data_type is missing")
        dims = [int(x) for x in spec.dims]
        if any(x < 1 for x in dims):
            raise ConfigError(f"{where}: dims must be concrete sizes, got {dims}")
        count = math.prod(dims)
        kind = spec.WhichOneof("input_data_type")
        if kind == "input_data_file":
            path = model_dir / "warmup" / spec.input_data_file
            try:
                raw = path.read_bytes()
            except OSError as e:
                raise ConfigError(f"{where}: cannot read '{path}': {e}") from None
            if d.wire == "BYTES":
                try:
                    arr = decode_bytes_elements(name, dims, raw)
                except ServerError as e:
                    raise ConfigError(f"{where}: '{path}': {e.message}") from None
            else:
                if len(raw) != count * d.itemsize:
                    raise ConfigError(
                        f"{where}: '{path}' has {len(raw)} bytes, dims {dims} need "
                        f"{count * d.itemsize}"
                    )
                arr = np.frombuffer(raw, dtype=d.numpy).reshape(dims)
        elif kind == "random_data" and d.wire not in ("BYTES", "BOOL"):
            if d.numpy.kind == "f" and d.wire != "BF16":
                arr = rng.random(dims).astype(d.numpy)
            else:
                arr = rng.integers(0, 8, size=dims).astype(d.numpy)
        elif d.wire == "BYTES":  # Triton: random STRING data is zero data
            arr = np.full(dims, b"", dtype=np.object_)
        else:
            arr = np.zeros(dims, dtype=d.numpy)
        if batched:
            arr = np.repeat(arr[np.newaxis, ...], warmup.batch_size, axis=0)
        out[name] = arr
    return out


async def warm_up(cfg: ModelConfig, runners: list[InstanceRunner], model_dir: Path) -> None:
    """Every sample, `count` times (0 means once), on every instance. A failure fails the load."""
    outputs = [t.name for t in cfg.output]
    for w in cfg.model_warmup:
        inputs = sample_inputs(cfg, w, model_dir)
        rows = int(w.batch_size) if cfg.max_batch_size > 0 else 1
        for _ in range(max(1, int(w.count))):
            results = await asyncio.gather(
                *(
                    r.submit([Work(inputs, rows, outputs, f"warmup:{w.name}")], Timing())
                    for r in runners
                )
            )
            for runner, res in zip(runners, results, strict=True):
                if isinstance(res[0], ServerError):
                    raise ConfigError(
                        f"model_warmup '{w.name}' failed on instance '{runner.info.name}': "
                        f"{res[0].message}"
                    )
