"""A real Prometheus (Debian's package, run here with a temporary config) scrapes a loopback
torchtide every second and evaluates deploy/prometheus/torchtide-rules.yaml while
`torchtide bench` loads it. Through Prometheus' HTTP API: every dashboard query, every recording
rule and the HPA's metric return data; the HPA metric rises above its target under load and
falls back when the load stops; the HPA formula on it asks for more pods, then for the minimum."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.conftest import free_port, start_app
from tests.deploy_util import (
    ADAPTER,
    BIN,
    ROOT,
    RULES,
    dashboard_exprs,
    exported_metrics,
    hpa_desired_replicas,
    one,
    recording_rules,
    rendered,
    substitute,
)
from tests.models import write_add_sub, write_model
from torchtide.app import AppThread

T = TypeVar("T")

# One instance, batches of at most 4, 100 ms per batch: 24 callers keep about 20 waiting.
SLOW_CONFIG = """
backend: "python"
max_batch_size: 4
input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [1] }]
dynamic_batching {}
instance_group [{ count: 1 kind: KIND_CPU }]
"""
SLOW_PY = """
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.1)
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]
            )
            for r in requests
        ]
"""
CALLERS = 24
LABELS = {"namespace": "test", "pod": "torchtide-0", "container": "torchtide"}


class Prometheus:
    """prometheus on a free loopback port, scraping `target` every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "torchtide",
                    "static_configs": [{"targets": [target], "labels": LABELS}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: run scripts/setup.sh"
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        poll(lambda: self._ready(), 60, "prometheus ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def poll(fn: Callable[[], T | None], timeout: float, what: str) -> T:
    """fn's first truthy result, checked every 0.2 s for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[AppThread, Prometheus]]:
    repo = tmp_path / "repo"
    write_model(repo, "slow", SLOW_CONFIG, {"1/model.py": SLOW_PY})
    write_add_sub(repo)
    app = start_app(repo, metrics=True)
    try:
        prom = Prometheus(tmp_path, f"127.0.0.1:{app.app.port('metrics')}")
        try:
            yield app, prom
        finally:
            prom.stop()
    finally:
        app.stop()


def bench(app: AppThread) -> subprocess.Popen[bytes]:
    """`torchtide bench`: CALLERS closed-loop HTTP callers, bounded to 60 s at most."""
    return subprocess.Popen(
        [
            str(BIN / "torchtide"),
            "bench",
            "slow",
            "-u",
            f"127.0.0.1:{app.app.port('http')}",
            "--concurrency",
            str(CALLERS),
            "--duration",
            "60",
            "--warmup",
            "0",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def hpa_metric(prom: Prometheus) -> float | None:
    """The HPA's pods metric for our pod, through prometheus-adapter's query template."""
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    series = rule["seriesQuery"].split("{")[0].strip("'")
    expr = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", 'namespace="test",pod=~"torchtide-0"')
        .replace("<<.GroupBy>>", "pod")
    )
    result = prom.query(expr)
    if not result:
        return None
    ((labels, value),) = result
    assert labels == {"pod": "torchtide-0"}
    # The recording rule itself reads the same.
    ((_, recorded),) = prom.query('torchtide:pending_requests:pod{namespace="test"}')
    return value if value == recorded else None


def test_dashboard_rules_and_hpa_metric_against_a_real_prometheus(
    stack: tuple[AppThread, Prometheus],
) -> None:
    app, prom = stack
    hpa = one(rendered("cpu"), "HorizontalPodAutoscaler")
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    target = float(pods["target"]["averageValue"])
    lo, hi = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert target * 1.1 < CALLERS - 4  # the load can lift the metric past the target

    # Idle: scraped, rules evaluated, nothing pending, the HPA wants the minimum.
    poll(lambda: prom.query('up{job="torchtide"} == 1'), 60, "torchtide scraped")

    def idle_metric() -> list[float] | None:
        v = hpa_metric(prom)
        return None if v is None else [v]

    assert poll(idle_metric, 60, "the HPA metric while idle") == [0.0]
    assert hpa_desired_replicas(1, 0.0, target, lo, hi) == lo

    # What Prometheus scrapes is what torchtide says it exports (GPU gauges only with a GPU).
    scraped = {m["__name__"] for m, _ in prom.query('count by (__name__) ({job="torchtide"})')}
    exported = set(exported_metrics())
    has_gpu = any(n.startswith("nv_gpu_") for n in scraped)
    assert scraped - {"up"} - {n for n in scraped if n.startswith("scrape_")} <= exported
    assert {n for n in exported if has_gpu or not n.startswith("nv_gpu_")} <= scraped

    load = bench(app)
    try:
        # Under load the metric passes the target and the HPA asks for more pods.
        def above() -> float | None:
            assert load.poll() is None, load.stderr.read() if load.stderr else b""
            v = hpa_metric(prom)
            return v if v is not None and v > target * 1.1 else None

        peak = poll(above, 45, f"pending requests per pod above {target}")
        assert peak <= CALLERS
        assert hpa_desired_replicas(1, peak, target, lo, hi) >= 2

        # Every recording rule and every dashboard query returns data (GPU panels: with a GPU).
        for name in recording_rules():
            poll(lambda n=name: prom.query(n), 30, f"recording rule {name}")
        for title, expr in dashboard_exprs():
            if not has_gpu and "nv_gpu_" in expr:
                continue
            q = substitute(expr, rate_interval="10s")
            poll(lambda q=q: prom.query(q), 30, f"dashboard panel {title!r}: {q}")
        # Requests wait for several 100 ms batches: the p99 from the histogram shows it.
        p99 = dict(
            (m["model"], v) for m, v in prom.query("torchtide:request_duration_seconds:p99_5m")
        )
        assert p99["slow"] > 0.1, p99
        for group in prom.api("rules")["groups"]:
            for rule in group["rules"]:
                assert rule["health"] == "ok", rule
    finally:
        load.terminate()
        load.wait(30)

    # Load gone: the metric falls back to 0 and the HPA formula returns to the minimum.
    poll(lambda: hpa_metric(prom) == 0.0, 45, "pending requests back to 0")
    assert hpa_desired_replicas(hi, 0.0, target, lo, hi) == lo
