"""The metrics page, scraped over real HTTP from a running app: Triton's families with Triton's
exact names and labels, moving with the statistics extension's counters; torchtide's own
histograms; no process-global registry."""

from __future__ import annotations

import asyncio
import http.client
import sys
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import start_app
from tests.models import ADD_SUB_CONFIG, write_add_sub, write_model
from torchtide.app import AppThread
from torchtide.errors import ServerError
from torchtide.metrics import ServerCollector, exposition
from torchtide.stats import LATENCY_BOUNDS_NS

TRITON_COUNTERS = [
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
]
TRITON_GAUGES = ["nv_inference_pending_request_count", "nv_model_load_duration_secs"]
HOST_GAUGES = ["nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"]
LATENCY = [
    "torchtide_request_duration_seconds",
    "torchtide_queue_duration_seconds",
    "torchtide_compute_infer_duration_seconds",
]
ADD_SUB = {"model": "add_sub", "version": "1"}

BOOM_PY = """
class TritonPythonModel:
    def execute(self, requests):
        raise RuntimeError("boom")
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("metrics_repo")
    write_add_sub(repo)
    write_model(repo, "boom", ADD_SUB_CONFIG, {"1/model.py": BOOM_PY})
    return repo


@pytest.fixture
def app(repo: Path) -> Iterator[AppThread]:
    a = start_app(repo, http=False, grpc=False, metrics=True)
    yield a
    a.stop()


def scrape_text(app: AppThread, path: str = "/metrics") -> tuple[str, str]:
    url = f"http://127.0.0.1:{app.app.port('metrics')}{path}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode(), r.headers["Content-Type"]


def scrape(app: AppThread) -> dict[str, Metric]:
    text, _ = scrape_text(app)
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Metric], family: str, sample: str = "", **labels: str) -> float:
    """The one sample of `family` with exactly these labels (`sample`: a histogram's suffix)."""
    found = [
        s.value
        for s in fams[family].samples
        if s.labels == labels and (not sample or s.name == family + sample)
    ]
    assert len(found) == 1, (family, labels, fams[family].samples)
    return found[0]


def ones(rows: int = 1) -> dict[str, Any]:
    a = np.ones((rows, 16), np.int32)
    return {"INPUT0": a, "INPUT1": a}


def run(app: AppThread, model: str, n: int, rows: list[int]) -> list[Any]:
    """n concurrent in-process requests, request i with rows[i % len(rows)] rows."""

    async def go() -> list[Any]:
        s = app.app.server
        return await asyncio.gather(
            *(s.infer_numpy(model, ones(rows[i % len(rows)])) for i in range(n)),
            return_exceptions=True,
        )

    out: list[Any] = app.call(go())
    return out


def test_triton_families_at_zero_right_after_load(app: AppThread) -> None:
    text, ctype = scrape_text(app)
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    # Triton's exact exposition: counters typed under their own names, no _total.
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert 'nv_inference_request_success{model="add_sub",version="1"} 0\n' in text
    assert "nv_inference_request_success_total" not in text
    assert "# TYPE nv_inference_pending_request_count gauge\n" in text
    fams = scrape(app)
    for model in ("add_sub", "boom"):
        labels = {"model": model, "version": "1"}
        for name in TRITON_COUNTERS:
            assert fams[name].type == "counter"
            if name == "nv_inference_request_failure":
                for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
                    assert value(fams, name, **labels, reason=reason) == 0
            else:
                assert value(fams, name, **labels) == 0
        assert value(fams, "nv_inference_pending_request_count", **labels) == 0
        assert value(fams, "nv_model_load_duration_secs", **labels) > 0
        for name in LATENCY:
            assert value(fams, name, "_count", **labels) == 0
    for name in HOST_GAUGES:
        assert fams[name].type == "gauge" and len(fams[name].samples) == 1
    assert value(fams, "nv_cpu_memory_total_bytes") >= value(fams, "nv_cpu_memory_used_bytes") > 0
    if app.app.server.gpu_count == 0:
        assert not any(name.startswith("nv_gpu_") for name in fams)


def test_counters_equal_the_statistics(app: AppThread) -> None:
    results = run(app, "add_sub", 48, rows=[1, 2, 3])
    assert all(isinstance(r, dict) for r in results)
    fams = scrape(app)
    st = app.app.server.statistics("add_sub")[0]
    inf = st["inference_stats"]

    def v(name: str) -> float:
        return value(fams, name, **ADD_SUB)

    assert v("nv_inference_request_success") == inf["success"]["count"] == 48
    assert v("nv_inference_count") == st["inference_count"] == 16 * 6
    assert v("nv_inference_exec_count") == st["execution_count"]
    for name, key in [
        ("nv_inference_request_duration_us", "success"),
        ("nv_inference_queue_duration_us", "queue"),
        ("nv_inference_compute_input_duration_us", "compute_input"),
        ("nv_inference_compute_infer_duration_us", "compute_infer"),
        ("nv_inference_compute_output_duration_us", "compute_output"),
    ]:
        assert v(name) == inf[key]["ns"] // 1000, name
    assert v("nv_inference_pending_request_count") == 0

    # Histograms: counts and sums are the same counters; buckets cumulative, +Inf = count.
    for name, key in zip(LATENCY, ["success", "queue", "compute_infer"], strict=True):
        buckets = [s for s in fams[name].samples if s.name == name + "_bucket"]
        counts = [s.value for s in buckets if s.labels["model"] == "add_sub"]
        assert len(counts) == len(LATENCY_BOUNDS_NS) + 1
        assert counts == sorted(counts)
        assert counts[-1] == value(fams, name, "_count", **ADD_SUB) == inf[key]["count"] == 48
        assert value(fams, name, "_sum", **ADD_SUB) == pytest.approx(inf[key]["ns"] / 1e9)

    # Batch sizes: one observation per execution, exact per-size counts from batch_stats.
    assert value(fams, "torchtide_batch_size", "_count", **ADD_SUB) == st["execution_count"]
    assert value(fams, "torchtide_batch_size", "_sum", **ADD_SUB) == st["inference_count"]
    per_size = {b["batch_size"]: b["compute_infer"]["count"] for b in st["batch_stats"]}
    for s in fams["torchtide_batch_size"].samples:
        if s.name.endswith("_bucket") and s.labels["model"] == "add_sub":
            le = float(s.labels["le"])
            assert s.value == sum(c for size, c in per_size.items() if size <= le)

    releases = {
        r: value(fams, "torchtide_batch_release", **ADD_SUB, reason=r)
        for r in ("full", "preferred", "delay", "idle")
    }
    assert sum(releases.values()) == st["execution_count"]


def test_backend_failure_moves_the_backend_reason(app: AppThread) -> None:
    results = run(app, "boom", 3, rows=[1])
    assert all(isinstance(r, ServerError) for r in results)
    fams = scrape(app)
    boom = {"model": "boom", "version": "1"}
    assert value(fams, "nv_inference_request_failure", **boom, reason="BACKEND") == 3
    for reason in ("REJECTED", "CANCELED", "OTHER"):
        assert value(fams, "nv_inference_request_failure", **boom, reason=reason) == 0
    assert value(fams, "nv_inference_request_success", **boom) == 0
    assert app.app.server.statistics("boom")[0]["inference_stats"]["fail"]["count"] == 3
    assert value(fams, "torchtide_request_duration_seconds", "_count", **boom) == 0


def test_triton_hpa_expression_has_both_series(app: AppThread) -> None:
    """delta(nv_inference_queue_duration_us[30s]) / (1 + delta(nv_inference_request_success[30s]))
    needs both counters under those exact names with the same label sets."""
    before = scrape(app)
    run(app, "add_sub", 10, rows=[1])
    after = scrape(app)
    for fams in (before, after):
        q = {
            tuple(sorted(s.labels.items())) for s in fams["nv_inference_queue_duration_us"].samples
        }
        ok = {tuple(sorted(s.labels.items())) for s in fams["nv_inference_request_success"].samples}
        assert q == ok and (("model", "add_sub"), ("version", "1")) in q

    def delta(name: str) -> float:
        return value(after, name, **ADD_SUB) - value(before, name, **ADD_SUB)

    assert delta("nv_inference_request_success") == 10
    assert delta("nv_inference_queue_duration_us") / (1 + 10) >= 0


def test_series_follow_load_and_unload(repo: Path) -> None:
    app = start_app(
        repo, http=False, grpc=False, metrics=True, control_mode="explicit", startup_models=[]
    )
    try:
        text, _ = scrape_text(app)
        assert 'model="add_sub"' not in text
        app.call(app.app.server.load("add_sub"))
        fams = scrape(app)
        assert value(fams, "nv_inference_request_success", **ADD_SUB) == 0
        app.call(app.app.server.unload("add_sub"))
        text, _ = scrape_text(app)
        assert 'model="add_sub"' not in text
    finally:
        app.stop()


def test_two_servers_export_independently(repo: Path, app: AppThread) -> None:
    other = start_app(repo, http=False, grpc=False, metrics=True)
    try:
        run(app, "add_sub", 5, rows=[1])
        assert value(scrape(app), "nv_inference_request_success", **ADD_SUB) == 5
        assert value(scrape(other), "nv_inference_request_success", **ADD_SUB) == 0
        assert app.app.metrics_registry is not other.app.metrics_registry
        assert REGISTRY.get_sample_value("nv_inference_request_success", ADD_SUB) is None
        assert REGISTRY.get_sample_value("nv_inference_request_success_total", ADD_SUB) is None
    finally:
        other.stop()


def test_histograms_can_be_turned_off(repo: Path) -> None:
    app = start_app(repo, http=False, grpc=False, metrics=True, latency_histograms=False)
    try:
        run(app, "add_sub", 4, rows=[1])
        fams = scrape(app)
        assert value(fams, "nv_inference_request_success", **ADD_SUB) == 4
        assert not any(name in fams for name in LATENCY)
        assert value(fams, "torchtide_batch_size", "_count", **ADD_SUB) >= 1
    finally:
        app.stop()


def test_http_paths_methods_and_keep_alive(app: AppThread) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape_text(app, "/")
    assert e.value.code == 404
    conn = http.client.HTTPConnection("127.0.0.1", app.app.port("metrics"), timeout=10)
    try:
        for _ in range(2):  # two requests on one kept-alive connection
            conn.request("GET", "/metrics?x=1")
            r = conn.getresponse()
            assert r.status == 200 and b"nv_inference_request_success" in r.read()
        conn.request("HEAD", "/metrics")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"" and int(r.headers["Content-Length"]) > 0
        conn.request("POST", "/metrics", body=b"x")
        r = conn.getresponse()
        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
        r.read()
    finally:
        conn.close()


def test_gpu_gauges_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a GPU the NVML gauges appear per gpu_uuid (NVML faked: no GPU needed)."""
    fake = types.ModuleType("pynvml")
    handles = ["h0", "h1"]
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: len(handles)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: handles[i]  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUUID = lambda h: f"GPU-{h}".encode()  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=42)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 << 30, used=1 << 30)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetPowerUsage = lambda h: 123456  # type: ignore[attr-defined]

    def no_limit(h: str) -> int:
        raise RuntimeError("not supported")

    fake.nvmlDeviceGetPowerManagementLimit = no_limit  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    server: Any = types.SimpleNamespace(gpu_count=1, models={})
    registry = CollectorRegistry()
    registry.register(ServerCollector(server, cpu=False))
    fams = {f.name: f for f in text_string_to_metric_families(exposition(registry).decode())}
    gpu = {"gpu_uuid": "GPU-h1"}
    assert value(fams, "nv_gpu_utilization", **gpu) == pytest.approx(0.42)
    assert value(fams, "nv_gpu_memory_total_bytes", **gpu) == 80 << 30
    assert value(fams, "nv_gpu_memory_used_bytes", **gpu) == 1 << 30
    assert value(fams, "nv_gpu_power_usage", **gpu) == pytest.approx(123.456)
    assert value(fams, "nv_gpu_power_limit", **gpu) == 0
    assert not any(name.startswith("nv_cpu_") for name in fams)

    cpu_only: Any = types.SimpleNamespace(gpu_count=0, models={})
    registry = CollectorRegistry()
    registry.register(ServerCollector(cpu_only))
    assert b"nv_gpu_" not in exposition(registry)
