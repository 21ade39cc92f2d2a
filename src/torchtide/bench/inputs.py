"""The workload: tensor specs from a model's metadata, and the input sets sent to it (random
data, perf_analyzer JSON data files, text files for BYTES inputs)."""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# V2 datatype -> numpy dtype (BF16 travels as its raw 16 bits; BYTES as Python bytes objects).
NP_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BF16": np.uint16,
    "BYTES": np.object_,
}


class WorkloadError(ValueError):
    """A workload that cannot be built from what the user gave (a usage error)."""


@dataclass(slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  # as the metadata gives it, -1 for variable dims (batch dim included)


@dataclass(slots=True)
class ModelInfo:
    name: str
    version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int | None  # None: the server has no model-configuration extension

    @classmethod
    def from_metadata(
        cls, meta: dict[str, Any], version: str, max_batch_size: int | None
    ) -> ModelInfo:
        def specs(key: str) -> list[TensorSpec]:
            return [
                TensorSpec(t["name"], t["datatype"], [int(d) for d in t.get("shape", [])])
                for t in meta.get(key, [])
            ]

        return cls(meta.get("name", ""), version, specs("inputs"), specs("outputs"), max_batch_size)


@dataclass(slots=True)
class Tensor:
    """One input tensor with its data; `raw` is the V2 binary form (little-endian, row-major;
    BYTES as 4-byte length prefixes followed by the bytes)."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray
    raw: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.raw = to_raw(self.array, self.datatype)

    def json_data(self) -> list[Any]:
        if self.datatype == "BF16":
            raise WorkloadError(f"input '{self.name}': BF16 has no JSON form; use binary tensors")
        flat = self.array.reshape(-1)
        if self.datatype == "BYTES":
            return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
        values: list[Any] = flat.tolist()
        return values


InputSet = list[Tensor]


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in array.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode("utf-8")
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    a = np.ascontiguousarray(array, dtype=NP_DTYPES[datatype])
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


@dataclass(slots=True)
class Batching:
    """How request shapes are formed: `batched` prepends `batch_size` to every input's shape
    (the metadata's leading -1 is the batch dim); `overrides` fill the remaining -1 dims."""

    batched: bool
    batch_size: int
    overrides: dict[str, list[int]]

    @classmethod
    def decide(
        cls, info: ModelInfo, batch_size: int | None, overrides: dict[str, list[int]]
    ) -> Batching:
        unknown = [n for n in overrides if n not in {s.name for s in info.inputs}]
        if unknown:
            raise WorkloadError(f"--shape names an unknown input '{unknown[0]}'")
        if info.max_batch_size is not None:
            batched = info.max_batch_size > 0
        else:  # no config endpoint: only an explicit --batch-size makes the leading -1 a batch dim
            batched = batch_size is not None and all(
                s.shape and s.shape[0] == -1 for s in info.inputs
            )
        bs = 1 if batch_size is None else batch_size
        if bs < 1:
            raise WorkloadError("--batch-size must be at least 1")
        if not batched and bs > 1:
            raise WorkloadError(
                f"model '{info.name}' does not support batching (--batch-size {bs})"
            )
        if info.max_batch_size and bs > info.max_batch_size:
            raise WorkloadError(
                f"--batch-size {bs} exceeds the model's max_batch_size {info.max_batch_size}"
            )
        return cls(batched, bs, overrides)

    def sample_dims(self, spec: TensorSpec) -> list[int]:
        """The shape of one batch item: -1 dims still -1 unless --shape gave them."""
        dims = list(spec.shape[1:] if self.batched else spec.shape)
        given = self.overrides.get(spec.name)
        if given is None:
            return dims
        if len(given) != len(dims) or any(
            d >= 0 and d != g for d, g in zip(dims, given, strict=True)
        ):
            raise WorkloadError(
                f"--shape {spec.name}:{','.join(map(str, given))} does not fit the model's "
                f"shape {dims}" + (" (without the batch dim)" if self.batched else "")
            )
        return given

    def full_shape(self, sample: list[int]) -> list[int]:
        return [self.batch_size, *sample] if self.batched else sample

    def stack(self, sample: np.ndarray) -> np.ndarray:
        if not self.batched:
            return sample
        return np.repeat(sample[np.newaxis, ...], self.batch_size, axis=0)


def parse_shape_overrides(values: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for v in values:
        name, sep, dims = v.rpartition(":")
        try:
            parsed = [int(d) for d in dims.split(",")] if dims else []
        except ValueError:
            parsed = [-1]
        if not sep or not name or any(d < 0 for d in parsed):
            raise WorkloadError(f"--shape expects NAME:d1,d2,... with dims >= 0, got '{v}'")
        out[name] = parsed
    return out


def random_array(
    datatype: str, shape: list[int], rng: np.random.Generator, string_length: int = 16
) -> np.ndarray:
    if datatype == "BYTES":
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
        n = math.prod(shape)
        codes = rng.choice(letters, size=(n, string_length))
        arr = np.empty(n, dtype=np.object_)
        for i in range(n):
            arr[i] = codes[i].tobytes()
        return arr.reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if datatype in ("FP16", "FP32", "FP64"):
        return rng.random(size=shape).astype(NP_DTYPES[datatype])
    if datatype == "BF16":  # the upper half of random float32s in [0, 1)
        f = rng.random(size=shape).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16)
    if datatype not in NP_DTYPES:
        raise WorkloadError(f"unsupported datatype '{datatype}'")
    return rng.integers(0, 100, size=shape).astype(NP_DTYPES[datatype])


def _fixed(spec: TensorSpec, batching: Batching) -> list[int]:
    return [1 if d < 0 else d for d in batching.sample_dims(spec)]


def random_sets(
    info: ModelInfo, batching: Batching, *, seed: int = 0, string_length: int = 16
) -> list[InputSet]:
    """One input set of random data; -1 dims are --shape's or 1."""
    rng = np.random.default_rng(seed)
    tensors = []
    for spec in info.inputs:
        sample = _fixed(spec, batching)
        shape = batching.full_shape(sample)
        tensors.append(
            Tensor(
                spec.name,
                spec.datatype,
                shape,
                random_array(spec.datatype, shape, rng, string_length),
            )
        )
    return [tensors]


def text_sets(
    info: ModelInfo, batching: Batching, path: Path, *, seed: int = 0, string_length: int = 16
) -> list[InputSet]:
    """One input set per non-empty line of `path`: every BYTES input holds the line; the other
    inputs hold the same random data in every set."""
    text_inputs = [s for s in info.inputs if s.datatype == "BYTES"]
    if not text_inputs:
        raise WorkloadError(f"--text-file: model '{info.name}' has no BYTES input")
    lines = [ln.rstrip("\r\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise WorkloadError(f"--text-file {path}: no non-empty lines")
    base = {
        t.name: t for t in random_sets(info, batching, seed=seed, string_length=string_length)[0]
    }
    sets = []
    for line in lines:
        value = line.encode("utf-8")
        tensors = []
        for spec in info.inputs:
            if spec.datatype != "BYTES":
                tensors.append(base[spec.name])
                continue
            sample = _fixed(spec, batching)
            arr = np.empty(math.prod(sample), dtype=np.object_)
            arr[:] = [value] * arr.size
            full = batching.stack(arr.reshape(sample))
            tensors.append(Tensor(spec.name, spec.datatype, list(full.shape), full))
        sets.append(tensors)
    return sets


def _entry_array(spec: TensorSpec, value: Any, batching: Batching, where: str) -> np.ndarray:
    shape: list[int] | None = None
    if isinstance(value, dict):
        shape = [int(d) for d in value["shape"]] if "shape" in value else None
        if "b64" in value:
            raw = base64.b64decode(value["b64"])
            if spec.datatype == "BYTES":
                content: Any = [raw]
            else:
                dtype = np.dtype(NP_DTYPES[spec.datatype]).newbyteorder("<")
                content = np.frombuffer(raw, dtype=dtype)
        elif "content" in value:
            content = value["content"]
        else:
            raise WorkloadError(f"{where}: an input object needs 'content' or 'b64'")
    else:
        content = value
    if spec.datatype == "BYTES":
        items = np.asarray(content if isinstance(content, list) else [content], dtype=object)
        arr = np.empty(items.size, dtype=np.object_)
        arr[:] = [c.encode("utf-8") if isinstance(c, str) else bytes(c) for c in items.reshape(-1)]
    else:
        arr = np.asarray(content, dtype=NP_DTYPES[spec.datatype]).reshape(-1)
    if shape is None:
        dims = batching.sample_dims(spec)
        unknown = [i for i, d in enumerate(dims) if d < 0]
        known = math.prod(d for d in dims if d >= 0)
        if len(unknown) == 1 and known > 0 and arr.size % known == 0:
            dims[unknown[0]] = arr.size // known
        elif unknown:
            dims = [1 if d < 0 else d for d in dims]
            if math.prod(dims) != arr.size:
                raise WorkloadError(
                    f"{where}: cannot infer the shape of '{spec.name}' ({arr.size} elements, "
                    f'model shape {batching.sample_dims(spec)}); give "shape" or --shape'
                )
        shape = dims
    if math.prod(shape) != arr.size:
        raise WorkloadError(
            f"{where}: '{spec.name}' has {arr.size} elements; shape {shape} needs "
            f"{math.prod(shape)}"
        )
    return arr.reshape(shape)


def data_file_sets(info: ModelInfo, batching: Batching, path: Path) -> list[InputSet]:
    """perf_analyzer's --input-data JSON: {"data": [{"INPUT0": [...], ...}, ...]}. Each entry is
    one request's data without the batch dim (repeated to fill a batch); an input is a flat (or
    nested) list, {"content": [...], "shape": [...]} or {"b64": "...", "shape": [...]}."""
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise WorkloadError(f"--input-data {path}: {e}") from None
    entries = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise WorkloadError(f'--input-data {path}: expected {{"data": [{{...}}, ...]}}')
    # perf_analyzer allows a list of streams (lists of steps); take them in order
    flat_entries: list[Any] = []
    for item in entries:
        flat_entries.extend(item if isinstance(item, list) else [item])
    sets = []
    for i, entry in enumerate(flat_entries):
        where = f"--input-data {path}: entry {i}"
        if not isinstance(entry, dict):
            raise WorkloadError(f"{where}: expected an object of inputs")
        tensors = []
        for spec in info.inputs:
            if spec.name not in entry:
                raise WorkloadError(f"{where}: no data for input '{spec.name}'")
            full = batching.stack(_entry_array(spec, entry[spec.name], batching, where))
            tensors.append(Tensor(spec.name, spec.datatype, list(full.shape), full))
        sets.append(tensors)
    return sets


def output_byte_size(spec: TensorSpec, batching: Batching, default: int) -> int:
    """Bytes an output needs in shared memory: exact when its shape is fully known."""
    if spec.datatype == "BYTES":
        return default
    dims = list(spec.shape[1:] if batching.batched else spec.shape)
    if any(d < 0 for d in dims):
        return default
    itemsize: int = np.dtype(NP_DTYPES[spec.datatype]).itemsize
    return math.prod(batching.full_shape(dims)) * itemsize
