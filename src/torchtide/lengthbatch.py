"""Beyond Triton: batches of similar length (opt-in `BATCH_BY_LENGTH` model parameter).

A model that pads its batch to the longest item wastes most of its work on padding when the
batch mixes lengths. With

    parameters { key: "BATCH_BY_LENGTH" value { string_value: "TEXT" } }

the dynamic batcher orders the queue by the length of the named input and forms each batch from
a contiguous run of that order: the run that holds the oldest queued request (so no request is
ever starved: the oldest is always in the next batch), as many rows as the batcher's usual rules
allow (max_batch_size, preferred sizes, the queue delay), and the narrowest range of lengths.
The model is unchanged; each batch it receives is simply padded less.

The length of a request: for a BYTES input, its longest element in bytes; for another type the
size of one dimension, `NAME:D` (D counts the config's dims, without the batch dimension), by
default the input's first variable (-1) dimension.

Pure functions, no I/O; the scheduler calls `choose` with the candidates of its queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

PARAM = "BATCH_BY_LENGTH"
WINDOW = 512  # most queued requests ordered per batch formed (the queue's oldest first)


@dataclass(frozen=True, slots=True)
class LengthOf:
    """How to read a request's length from its inputs."""

    input: str
    dim: int | None  # None: BYTES, the longest element; else dims[dim] (batch dim excluded)

    def __call__(self, inputs: dict[str, Any]) -> int:
        arr = inputs.get(self.input)
        if arr is None:  # an optional input left out
            return 0
        if self.dim is None:
            return max((len(x) for x in arr.flat), default=0)
        axis = self.dim + 1
        return int(arr.shape[axis]) if arr.ndim > axis else 0

    @classmethod
    def of(cls, cfg: Any) -> LengthOf | None:
        """The parameter of a validated config, or None when it is not set."""
        if PARAM not in cfg.parameters:
            return None
        name, dim = _split(cfg.parameters[PARAM].string_value)
        t = next(t for t in cfg.input if t.name == name)
        if dim is None and not _is_bytes(t):
            dim = list(t.dims).index(-1)
        return cls(name, dim)


def _split(value: str) -> tuple[str, int | None]:
    name, sep, dim = value.strip().partition(":")
    if not sep:
        return name, None
    return name, int(dim) if dim.strip().isdigit() else -1


def _is_bytes(t: Any) -> bool:
    return bool(t.data_type == mc.TYPE_STRING)


def problem(cfg: Any) -> str | None:
    """What is wrong with the parameter in this config (one line), or None."""
    if PARAM not in cfg.parameters:
        return None
    value = cfg.parameters[PARAM].string_value
    if not cfg.HasField("dynamic_batching"):
        return "needs dynamic_batching (it orders the dynamic batcher's queue)"
    if cfg.dynamic_batching.preserve_ordering:
        return (
            "cannot be combined with dynamic_batching.preserve_ordering (batches leave by length)"
        )
    name, dim = _split(value)
    inputs = {t.name: t for t in cfg.input}
    if name not in inputs:
        return f"'{value}' names no input of the model (expected NAME or NAME:DIM)"
    t = inputs[name]
    dims = list(t.dims)
    if dim is not None and not 0 <= dim < len(dims):
        return f"'{value}': input '{name}' has dims {dims}; DIM must be in 0..{len(dims) - 1}"
    if dim is None and not _is_bytes(t) and -1 not in dims:
        return (
            f"'{value}': input '{name}' is not BYTES and has no variable (-1) dimension; "
            "name one as NAME:DIM"
        )
    return None


def choose(
    lengths: Sequence[int],
    rows: Sequence[int],
    max_batch: int,
    preferred: frozenset[int],
    waited: bool,
) -> tuple[list[int], str] | None:
    """The next batch from candidates in queue order (index 0 is the oldest), or None to wait.

    The batch's size follows the dynamic batcher: `max_batch` rows when that many are queued
    ("full"), else the largest preferred size queued ("preferred"), else, once the oldest has
    waited its delay (`waited`), everything ("delay"). Its members: a contiguous run of the
    candidates ordered by (length, queue position) that contains the oldest, holds the most rows
    up to that size, and among those spans the smallest range of lengths. Indices come back in
    length order.
    """
    total = sum(rows)
    if total >= max_batch:
        target, reason = max_batch, "full"
    else:
        fits = [p for p in preferred if p <= total and p < max_batch]
        if fits:
            target, reason = max(fits), "preferred"
        elif waited:
            target, reason = total, "delay"
        else:
            return None
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if target >= total:
        return order, reason
    start, stop = window(
        [lengths[i] for i in order],
        [rows[i] for i in order],
        order.index(0),
        max(target, rows[0]),
    )
    return order[start:stop], reason


def window(lengths: Sequence[int], rows: Sequence[int], head: int, target: int) -> tuple[int, int]:
    """[start, stop) of the sorted `lengths` containing `head`: the most rows up to `target`
    (at least the head's own), then the smallest lengths[stop-1] - lengths[start]."""
    n = len(lengths)
    cum = np.concatenate(([0], np.cumsum(rows, dtype=np.int64)))
    best = (head, head + 1)
    best_key = (int(rows[head]), -0)
    stop = head + 1
    for start in range(head, -1, -1):
        if cum[head + 1] - cum[start] > target:
            break
        # the furthest stop for this start (it only moves left as start moves left)
        stop = max(stop, head + 1)
        while stop > head + 1 and cum[stop] - cum[start] > target:
            stop -= 1
        while stop < n and cum[stop + 1] - cum[start] <= target:
            stop += 1
        key = (int(cum[stop] - cum[start]), -(lengths[stop - 1] - lengths[start]))
        if key > best_key:
            best, best_key = (start, stop), key
    return best
