"""Merge requests into one batch and split the results back: pure functions, no I/O.

Each request's row count is recorded at merge time, so `split(merge(xs))` gives every
request exactly its own rows (property-tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from torchtide.errors import internal

Array = np.ndarray[Any, Any]


def merge(items: Sequence[Mapping[str, Array]]) -> dict[str, Array]:
    """Concatenate each input along the batch axis. One item is passed through without a copy."""
    if len(items) == 1:
        return dict(items[0])
    first = items[0]
    return {name: np.concatenate([it[name] for it in items], axis=0) for name in first}


def split(outputs: Mapping[str, Array], rows: Sequence[int]) -> list[dict[str, Array]]:
    """Cut each output into per-request views along the batch axis."""
    total = sum(rows)
    if len(rows) == 1:
        return [dict(outputs)]
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            got = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows"
            raise internal(f"model output '{name}' has {got}, but the batch had {total} rows")
    bounds = np.cumsum([0, *rows])
    return [
        {name: arr[bounds[i] : bounds[i + 1]] for name, arr in outputs.items()}
        for i in range(len(rows))
    ]


def shape_key(
    inputs: Mapping[str, Array], ragged: frozenset[str], batched: bool
) -> tuple[Any, ...]:
    """Requests batch together only when this key matches: same inputs, same shape beyond dim 0."""
    if not batched:
        return ()
    return tuple(
        (name, arr.dtype.str, None if name in ragged else arr.shape[1:])
        for name, arr in sorted(inputs.items())
    )
