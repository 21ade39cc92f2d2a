"""Sample inputs for the optimizer: from the config's `model_warmup`, a data file (the bench's
perf_analyzer JSON format, or `.npz`), the Python API, or generated from the config's dims.

A sample is one request's inputs, one row when the model batches. Only samples that came from
the user's data are `real`; lossy precision tiers are never selected on anything else.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from torchtide import dtypes
from torchtide.config import ConfigError, ModelConfig

Array = np.ndarray[Any, Any]
Sample = dict[str, Array]

DEFAULT_GENERATED = 32  # random samples when the user gives none
GENERATED_SIZES = (8, 16)  # sizes given to -1 dims of generated samples, in turn
MIN_REAL_FOR_LOSSY = 8  # fewer real samples than this cannot select a lossy variant

RANDOM_WARNING = (
    "no sample inputs given: using random data generated from the config; accuracy on random "
    "data says little, so lossy (bf16/int8) variants will not be selected (give --samples)"
)


class SampleError(ValueError):
    """Samples that cannot be used (a usage error)."""


@dataclass(slots=True)
class Samples:
    items: list[Sample]
    real: bool  # from the user's data (not generated, not zero/random warm-up data)
    origin: str  # where they came from, for the report

    def shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        return [tuple(a.shape for a in s.values()) for s in self.items]


@dataclass(frozen=True, slots=True)
class InputDesc:
    name: str
    wire: str
    dims: tuple[int, ...]  # without the batch dimension


def input_descs(cfg: ModelConfig) -> list[InputDesc]:
    out = []
    for t in cfg.input:
        d = dtypes.from_config(mc.DataType.Name(t.data_type))
        if d is None:
            raise ConfigError(f"input '{t.name}': unsupported data type")
        dims = tuple(t.reshape.shape) if t.HasField("reshape") else tuple(t.dims)
        out.append(InputDesc(t.name, d.wire, tuple(int(x) for x in dims)))
    return out


def check(cfg: ModelConfig, items: Sequence[Mapping[str, Any]], origin: str) -> list[Sample]:
    """Every sample has every input, with the config's data type and rank (one row if batched)."""
    batched = cfg.max_batch_size > 0
    descs = input_descs(cfg)
    if not items:
        raise SampleError(f"{origin}: no samples")
    out: list[Sample] = []
    for i, item in enumerate(items):
        sample: Sample = {}
        for d in descs:
            if d.name not in item:
                raise SampleError(f"{origin}: sample {i} has no input '{d.name}'")
            arr = np.asarray(item[d.name])
            want = dtypes.BY_WIRE[d.wire].numpy
            if d.wire == "BYTES":
                raise SampleError(f"{origin}: input '{d.name}' is BYTES; only tensor models")
            if arr.dtype != want:
                arr = arr.astype(want)
            rank = len(d.dims) + (1 if batched else 0)
            if batched and arr.ndim == len(d.dims):
                arr = arr[np.newaxis, ...]
            if arr.ndim != rank or (batched and arr.shape[0] != 1):
                raise SampleError(
                    f"{origin}: sample {i} input '{d.name}' has shape {list(arr.shape)}; the "
                    f"config wants {[1] if batched else []}{list(d.dims)} (one row)"
                )
            dims = arr.shape[1:] if batched else arr.shape
            for got, want_dim in zip(dims, d.dims, strict=True):
                if want_dim >= 0 and got != want_dim:
                    raise SampleError(
                        f"{origin}: sample {i} input '{d.name}' has shape {list(arr.shape)}, "
                        f"the config's dims are {list(d.dims)}"
                    )
            sample[d.name] = np.ascontiguousarray(arr)
        out.append(sample)
    return out


def rows(batch: Sample, batched: bool) -> list[Sample]:
    """One sample per row of a batched input set."""
    if not batched:
        return [batch]
    n = next(iter(batch.values())).shape[0]
    return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(n)]


def from_warmup(cfg: ModelConfig, model_dir: Path) -> Samples | None:
    """The config's `model_warmup` samples; real only when every input reads a data file."""
    from torchtide.warmup import sample_inputs

    if not cfg.model_warmup:
        return None
    items: list[Sample] = []
    real = True
    for w in cfg.model_warmup:
        for spec in w.inputs.values():
            real &= spec.WhichOneof("input_data_type") == "input_data_file"
        items.extend(rows(sample_inputs(cfg, w, model_dir), cfg.max_batch_size > 0))
    return Samples(check(cfg, items, "model_warmup"), real, "model_warmup")


def from_file(cfg: ModelConfig, path: Path) -> Samples:
    """A perf_analyzer/bench JSON data file (`{"data": [...]}`) or an `.npz` of arrays named
    after the inputs whose first dimension indexes the samples."""
    if not path.is_file():
        raise SampleError(f"--samples {path}: no such file")
    batched = cfg.max_batch_size > 0
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        counts = {a.shape[0] for a in arrays.values() if a.ndim}
        if len(counts) != 1:
            raise SampleError(f"--samples {path}: arrays must share their first dimension")
        n = counts.pop()
        items = [
            {k: (a[i : i + 1] if batched else a[i]) for k, a in arrays.items()} for i in range(n)
        ]
        return Samples(check(cfg, items, str(path)), True, str(path))
    from torchtide.bench.inputs import Batching, ModelInfo, TensorSpec, WorkloadError

    specs = [
        TensorSpec(d.name, d.wire, ([-1] if batched else []) + list(d.dims))
        for d in input_descs(cfg)
    ]
    info = ModelInfo(cfg.name, "", specs, [], cfg.max_batch_size)
    try:
        from torchtide.bench.inputs import data_file_sets

        sets = data_file_sets(info, Batching(batched, 1, {}), path)
    except WorkloadError as e:
        raise SampleError(str(e).replace("--input-data", "--samples")) from None
    items = [{t.name: t.array for t in s} for s in sets]
    return Samples(check(cfg, items, str(path)), True, str(path))


def generated(cfg: ModelConfig, count: int = DEFAULT_GENERATED, seed: int = 0) -> Samples:
    """Random data of the config's shapes: floats ~ N(0, 1), integers in [0, 100), -1 dims
    sized 8 and 16 in turn so that every dynamic shape path runs."""
    rng = np.random.default_rng(seed)
    batched = cfg.max_batch_size > 0
    sizes = itertools.cycle(GENERATED_SIZES)
    items: list[Sample] = []
    for _ in range(count):
        size = next(sizes)
        sample: Sample = {}
        for d in input_descs(cfg):
            shape = [size if x < 0 else x for x in d.dims]
            if batched:
                shape = [1, *shape]
            np_dtype = dtypes.BY_WIRE[d.wire].numpy
            if d.wire == "BOOL":
                arr: Array = rng.integers(0, 2, size=shape).astype(np.bool_)
            elif np_dtype.kind == "f":
                arr = rng.standard_normal(size=shape).astype(np_dtype)
            elif d.wire == "BYTES":
                raise SampleError(f"input '{d.name}' is BYTES; only tensor models")
            else:
                arr = rng.integers(0, 100, size=shape).astype(np_dtype)
            sample[d.name] = arr
        items.append(sample)
    return Samples(items, False, f"generated from the config ({count} random samples)")


def stack(items: Sequence[Sample]) -> Sample:
    """Concatenate samples of one shape along the batch dimension."""
    return {k: np.concatenate([s[k] for s in items], axis=0) for k in items[0]}


def by_shape(items: Sequence[Sample]) -> list[list[Sample]]:
    """Samples grouped by their input shapes, largest group first."""
    groups: dict[tuple[tuple[int, ...], ...], list[Sample]] = {}
    for s in items:
        groups.setdefault(tuple(a.shape for a in s.values()), []).append(s)
    return sorted(groups.values(), key=len, reverse=True)


def batch_of(items: Sequence[Sample], size: int) -> Sample:
    """A batch of `size` rows from the largest same-shape group (rows repeated if it is short)."""
    group = by_shape(items)[0]
    chosen = [group[i % len(group)] for i in range(size)]
    return stack(chosen)
