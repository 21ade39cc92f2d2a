"""Custom metrics (``MetricFamily``/``Metric``), kept in memory.

The values are not yet exported on the server's ``/metrics`` endpoint; they are
thread-safe in-memory counters, gauges and histograms following the semantics
of Triton's custom metrics API.
"""

from __future__ import annotations

import enum
import json
import threading
import weakref
from typing import Any, ClassVar, NoReturn

from ._errors import TritonModelException

__all__ = ["Metric", "MetricFamily", "MetricKind"]


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


_KIND_NAME = {
    MetricKind.COUNTER: "TRITONSERVER_METRIC_KIND_COUNTER",
    MetricKind.GAUGE: "TRITONSERVER_METRIC_KIND_GAUGE",
    MetricKind.HISTOGRAM: "TRITONSERVER_METRIC_KIND_HISTOGRAM",
}


class _Series:
    """One labelled time series; shared by Metric objects with the same labels."""

    __slots__ = ("bucket_counts", "buckets", "count", "lock", "sum", "value")

    def __init__(self, buckets: list[float] | None) -> None:
        self.lock = threading.Lock()
        self.value = 0.0
        self.buckets = buckets
        self.bucket_counts = [0] * (len(buckets) + 1) if buckets is not None else []
        self.count = 0
        self.sum = 0.0


class Metric:
    """A labelled metric created by ``MetricFamily.Metric``."""

    __slots__ = ("_family", "_labels", "_series")

    def __init__(self, family: MetricFamily, labels: dict[str, str], series: _Series) -> None:
        self._family = family
        self._labels = labels
        self._series = series

    def _kind(self) -> MetricKind:
        return self._family._kind

    def increment(self, value: float) -> None:
        kind = self._kind()
        if kind is MetricKind.HISTOGRAM:
            self._fail("increment", f"{_KIND_NAME[kind]} does not support Increment")
        if kind is MetricKind.COUNTER and value < 0.0:
            self._fail(
                "increment",
                f"{_KIND_NAME[kind]} can only be incremented monotonically by non-negative values.",
            )
        with self._series.lock:
            self._series.value += float(value)

    def set(self, value: float) -> None:
        kind = self._kind()
        if kind is not MetricKind.GAUGE:
            self._fail("set", f"{_KIND_NAME[kind]} does not support Set")
        with self._series.lock:
            self._series.value = float(value)

    def observe(self, value: float) -> None:
        kind = self._kind()
        if kind is not MetricKind.HISTOGRAM:
            self._fail("observe", f"{_KIND_NAME[kind]} does not support Observe")
        series = self._series
        assert series.buckets is not None
        with series.lock:
            series.count += 1
            series.sum += float(value)
            index = len(series.buckets)
            for i, bound in enumerate(series.buckets):
                if value <= bound:
                    index = i
                    break
            series.bucket_counts[index] += 1

    def value(self) -> float:
        kind = self._kind()
        if kind is MetricKind.HISTOGRAM:
            self._fail("get", f"{_KIND_NAME[kind]} does not support Value")
        with self._series.lock:
            return self._series.value

    def _histogram(self) -> tuple[list[float], list[int], int, float]:
        """(upper bounds, per-bucket counts with +Inf last, count, sum)."""
        series = self._series
        with series.lock:
            return (
                list(series.buckets or ()),
                list(series.bucket_counts),
                series.count,
                series.sum,
            )

    @staticmethod
    def _fail(operation: str, message: str) -> NoReturn:
        raise TritonModelException(f"Failed to {operation} metric value: {message}")


_families: weakref.WeakValueDictionary[str, MetricFamily] = weakref.WeakValueDictionary()
_families_lock = threading.Lock()


class MetricFamily:
    """A named family of metrics of one kind (COUNTER, GAUGE or HISTOGRAM)."""

    COUNTER: ClassVar[MetricKind] = MetricKind.COUNTER
    GAUGE: ClassVar[MetricKind] = MetricKind.GAUGE
    HISTOGRAM: ClassVar[MetricKind] = MetricKind.HISTOGRAM

    __slots__ = ("__weakref__", "_description", "_kind", "_lock", "_name", "_series")

    def __init__(self, name: str, description: str, kind: int) -> None:
        if not isinstance(name, str) or not isinstance(description, str):
            raise TypeError("MetricFamily name and description must be str")
        try:
            metric_kind = MetricKind(kind)
        except ValueError:
            raise TritonModelException("Unknown metric kind") from None
        self._name = name
        self._description = description
        self._kind = metric_kind
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        with _families_lock:
            existing = _families.get(name)
            if existing is not None and existing._kind is not metric_kind:
                raise TritonModelException(
                    f"Error when creating MetricFamily: a metric family named '{name}' "
                    "already exists with a different kind"
                )
            _families[name] = self

    def Metric(
        self, labels: dict[str, str] | None = None, buckets: list[float] | None = None
    ) -> Metric:
        if labels is not None and not isinstance(labels, dict):
            raise TritonModelException("Failed to create metric. Labels must be a dictionary.")
        bucket_list: list[float] | None = None
        if buckets is not None:
            if not isinstance(buckets, list):
                raise TritonModelException("Failed to create metric. Buckets must be a list.")
            if self._kind is not MetricKind.HISTOGRAM:
                raise TritonModelException("Failed to create metric. Unexpected buckets found.")
            bucket_list = sorted(float(b) for b in buckets)
        elif self._kind is MetricKind.HISTOGRAM:
            raise TritonModelException("Failed to create metric. Missing required buckets.")
        label_dict = dict(labels or {})
        key = json.dumps(label_dict, sort_keys=True)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(bucket_list)
        return Metric(self, label_dict, series)

    def _metrics(self) -> list[tuple[dict[str, Any], _Series]]:
        """All series of this family as (labels, series) (for a future exporter)."""
        with self._lock:
            return [(json.loads(k), s) for k, s in self._series.items()]


def _registered_metric_families() -> list[MetricFamily]:
    """The live metric families (for a future /metrics exporter)."""
    with _families_lock:
        return list(_families.values())
