"""Helpers for the tests of deploy/: paths, rendered manifests, the metric names torchtide
exports, the PromQL of the dashboard and the rules, and the HPA's replica formula."""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from torchtide.metrics import ServerCollector

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
DOCKERFILES = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.cuda"]
RULES = DEPLOY / "prometheus" / "torchtide-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "torchtide-rules.test.yaml"
ADAPTER = DEPLOY / "prometheus" / "adapter-rules.yaml"
DASHBOARD = DEPLOY / "grafana" / "torchtide.json"
OVERLAYS = ["cpu", "gpu"]

# KServe's own Triton runtime (kserve/kserve config/runtimes/kserve-tritonserver.yaml): the argv
# our ClusterServingRuntime must reproduce.
KSERVE_TRITON_ARGV = [
    "tritonserver",
    "--model-store=/mnt/models",
    "--grpc-port=9000",
    "--http-port=8080",
    "--allow-grpc=true",
    "--allow-http=true",
]

# Metrics that are not torchtide's but that the alerts may read: Prometheus' own `up`, and
# kube-state-metrics' pod and HPA state. The dashboard reads only torchtide's and `up`.
EXTERNAL_METRICS = {
    "up",
    "kube_pod_container_status_ready",
    "kube_pod_container_status_restarts_total",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
}


def exported_metrics() -> dict[str, str]:
    """Every sample name torchtide's metrics page can carry -> its family's type (a histogram's
    family gives _bucket, _sum and _count)."""
    out: dict[str, str] = {}
    for fam in ServerCollector(None).describe():  # type: ignore[arg-type]
        if fam.type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[fam.name + suffix] = "histogram"
        else:
            out[fam.name] = fam.type
    return out


@functools.cache
def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return data


def recording_rules() -> dict[str, str]:
    return {r["record"]: r["expr"] for g in rules()["groups"] for r in g["rules"] if "record" in r}


def alert_rules() -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in rules()["groups"] for r in g["rules"] if "alert" in r}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, panels inside rows included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard()["panels"])
    return out


def substitute(expr: str, rate_interval: str = "15s") -> str:
    """A dashboard query as Grafana would send it with every variable set to All."""
    expr = expr.replace("$__rate_interval", rate_interval)
    return re.sub(r"\$\{?(namespace|pod|model)\}?", ".*", expr)


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def kustomize(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(DEPLOY / "k8s" / "overlays" / overlay))


@functools.cache
def rendered_kserve() -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(DEPLOY / "k8s" / "kserve"))


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, (kind, [d["kind"] for d in docs])
    return found[0]


def hpa_desired_replicas(
    current: int, average_value: float, target: float, min_r: int, max_r: int
) -> int:
    """Kubernetes' HPA rule for a Pods metric with an AverageValue target: ceil(current x
    average / target), unchanged within the 10 % tolerance, clamped to [min, max]."""
    ratio = average_value / target
    desired = current if abs(ratio - 1.0) <= 0.1 else math.ceil(current * ratio)
    return max(min_r, min(max_r, desired))
