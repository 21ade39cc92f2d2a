"""Prometheus metrics, read from the core's counters at scrape time.

`ServerCollector` is a prometheus_client collector over an `InferenceServer`: every scrape reads
each served version's `ModelStats` (the same counters the statistics extension reports), so the
request path pays nothing for Triton's families. Register it in a `CollectorRegistry` that you
construct and pass around; nothing here touches prometheus_client's global registry.

Triton's families keep Triton's exact names, types, help texts and labels (`model`, `version`;
`reason` on failures; `gpu_uuid` on GPU gauges), so dashboards and HPA rules written for Triton,
e.g. `delta(nv_inference_queue_duration_us[30s]) / (1 + delta(nv_inference_request_success[30s]))`,
work unchanged. Triton's counters carry no `_total` suffix, which prometheus_client's
`generate_latest` would add to the `# TYPE` line; `exposition()` writes the text format itself,
exactly as the families are named.

Beyond Triton (ours, additive): per-stage latency histograms
`torchtide_{request,queue,compute_infer}_duration_seconds`, the executed batch sizes
`torchtide_batch_size`, and why each batch left the queue, `torchtide_batch_release_total`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from torchtide.stats import FAIL_REASONS, RELEASE_REASONS, Histogram, ModelStats

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from torchtide.server import InferenceServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Triton's per-model counters: (name, help, value in the exposed unit).
_COUNTERS: tuple[tuple[str, str, Any], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    # nv_inference_request_failure is written separately (one series per reason)
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        lambda s: s.success.ns // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include cached "
        "requests)",
        lambda s: s.compute_output.ns // 1000,
    ),
)

# Beyond Triton: histograms read from ModelStats (name, help, which Duration).
_LATENCY_HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    (
        "torchtide_request_duration_seconds",
        "End-to-end duration of successful requests, from queueing to response (torchtide)",
        "success",
    ),
    (
        "torchtide_queue_duration_seconds",
        "Time requests waited in the queue before execution, batching delay included (torchtide)",
        "queue",
    ),
    (
        "torchtide_compute_infer_duration_seconds",
        "Model execution time of the batch each request ran in, per request (torchtide)",
        "compute_infer",
    ),
)
BATCH_SIZE_BOUNDS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Triton's GPU gauges (labels: gpu_uuid), read from NVML: (name, help, read(pynvml, handle)).
_GPU_GAUGES: tuple[tuple[str, str, Any], ...] = (
    (
        "nv_gpu_utilization",
        "GPU utilization rate [0.0 - 1.0)",
        lambda nv, h: nv.nvmlDeviceGetUtilizationRates(h).gpu * 0.01,
    ),
    (
        "nv_gpu_memory_total_bytes",
        "GPU total memory, in bytes",
        lambda nv, h: nv.nvmlDeviceGetMemoryInfo(h).total,
    ),
    (
        "nv_gpu_memory_used_bytes",
        "GPU used memory, in bytes",
        lambda nv, h: nv.nvmlDeviceGetMemoryInfo(h).used,
    ),
    (
        "nv_gpu_power_usage",
        "GPU power usage in watts",
        lambda nv, h: nv.nvmlDeviceGetPowerUsage(h) / 1000,  # mW
    ),
    (
        "nv_gpu_power_limit",
        "GPU power management limit in watts",
        lambda nv, h: nv.nvmlDeviceGetPowerManagementLimit(h) / 1000,
    ),
)

Version = tuple[str, str, ModelStats, float]  # model, version, stats, load seconds


class ServerCollector:
    """Collects Triton's and torchtide's metric families from one InferenceServer.

    `cpu`/`gpu` turn the host gauges on or off (Triton's --allow-cpu-metrics /
    --allow-gpu-metrics). CPU utilization is measured over at least `interval_s` between samples
    (Triton's --metrics-interval-ms, 2 s), reading 0 until the first interval has passed. GPU
    gauges come from NVML (pynvml, imported on the first scrape) when the server sees a GPU; with
    no GPU or no NVML they are silently absent.
    """

    def __init__(
        self,
        server: InferenceServer,
        *,
        cpu: bool = True,
        gpu: bool = True,
        interval_s: float = 2.0,
    ) -> None:
        self.server = server
        self.cpu = cpu
        self.gpu = gpu
        self.interval_s = interval_s
        self._cpu_last: tuple[float, float] | None = None  # (busy, idle) seconds
        self._cpu_last_at = 0.0
        self._cpu_util = 0.0
        self._nvml: Any = None  # the pynvml module once initialised; False when unavailable
        self._gpus: list[tuple[str, Any]] = []  # (uuid, handle)

    def describe(self) -> Iterable[Metric]:
        """The family names (lets a registry refuse a second collector of the same names)."""
        names = [n for n, _, _ in _COUNTERS] + ["nv_inference_request_failure"]
        yield from (Metric(n, "", "counter") for n in names)
        for n in (
            "nv_inference_pending_request_count",
            "nv_model_load_duration_secs",
            "nv_cpu_utilization",
            "nv_cpu_memory_total_bytes",
            "nv_cpu_memory_used_bytes",
            *(g[0] for g in _GPU_GAUGES),
        ):
            yield Metric(n, "", "gauge")
        for n, _, _ in _LATENCY_HISTOGRAMS:
            yield Metric(n, "", "histogram")
        yield Metric("torchtide_batch_size", "", "histogram")
        yield Metric("torchtide_batch_release_total", "", "counter")

    # ------------------------------------------------------------------ collection

    def _versions(self) -> list[Version]:
        return [
            (name, sv.version_str, sv.stats, record.load_seconds)
            for name, record in sorted(self.server.models.items())
            for _, sv in sorted(record.served.items())
        ]

    def collect(self) -> Iterator[Metric]:
        versions = self._versions()
        yield from self._triton_families(versions)
        if self.gpu:
            yield from self._gpu_families()
        if self.cpu:
            yield from self._cpu_families()
        yield from self._torchtide_families(versions)

    def _triton_families(self, versions: list[Version]) -> Iterator[Metric]:
        yield _per_version(*_COUNTERS[0], versions)
        fail = Metric(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            "counter",
        )
        for model, version, stats, _ in versions:
            for reason in FAIL_REASONS:
                labels = {"model": model, "version": version, "reason": reason}
                fail.add_sample(fail.name, labels, stats.fail_reasons.get(reason, 0))
        yield fail
        for name, doc, value in _COUNTERS[1:]:
            yield _per_version(name, doc, value, versions)
        yield _per_version(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            lambda s: max(s.pending, 0),
            versions,
            "gauge",
        )
        load = Metric("nv_model_load_duration_secs", "Model load time in seconds", "gauge")
        for model, version, _, load_s in versions:
            load.add_sample(load.name, {"model": model, "version": version}, load_s)
        yield load

    def _torchtide_families(self, versions: list[Version]) -> Iterator[Metric]:
        for name, doc, attr in _LATENCY_HISTOGRAMS:
            fam = HistogramMetricFamily(name, doc, labels=("model", "version"))
            for model, version, stats, _ in versions:
                d = getattr(stats, attr)
                if d.hist is not None:
                    fam.add_metric((model, version), _cumulative(d.hist, 1e9), sum_value=d.ns / 1e9)
            yield fam
        # The executed batch sizes, from the statistics' exact per-size execution counts.
        sizes = HistogramMetricFamily(
            "torchtide_batch_size",
            "Rows per model execution (torchtide)",
            labels=("model", "version"),
        )
        for model, version, stats, _ in versions:
            h = Histogram(BATCH_SIZE_BOUNDS)
            for size, b in stats.batch_stats.items():
                h.observe(size, b.compute_infer.count)
            sizes.add_metric((model, version), _cumulative(h, 1), sum_value=stats.inference_count)
        yield sizes
        releases = Metric(
            "torchtide_batch_release_total",
            "Batches handed to an instance, by why they left the queue: full (max_batch_size "
            "or a request that cannot join), preferred (a preferred_batch_size), delay "
            "(max_queue_delay expired), idle (no delay configured) (torchtide)",
            "counter",
        )
        for model, version, stats, _ in versions:
            for reason in RELEASE_REASONS:
                releases.add_sample(
                    releases.name,
                    {"model": model, "version": version, "reason": reason},
                    stats.releases.get(reason, 0),
                )
        yield releases

    # ------------------------------------------------------------------ host

    def _cpu_families(self) -> Iterator[Metric]:
        import psutil

        now = time.monotonic()
        if now - self._cpu_last_at >= self.interval_s:
            t = psutil.cpu_times()
            busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
            busy += getattr(t, "steal", 0.0)
            idle = t.idle + getattr(t, "iowait", 0.0)
            if self._cpu_last is not None:
                d_busy = max(busy - self._cpu_last[0], 0.0)
                d_idle = max(idle - self._cpu_last[1], 0.0)
                total = d_busy + d_idle
                self._cpu_util = d_busy / total if total > 0 else 0.0
            self._cpu_last, self._cpu_last_at = (busy, idle), now
        mem = psutil.virtual_memory()
        yield _gauge("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", self._cpu_util)
        yield _gauge("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", mem.total)
        yield _gauge(
            "nv_cpu_memory_used_bytes",
            "CPU used memory (RAM), in bytes",
            mem.total - mem.available,  # Triton: MemTotal - MemAvailable
        )

    def _gpu_families(self) -> Iterator[Metric]:
        if not self._init_nvml():
            return
        for name, doc, read in _GPU_GAUGES:
            m = Metric(name, doc, "gauge")
            for uuid, handle in self._gpus:
                try:
                    value = read(self._nvml, handle)
                except Exception:  # a field this GPU does not report reads 0, as in Triton
                    value = 0
                m.add_sample(name, {"gpu_uuid": uuid}, value)
            yield m

    def _init_nvml(self) -> bool:
        if self._nvml is None:
            self._nvml = False
            if self.server.gpu_count > 0:
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    handles = [
                        pynvml.nvmlDeviceGetHandleByIndex(i)
                        for i in range(pynvml.nvmlDeviceGetCount())
                    ]
                    gpus = [(_text(pynvml.nvmlDeviceGetUUID(h)), h) for h in handles]
                    self._gpus = _cuda_visible(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
                    self._nvml = pynvml
                except Exception:
                    self._gpus = []
        return bool(self._nvml) and bool(self._gpus)

    def close(self) -> None:
        if self._nvml:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        self._nvml, self._gpus = None, []


def _per_version(
    name: str, doc: str, value: Any, versions: list[Version], typ: str = "counter"
) -> Metric:
    """One of Triton's per-model families; samples named exactly like the family."""
    m = Metric(name, doc, typ)
    for model, version, stats, _ in versions:
        m.add_sample(name, {"model": model, "version": version}, value(stats))
    return m


def _gauge(name: str, doc: str, value: float) -> Metric:
    m = Metric(name, doc, "gauge")
    m.add_sample(name, {}, value)
    return m


def _cumulative(h: Histogram, per_unit: float) -> list[tuple[str, float]]:
    """Prometheus buckets: (le, observations <= le), cumulative, ending with +Inf; the bounds
    divided by `per_unit` (1e9: ns to seconds)."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(h.bounds, h.counts, strict=False):
        running += count
        out.append((_float(bound / per_unit), running))
    out.append(("+Inf", running + h.counts[-1]))
    return out


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _cuda_visible(gpus: list[tuple[str, Any]], visible: str | None) -> list[tuple[str, Any]]:
    """The GPUs CUDA would show this process (Triton reports only those)."""
    if visible is None:
        return gpus
    out: list[tuple[str, Any]] = []
    for tok in (t.strip() for t in visible.split(",")):
        if not tok:
            break
        if tok.isdigit():
            if int(tok) >= len(gpus):
                break
            out.append(gpus[int(tok)])
        else:
            match = [g for g in gpus if g[0].startswith(tok) or g[0] == f"GPU-{tok}"]
            if not match:
                break
            out.append(match[0])
    return out


# ---------------------------------------------------------------------- text exposition


def exposition(registry: Collector) -> bytes:
    """The Prometheus text format (0.0.4) of everything `registry` collects.

    Families are written under their own names: a counter whose samples carry no `_total` (all
    of Triton's) is typed under that name; prometheus_client's own counters (samples `x_total`)
    are typed as `x_total`. `_created` samples are left out, families without samples too.
    Integral values print without a decimal point, as Triton's prometheus-cpp writes them.
    """
    out: list[str] = []
    for metric in registry.collect():
        samples = [s for s in metric.samples if s.name != metric.name + "_created"]
        if not samples:
            continue
        name, mtype = metric.name, metric.type
        if mtype == "counter" and any(s.name == name + "_total" for s in samples):
            name += "_total"
        elif mtype == "unknown":
            mtype = "untyped"
        elif mtype in ("info", "stateset"):
            mtype = "gauge"
            if metric.type == "info":
                name += "_info"
        elif mtype == "gaugehistogram":
            mtype = "histogram"
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n")
        for s in samples:
            if s.labels:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
                out.append(f"{s.name}{{{labels}}} {_value(s.value)}\n")
            else:
                out.append(f"{s.name} {_value(s.value)}\n")
    return "".join(out).encode("utf-8")


def _escape(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _value(v: float) -> str:
    if isinstance(v, int):
        return str(int(v))
    if math.isfinite(v) and v.is_integer() and abs(v) < 2**53:
        return str(int(v))
    return _float(v)


def _float(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))
