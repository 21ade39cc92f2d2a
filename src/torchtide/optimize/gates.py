"""Accuracy gates: a variant's outputs against the baseline's, per output, with thresholds by
precision tier (research note optimize.md section 4.3). Pure functions; they fail closed: a
metric that cannot be computed, a missing output or a non-finite value fails the gate.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
Outputs = dict[str, Array]


class Tier(enum.Enum):
    LOSSLESS = "lossless"
    BF16 = "bf16"
    INT8 = "int8"


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_abs_rel: float | None  # max |d| <= this * max(1, std(reference)); None: not checked
    cos_mean: float
    cos_min: float
    top1: float  # top-1 agreement, for outputs that look like class scores


THRESHOLDS: dict[Tier, Thresholds] = {
    Tier.LOSSLESS: Thresholds(max_abs_rel=1e-4, cos_mean=0.99999, cos_min=0.99999, top1=0.99),
    Tier.BF16: Thresholds(max_abs_rel=None, cos_mean=0.9999, cos_min=0.999, top1=0.99),
    Tier.INT8: Thresholds(max_abs_rel=None, cos_mean=0.995, cos_min=0.97, top1=0.99),
}


@dataclass(slots=True)
class OutputAccuracy:
    name: str
    max_abs: float
    cos_mean: float
    cos_min: float
    top1: float | None  # None when the output does not look like class scores
    kind: str  # "classes", "embedding" or "tensor"


@dataclass(slots=True)
class Verdict:
    passed: bool
    failures: list[str] = field(default_factory=list)
    outputs: list[OutputAccuracy] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "outputs": [asdict(o) for o in self.outputs],
        }


def cosine_rows(ref: Array, got: Array) -> Array:
    """Cosine similarity per sample (first dim), flattened over the rest; two all-zero rows
    count as identical, one zero row against a non-zero one as 0."""
    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = got.reshape(got.shape[0], -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    both_zero = (na == 0) & (nb == 0)
    denom = np.where(na * nb == 0, 1.0, na * nb)
    cos = np.where(both_zero, 1.0, np.where(na * nb == 0, 0.0, dot / denom))
    result: Array = np.clip(cos, -1.0, 1.0)
    return result


def output_kind(ref: Array, label_file: bool = False) -> str:
    """'classes' for [N, C] float scores, 'embedding' for unit-norm [N, D] rows, else
    'tensor'. A label file makes an output class scores whatever its values."""
    if ref.ndim != 2 or ref.shape[1] < 2 or ref.dtype.kind != "f":
        return "classes" if label_file and ref.ndim >= 2 else "tensor"
    if label_file:
        return "classes"
    norms = np.linalg.norm(ref.astype(np.float64), axis=1)
    if norms.size and bool(np.all(np.abs(norms - 1.0) < 1e-3)):
        return "embedding"
    return "classes"


def measure(
    name: str, ref: Array, got: Array, label_file: bool = False
) -> tuple[OutputAccuracy | None, str | None]:
    """Metrics of one output over all samples (rows stacked), or the reason they cannot be."""
    if got.shape != ref.shape:
        return None, f"output '{name}' has shape {list(got.shape)}, expected {list(ref.shape)}"
    if got.dtype != ref.dtype:
        return None, f"output '{name}' has dtype {got.dtype}, expected {ref.dtype}"
    if ref.dtype.kind not in "fiub":
        return None, f"output '{name}': dtype {ref.dtype} cannot be compared"
    a, b = ref.astype(np.float64), got.astype(np.float64)
    if not np.all(np.isfinite(b[np.isfinite(a)])):
        return None, f"output '{name}' has NaN or Inf where the baseline is finite"
    finite = np.isfinite(a) & np.isfinite(b)
    max_abs = float(np.max(np.abs(a - b)[finite])) if finite.any() else 0.0
    if a.ndim == 0 or a.shape[0] == 0:
        cos = np.array([1.0 if max_abs == 0 else 0.0])
    else:
        cos = cosine_rows(np.where(finite, a, 0.0), np.where(finite, b, 0.0))
    kind = output_kind(ref, label_file)
    top1 = None
    if kind == "classes":
        top1 = float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))
    return OutputAccuracy(name, max_abs, float(cos.mean()), float(cos.min()), top1, kind), None


def judge(
    ref: Sequence[Outputs],
    got: Sequence[Outputs],
    tier: Tier,
    label_files: frozenset[str] = frozenset(),
) -> Verdict:
    """Compare per-sample outputs (same order, no batch dimension) under a tier's thresholds."""
    failures: list[str] = []
    if len(ref) != len(got):
        return Verdict(False, [f"{len(got)} results for {len(ref)} samples"])
    if not ref:
        return Verdict(False, ["no samples were compared"])
    th = THRESHOLDS[tier]
    accs: list[OutputAccuracy] = []
    for name in ref[0]:
        missing = [i for i, g in enumerate(got) if name not in g]
        if missing:
            failures.append(f"output '{name}' missing (sample {missing[0]})")
            continue
        shapes = [(x[name].shape, y[name].shape) for x, y in zip(ref, got, strict=True)]
        bad = next((i for i, (a, b) in enumerate(shapes) if a != b), None)
        if bad is not None:
            a, b = shapes[bad]
            failures.append(
                f"output '{name}' has shape {list(b)} for sample {bad}, expected {list(a)}"
            )
            continue
        r = _rows(name, [x[name] for x in ref])
        g = _rows(name, [x[name] for x in got])
        acc, why = measure(name, r, g, name in label_files)
        if acc is None:
            failures.append(why or f"output '{name}' cannot be compared")
            continue
        accs.append(acc)
        failures.extend(_check(acc, r, th))
    return Verdict(not failures, failures, accs)


def _rows(name: str, arrays: list[Array]) -> Array:
    """Per-sample arrays (without a batch dimension) stacked along a new sample dimension;
    flattened and zero-padded when samples differ in shape (a dynamic dimension)."""
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    width = max(a.size for a in arrays)
    out = np.zeros((len(arrays), width), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : a.size] = a.reshape(-1)
    return out


def _check(acc: OutputAccuracy, ref: Array, th: Thresholds) -> list[str]:
    out = []
    n = acc.name
    if th.max_abs_rel is not None:
        std = float(np.std(ref.astype(np.float64))) if ref.size else 0.0
        limit = th.max_abs_rel * max(1.0, std)
        if acc.max_abs > limit:
            out.append(f"output '{n}': max |d| {acc.max_abs:.3g} > {limit:.3g}")
    if acc.cos_mean < th.cos_mean:
        out.append(f"output '{n}': cosine mean {acc.cos_mean:.6f} < {th.cos_mean}")
    if acc.cos_min < th.cos_min:
        out.append(f"output '{n}': cosine min {acc.cos_min:.6f} < {th.cos_min}")
    if acc.top1 is not None and acc.top1 < th.top1:
        out.append(f"output '{n}': top-1 agreement {acc.top1:.1%} < {th.top1:.0%}")
    return out
