"""The production assets of deploy/, checked with the tools a developer has without a Docker
engine or a cluster: hadolint and a reading of the Dockerfiles, the entrypoint script run for
real, docker-compose's own validation, `kubectl kustomize` renders, kubernetes-validate --strict
on every Kubernetes version we claim, policy checks on the rendered objects, the structure of
the custom resources, KServe's argv started for real, promtool on the rules, and the dashboard's
queries against the metric names torchtide exports."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port
from tests.deploy_util import (
    ADAPTER,
    BIN,
    DASHBOARD,
    DEPLOY,
    DOCKERFILES,
    EXTERNAL_METRICS,
    KSERVE_TRITON_ARGV,
    OVERLAYS,
    ROOT,
    RULE_TESTS,
    RULES,
    dashboard,
    dashboard_exprs,
    exported_metrics,
    hpa_desired_replicas,
    metric_names,
    one,
    recording_rules,
    rendered,
    rendered_kserve,
    rules,
    substitute,
)
from tests.models import write_add_sub
from torchtide.cli import serve_parser

# The Kubernetes versions the manifests are claimed (README) and checked to be valid for.
K8S_VERSIONS = [f"1.{minor}.0" for minor in range(30, 38)]
CORE_GROUPS = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "autoscaling/v2"}


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


# ---------------------------------------------------------------------------- images


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (global ARGs before the first FROM belong to none)."""
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(dockerfile):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def global_args(dockerfile: Path) -> dict[str, str]:
    args = {}
    for word, rest in instructions(dockerfile):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def base_image(dockerfile: Path, from_args: str) -> str:
    image = from_args.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: global_args(dockerfile)[m.group(1)], image)


def test_hadolint_finds_nothing() -> None:
    done = run(BIN / "hadolint", "--config", DEPLOY / "docker" / ".hadolint.yaml", *DOCKERFILES)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    """The same command fails on the mistakes the images avoid (so a pass means something)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nUSER root\nCMD python -m x\n")
    done = run(BIN / "hadolint", "--config", DEPLOY / "docker" / ".hadolint.yaml", bad)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3002", "DL3025"):
        assert rule in done.stdout, rule


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(dockerfile: Path) -> None:
    st = stages(dockerfile)
    assert len(st) >= 2, "multi-stage: build tools stay in the build stage"
    final = st[-1]
    names = [f[1].split() for f in (s[0] for s in st)]
    build_stage = names[0][-1]
    # Every base pinned: an exact version tag (or a digest), never `latest`.
    for s in st:
        image = base_image(dockerfile, s[0][1])
        ref, _, digest = image.partition("@")
        repo, _, tag = ref.rpartition(":")
        assert repo and tag and tag != "latest", image
        assert re.match(r"\d+\.\d+\.\d+", tag) or digest.startswith("sha256:"), image
    # The final stage copies the build stage's venv and installs nothing with pip.
    copies = [r for w, r in final if w == "COPY"]
    assert any(f"--from={build_stage}" in c and "/opt/venv" in c for c in copies)
    final_runs = " ".join(r for w, r in final if w == "RUN")
    assert "pip install" not in final_runs
    for tool in ("build-essential", "gcc", "g++", "git "):
        assert tool not in final_runs
    # Non-root, numeric.
    users = [r for w, r in final if w == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    # Exec-form ENTRYPOINT and CMD.
    (entrypoint,) = [r for w, r in final if w == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/usr/local/bin/torchtide-entrypoint"]
    (cmd,) = [r for w, r in final if w == "CMD"]
    cmd_argv = json.loads(cmd)
    assert cmd_argv[0] == "serve" and "--model-repository=/models" in cmd_argv
    assert any("entrypoint.sh /usr/local/bin/torchtide-entrypoint" in c for c in copies)
    # HEALTHCHECK in exec form on /v2/health/ready.
    (health,) = [r for w, r in final if w == "HEALTHCHECK"]
    options, _, check = health.partition("CMD ")
    assert "--interval=" in options and "--start-period=" in options
    assert json.loads(check)[0] == "python" and "/v2/health/ready" in check
    # Read-only root filesystem: caches, temp files and bytecode go to /tmp or nowhere.
    env = " ".join(r for w, r in final if w == "ENV")
    for setting in ("HOME=/tmp", "TMPDIR=/tmp", "PYTHONDONTWRITEBYTECODE=1"):
        assert setting in env, setting
    assert not [r for w, r in final if w == "VOLUME"], "no anonymous volumes on the root FS"
    exposed = {p for w, r in final if w == "EXPOSE" for p in r.split()}
    assert exposed == {"8000", "8001", "8002"}
    # torch comes from a build-arg index; the CPU image's is PyTorch's CPU-only index.
    args = {r.partition("=")[0]: r.partition("=")[2] for w, r in st[0] if w == "ARG"}
    assert "TORCH_INDEX" in args and "TORCH_VERSION" in args
    if dockerfile.name == "Dockerfile":
        assert args["TORCH_INDEX"].endswith("/whl/cpu")
        assert "python:" in base_image(dockerfile, st[-1][0][1])
    else:
        assert base_image(dockerfile, st[-1][0][1]).startswith("nvidia/cuda:")
    # The extras the server needs, nothing for plotting or the examples.
    build_runs = " ".join(r for w, r in st[0] if w == "RUN")
    assert '"/src[onnx]"' in build_runs


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    entries = [e.strip() for e in lines if e.strip() and not e.startswith("#")]
    assert entries[0] == "*"  # everything excluded, then the few paths the images copy
    copied = {
        src.rstrip("/")
        for f in DOCKERFILES
        for w, r in instructions(f)
        if w == "COPY" and "--from" not in r
        for src in r.split()[:-1]
        if not src.startswith("--")
    }
    assert copied == {"pyproject.toml", "README.md", "src", "deploy/docker/entrypoint.sh"}
    for src in copied:
        assert f"!{src}" in entries or f"!{src}/" in entries, src


def entrypoint(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "src"),
    }
    return subprocess.run(
        ["sh", str(DEPLOY / "docker" / "entrypoint.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_entrypoint_runs_tritonserver_argv_and_hands_the_rest_to_torchtide() -> None:
    done = entrypoint("tritonserver", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: tritonserver"), done.stderr
    done = entrypoint("--version")
    assert done.returncode == 0 and done.stdout.startswith("torchtide "), done.stderr
    done = entrypoint("serve", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: torchtide serve")
    done = entrypoint("sh", "-c", "exec tritonserver --help")  # ModelMesh's form
    assert done.returncode == 0 and done.stdout.startswith("usage: tritonserver")


def test_image_size_estimate_from_installed_wheels() -> None:
    done = run(sys.executable, DEPLOY / "docker" / "image_size.py", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    versions = report["versions"]
    assert "torch" in versions and "onnxruntime" in versions and "torchtide" in versions
    # The CPU image's closure: no CUDA wheels, nothing from the examples or plot extras.
    assert not [n for n in versions if n.startswith("nvidia-")]
    assert "matplotlib" not in versions and "transformers" not in versions
    assert 300 < report["venv_mb"] < 1600, report


# ---------------------------------------------------------------------------- compose


def test_docker_compose_config_is_valid() -> None:
    compose = DEPLOY / "docker-compose.yml"
    done = run("docker-compose", "-f", compose, "config", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    spec = yaml.safe_load(compose.read_text())
    services = spec["services"]
    assert set(services) == {"torchtide", "prometheus", "grafana"}
    tt = services["torchtide"]
    assert tt["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (compose.parent / tt["build"]["context"] / tt["build"]["dockerfile"]).is_file()
    assert tt["read_only"] is True and tt["tmpfs"] == ["/tmp"] and tt["cap_drop"] == ["ALL"]
    assert tt["user"].split(":")[0] == "1000"
    assert "/v2/health/ready" in " ".join(tt["healthcheck"]["test"])
    args, unknown = serve_parser().parse_known_args(tt["command"][1:])
    assert not unknown
    assert int(tt["stop_grace_period"].rstrip("s")) > args.exit_timeout_secs
    assert services["prometheus"]["depends_on"]["torchtide"]["condition"] == "service_healthy"
    # Every file mounted from the repository exists, and the rules and dashboard are the ones
    # the tests check.
    mounted = {}
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src, dst = vol.split(":")[:2]
            if src.startswith("."):
                path = (compose.parent / src).resolve()
                assert path.exists() or src.startswith("../examples"), src
                mounted[path] = dst
    assert mounted[RULES.resolve()].startswith("/etc/prometheus/rules/")
    assert mounted[DASHBOARD.resolve()] == "/var/lib/grafana/dashboards/torchtide.json"
    assert (ROOT / "examples" / "model_repository").is_dir()


def test_compose_prometheus_and_grafana_provisioning() -> None:
    prom = DEPLOY / "compose" / "prometheus.yml"
    done = run("promtool", "check", "config", prom)
    assert done.returncode == 0, done.stdout + done.stderr
    cfg = yaml.safe_load(prom.read_text())
    (job,) = cfg["scrape_configs"]
    (static,) = job["static_configs"]
    assert static["targets"] == ["torchtide:8002"]
    assert {"namespace", "pod"} <= set(static["labels"])  # what the rules group by
    ds = yaml.safe_load((DEPLOY / "compose" / "grafana" / "datasources.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    dash = yaml.safe_load((DEPLOY / "compose" / "grafana" / "dashboards.yaml").read_text())
    assert dash["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# ---------------------------------------------------------------------------- kubernetes


def validate(docs: list[dict[str, Any]], version: str, tmp_path: Path) -> str:
    """kubernetes-validate --strict of core-API objects: '' when valid and warning-free."""
    path = tmp_path / f"objects-{version}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    done = run(BIN / "kubernetes-validate", "--strict", "--quiet", "-k", version, path)
    problems = done.stdout + done.stderr
    return problems if done.returncode != 0 or problems.strip() else ""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_every_part(overlay: str) -> None:
    kinds = sorted(d["kind"] for d in rendered(overlay))
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "HorizontalPodAutoscaler",
            "PodMonitor",
            "PrometheusRule",
        ]
    )
    for d in rendered(overlay):
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "torchtide", d["kind"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_are_valid_for_every_claimed_kubernetes_version(
    version: str, tmp_path: Path
) -> None:
    docs = [d for o in OVERLAYS for d in rendered(o) if d["apiVersion"] in CORE_GROUPS]
    assert len(docs) == 2 * 7
    assert validate(docs, version, tmp_path) == ""


def test_validation_fails_on_warnings_a_plain_run_lets_pass(tmp_path: Path) -> None:
    """kubernetes-validate exits 0 on a removed API version (a WARN): we count it a failure."""
    hpa = json.loads(json.dumps(one(rendered("cpu"), "HorizontalPodAutoscaler")))
    hpa["apiVersion"] = "autoscaling/v2beta2"  # Triton's chart; removed in Kubernetes 1.26
    assert "Couldn't find schema" in validate([hpa], "1.30.0", tmp_path)
    dep = json.loads(json.dumps(one(rendered("cpu"), "Deployment")))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}  # a typo
    assert validate([dep], "1.30.0", tmp_path) != ""


def pod_spec(overlay: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(rendered(overlay), "Deployment")["spec"]["template"]["spec"]
    return spec


def server_args(container: dict[str, Any]) -> Any:
    argv = container["args"]
    assert argv[0] == "serve"
    args, unknown = serve_parser().parse_known_args(argv[1:])
    assert not unknown, unknown
    return args


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(overlay: str) -> None:
    spec = pod_spec(overlay)
    assert spec["automountServiceAccountToken"] is False
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    containers = spec["containers"] + spec.get("initContainers", [])
    tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for c in containers:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", psc["runAsUser"]) != 0
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert {"/tmp"} <= {m["mountPath"] for m in c["volumeMounts"] if m["name"] in tmp_volumes}
        res = c["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res[kind]), (c["name"], kind)
        assert res["limits"]["memory"] == res["requests"]["memory"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_graceful_shutdown(overlay: str) -> None:
    spec = pod_spec(overlay)
    (c,) = spec["containers"]
    args = server_args(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    assert args.strict_readiness is True
    assert args.http_address == "0.0.0.0"  # reachable by the kubelet's probes
    for probe, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        get = c[probe]["httpGet"]
        assert get["path"] == path and ports[get["port"]] == args.http_port, probe
    # Startup allows a slow model load; liveness cannot kill a pod that is still loading.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    # SIGTERM drains: the grace period covers the preStop pause and the server's exit timeout.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + args.exit_timeout_secs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_ports_agree(overlay: str) -> None:
    docs = rendered(overlay)
    dep = one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(dep["spec"]["selector"]["matchLabels"])
    svc = one(docs, "Service")
    assert selects(svc["spec"]["selector"])
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == ports == {"http", "grpc", "metrics"}
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert "maxUnavailable" in one(docs, "PodDisruptionBudget")["spec"]
    netpol = one(docs, "NetworkPolicy")
    assert selects(netpol["spec"]["podSelector"]["matchLabels"])
    allowed = {p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == ports
    pm = one(docs, "PodMonitor")
    assert selects(pm["spec"]["selector"]["matchLabels"])
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["metrics"]
    for tsc in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert selects(tsc["labelSelector"]["matchLabels"])
    assert (
        one(docs, "ServiceAccount")["metadata"]["name"]
        == dep["spec"]["template"]["spec"]["serviceAccountName"]
    )


def hpa_target(overlay: str) -> tuple[dict[str, Any], float]:
    hpa = one(rendered(overlay), "HorizontalPodAutoscaler")
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    return hpa, float(pods["target"]["averageValue"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_on_pending_requests_and_cpu(overlay: str) -> None:
    hpa, target = hpa_target(overlay)
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    dep = one(rendered(overlay), "Deployment")
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert "replicas" not in dep["spec"]  # the HPA owns it
    assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
    types = {m["type"]: m for m in spec["metrics"]}
    assert set(types) == {"Pods", "Resource"}
    pods = types["Pods"]["pods"]
    assert pods["metric"]["name"] == "torchtide_pending_requests"
    assert pods["target"]["type"] == "AverageValue" and target > 0
    assert types["Resource"]["resource"]["name"] == "cpu"
    behavior = spec["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] <= 60
    # The adapter serves that metric from the recording rule, per pod, any namespace.
    adapter = yaml.safe_load(ADAPTER.read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == pods["metric"]["name"]
    series = rule["seriesQuery"].split("{")[0].strip("'")
    assert series in recording_rules()
    assert "namespace" not in rule["metricsQuery"].replace("<<", "").split("{")[0]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_hpa_formula_on_the_shipped_target() -> None:
    hpa, target = hpa_target("cpu")
    lo, hi = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert hpa_desired_replicas(1, 0, target, lo, hi) == lo
    assert hpa_desired_replicas(1, target * 1.05, target, lo, hi) == 1  # within tolerance
    assert hpa_desired_replicas(1, target * 2.5, target, lo, hi) == 3
    assert hpa_desired_replicas(4, target * 0.4, target, lo, hi) == 2
    assert hpa_desired_replicas(2, target * 100, target, lo, hi) == hi


def test_overlays_differ_where_they_should() -> None:
    cpu, gpu = (pod_spec(o)["containers"][0] for o in OVERLAYS)
    assert cpu["image"].endswith("-cpu") and gpu["image"].endswith("-cuda")
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec("gpu")["tolerations"])


def test_prometheusrule_carries_the_rules_file() -> None:
    for overlay in OVERLAYS:
        pr = one(rendered(overlay), "PrometheusRule")
        assert pr["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(pr["spec"]) == {"groups"}
        assert pr["spec"]["groups"] == rules()["groups"]


# Fields of the custom resources we use, as the upstream CRDs define them (prometheus-operator
# monitoring.coreos.com_{podmonitors,prometheusrules}, KServe serving.kserve.io_*): a misspelt
# or misplaced key is an error here, as a strict schema would make it.
CR_FIELDS = {
    "PodMonitor.spec": {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"},
    "PodMonitor.endpoint": {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"},
    "PrometheusRule.group": {"name", "rules", "interval", "limit"},
    "PrometheusRule.rule": {"record", "alert", "expr", "for", "labels", "annotations", "keep_firing_for"},
    "ClusterServingRuntime.spec": {"annotations", "supportedModelFormats", "protocolVersions", "containers", "volumes", "multiModel", "disabled", "nodeSelector", "tolerations", "affinity", "labels", "imagePullSecrets", "grpcDataEndpoint", "grpcEndpoint", "httpDataEndpoint", "builtInAdapter", "replicas", "storageHelper", "hostIPC", "workerSpec"},
    "ClusterServingRuntime.format": {"name", "version", "autoSelect", "priority"},
    "InferenceService.predictor": {"model", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "canaryTrafficPercent", "containerConcurrency", "timeout", "serviceAccountName", "nodeSelector", "tolerations", "annotations", "labels", "resources", "autoScaling", "deploymentStrategy"},
    "InferenceService.model": {"modelFormat", "runtime", "storageUri", "protocolVersion", "resources", "env", "args"},
}  # fmt: skip


def keys_within(obj: dict[str, Any], allowed: str) -> None:
    extra = set(obj) - CR_FIELDS[allowed]
    assert not extra, f"{allowed}: unknown fields {extra}"


def test_custom_resources_have_the_crd_structure() -> None:
    docs = rendered("cpu")
    pm = one(docs, "PodMonitor")
    keys_within(pm["spec"], "PodMonitor.spec")
    for ep in pm["spec"]["podMetricsEndpoints"]:
        keys_within(ep, "PodMonitor.endpoint")
        assert re.fullmatch(r"\d+s", ep["interval"]) and re.fullmatch(r"\d+s", ep["scrapeTimeout"])
    for group in one(docs, "PrometheusRule")["spec"]["groups"]:
        keys_within(group, "PrometheusRule.group")
        for rule in group["rules"]:
            keys_within(rule, "PrometheusRule.rule")
            assert ("record" in rule) != ("alert" in rule) and rule["expr"].strip()
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"info", "warning", "critical"}
                assert {"summary", "description"} <= set(rule["annotations"])


def test_kserve_runtime_starts_torchtide_like_kserves_triton_runtime() -> None:
    (rt,) = rendered_kserve()
    assert (
        rt["apiVersion"] == "serving.kserve.io/v1alpha1" and rt["kind"] == "ClusterServingRuntime"
    )
    assert rt["metadata"]["annotations"]["serving.kserve.io/server-type"] == "tritonserver"
    spec = rt["spec"]
    keys_within(spec, "ClusterServingRuntime.spec")
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert spec["annotations"]["prometheus.kserve.io/port"] == "8002"
    formats = spec["supportedModelFormats"]
    for f in formats:
        keys_within(f, "ClusterServingRuntime.format")
        assert f["autoSelect"] is False  # never takes models from KServe's own runtimes
    assert {f["name"] for f in formats} == {"triton", "pytorch", "onnx"}
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container"
    assert c["args"] == KSERVE_TRITON_ARGV and "command" not in c
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    # torchtide's parser reads KServe's argv (and the flag KServe appends without storageUri)
    # as Triton does.
    for extra in ([], ["--model-control-mode=explicit"]):
        args, unknown = serve_parser("tritonserver").parse_known_args(c["args"][1:] + extra)
        assert not unknown
        assert args.repositories == [Path("/mnt/models")]
        assert (args.http_port, args.grpc_port, args.metrics_port) == (8080, 9000, 8002)
        assert args.allow_http and args.allow_grpc and args.allow_metrics
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TORCHTIDE_HEALTH_PORT"] == "8080"  # the image's HEALTHCHECK follows the port


def test_kserve_examples() -> None:
    examples = sorted((DEPLOY / "k8s" / "kserve" / "examples").glob("*.yaml"))
    assert [p.name for p in examples] == ["inferenceservice-canary.yaml", "inferenceservice.yaml"]
    for path in examples:
        isvc = yaml.safe_load(path.read_text())
        assert (
            isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
        )
        pred = isvc["spec"]["predictor"]
        keys_within(pred, "InferenceService.predictor")
        keys_within(pred["model"], "InferenceService.model")
        assert pred["model"]["runtime"] == "torchtide-tritonserver"
        assert pred["model"]["protocolVersion"] == "v2"
        assert pred["model"]["modelFormat"]["name"] == "triton"
    canary = yaml.safe_load(examples[0].read_text())
    assert 0 < canary["spec"]["predictor"]["canaryTrafficPercent"] < 100
    assert canary["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert canary["spec"]["predictor"]["containerConcurrency"] == 0


def test_kserve_argv_serves_on_loopback(tmp_path: Path) -> None:
    """The runtime's argv, started as is (`tritonserver`, our console script) with only the
    model store and the ports moved: a free port for 8080/9000/8002, loopback addresses."""
    (rt,) = rendered_kserve()
    write_add_sub(tmp_path)
    http, grpc, metrics = free_port(), free_port(), free_port()
    moved = {"/mnt/models": str(tmp_path), "9000": str(grpc), "8080": str(http)}
    argv = [
        re.sub(r"=(.*)$", lambda m: "=" + moved.get(m.group(1), m.group(1)), a)
        for a in rt["spec"]["containers"][0]["args"]
    ]
    argv[0] = str(BIN / argv[0])
    argv += [
        f"--metrics-port={metrics}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{http}/v2/health/ready", timeout=2
                ) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert proc.poll() is None, "server exited: " + shlex.join(argv)
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.1)
        import tritonclient.grpc as grpcclient

        assert grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}").is_model_ready("add_sub")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
            assert b"nv_inference_pending_request_count" in r.read()
        proc.terminate()
        assert proc.wait(30) == 0
        log = proc.stdout.read().decode() if proc.stdout else ""
        assert "unknown flags" not in log and "not implemented" not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# ---------------------------------------------------------------------------- rules, dashboard


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    done = run("promtool", "check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run("promtool", "test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every alert has a firing test, and the two-model pod is among the cases.
    text = RULE_TESTS.read_text()
    for alert in (r["alert"] for g in rules()["groups"] for r in g["rules"] if "alert" in r):
        assert f"alertname: {alert}" in text, alert
    assert "avg(delta(nv_inference_queue_duration_us[30s])" in text


def test_rules_read_only_metrics_that_exist() -> None:
    known = set(exported_metrics()) | set(recording_rules()) | EXTERNAL_METRICS
    for g in rules()["groups"]:
        for r in g["rules"]:
            unknown = metric_names(r["expr"]) - known
            assert not unknown, (r.get("record") or r.get("alert"), unknown)
    # Recording rules read torchtide's metrics only (they must have data on any cluster).
    for name, expr in recording_rules().items():
        assert metric_names(expr) <= set(exported_metrics()) | set(recording_rules()), name


def test_dashboard_structure() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] == "torchtide" and d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "pod", "model"}
    ids: list[int] = []
    titles: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            ids.append(p["id"])
            titles.append(p["title"].lower())
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, p["title"]
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${datasource}", p["title"]
                assert p["targets"], p["title"]
            for t in p.get("targets", []):
                assert t["datasource"]["uid"] == "${datasource}"
            walk(p.get("panels", []))

    walk(d["panels"])
    assert len(ids) == len(set(ids))
    wanted = [
        "request rate", "failures by reason", "p50 / p95 / p99", "queue vs compute",
        "batch size distribution", "pending requests per pod", "cpu utilization",
        "gpu utilization", "instance readiness",
    ]  # fmt: skip
    for w in wanted:
        assert any(w in t for t in titles), w
    assert any(p.get("repeat") == "model" for p in d["panels"])  # per-model panels


def test_dashboard_queries_use_only_exported_metrics(tmp_path: Path) -> None:
    exported = set(exported_metrics())
    known = exported | set(recording_rules()) | {"up"}
    used: set[str] = set()
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, (title, expr)
        assert names <= known, (title, names - known)
        used |= names
    # The histograms, the pending gauge and the failure reasons all appear.
    for name in (
        "torchtide_request_duration_seconds_bucket",
        "torchtide_batch_size_bucket",
        "nv_inference_pending_request_count",
        "nv_inference_request_failure",
        "nv_gpu_utilization",
        "nv_cpu_utilization",
    ):
        assert name in used, name
    # Every query parses: promtool checks them as recording rules.
    groups = [
        {
            "name": "dashboard",
            "rules": [
                {"record": f"dashboard:q{i}", "expr": substitute(expr)}
                for i, (_, expr) in enumerate(dashboard_exprs())
            ],
        }
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    done = run("promtool", "check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{model=~"x", le!="1"}[5m])))'
        " / on (pod) group_left b:rec > 0.5 and c offset 5m"
    ) == {"a_bucket", "b:rec", "c"}
    assert metric_names("sum without (instance) (x) unless y") == {"x", "y"}
