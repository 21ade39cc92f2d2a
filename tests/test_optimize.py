"""`torchtide optimize`: variants of small real models (an MLP and a CNN built here, saved as
TorchScript) are built, gated and timed; the winner is written as a new version that a real
server loads and serves with the original's outputs. Timing is cut to a few calls per block
(never asserted on: a loaded machine decides nothing here); `--select` picks the variant so
that the writing path does not depend on which variant happens to be faster."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.conftest import start_app
from tests.models import ADD_SUB_CONFIG, write_add_sub
from torchtide import cli
from torchtide.optimize import (
    CANDIDATES,
    Candidate,
    OptimizeOptions,
    Status,
    Tier,
    TimingOptions,
    optimize,
)
from torchtide.optimize import candidates as candmod
from torchtide.optimize.gates import judge
from torchtide.optimize.source import open_source

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

FAST = TimingOptions(block_s=0.005, min_calls=2, warmup_calls=1, min_rounds=1, max_rounds=1)
FAST_FLAGS = ["--block-seconds", "0.005", "--max-rounds", "1"]


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = torch.nn.Linear(16, 32)
        self.l2 = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))


class Cnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Noisy(torch.nn.Module):
    """The MLP with a visible error: a broken conversion."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y + 0.05 * y.abs().mean()


class BatchDependent(torch.nn.Module):
    """Right at batch 1, wrong in a batch: rows see each other (a batch-mixing bug)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x - x.mean(0, keepdim=True) + x)


def mlp() -> Mlp:
    torch.manual_seed(0)
    return Mlp().eval()


def cnn() -> Cnn:
    torch.manual_seed(0)
    m = Cnn()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


MLP_CONFIG = """name: "mlp"
platform: "pytorch_libtorch"
max_batch_size: 8
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [10] }]
dynamic_batching {}
instance_group [{ count: 1 kind: KIND_CPU }]
parameters { key: "NUM_THREADS" value { string_value: "1" } }
"""

CNN_CONFIG = """name: "cnn"
platform: "pytorch_libtorch"
max_batch_size: 4
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [3, 12, 12] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [5] }]
dynamic_batching {}
"""


def write_torchscript(repo: Path, name: str, module: torch.nn.Module, config: str) -> Path:
    d = repo / name
    (d / "1").mkdir(parents=True)
    torch.jit.script(module).save(str(d / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    (d / "config.pbtxt").write_text(config)
    return d


def real_samples(path: Path, shape: tuple[int, ...], n: int = 24) -> Path:
    rng = np.random.default_rng(7)
    np.savez(path, INPUT__0=rng.standard_normal((n, *shape)).astype(np.float32))
    return path


def by_name(result: Any) -> dict[str, Any]:
    return {v.name: v for v in result.variants}


def served_outputs(repo: Path, model: str, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    app = start_app(repo, grpc=False)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
        inp = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer(model, [inp])
        cfg = client.get_model_config(model)
        out = res.as_numpy("OUTPUT__0")
        client.close()
        return out, cfg
    finally:
        app.stop()


# --------------------------------------------------------------------------- end to end


def test_cli_writes_a_new_version_that_a_real_server_serves(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    rc = cli.main(
        ["optimize", str(d), "--candidates", "onnx,openvino", "--select", "onnx", *FAST_FLAGS]
    )
    assert rc == 0
    assert (d / "1" / "model.pt").is_file(), "the old version is kept"
    assert (d / "2" / "model.onnx").is_file()
    assert (d / "config.pbtxt.v1").read_text() == MLP_CONFIG
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    out, cfg = served_outputs(tmp_path, "mlp", x)
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["parameters"]["NUM_THREADS"]["string_value"] == "1"
    with torch.inference_mode():
        want = mlp()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    report = json.loads((d / "optimize" / "optimize-report.json").read_text())
    assert report["winner"] == "onnx" and report["new_version"] == 2
    assert (d / "2" / "optimize.json").is_file()
    # rollback: the version goes, the old config comes back, and version 1 serves again
    assert cli.main(["optimize", "--rollback", str(d)]) == 0
    assert not (d / "2").exists()
    assert (d / "config.pbtxt").read_text() == MLP_CONFIG
    out, cfg = served_outputs(tmp_path, "mlp", x)
    assert cfg["platform"] == "pytorch_libtorch"
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


async def test_a_polling_server_picks_the_new_version_up(tmp_path: Path) -> None:
    """Seed 001's hot update: a server in poll mode serves the optimized version after its
    next poll, without a restart."""
    import asyncio

    from torchtide.server import InferenceServer, ServerOptions

    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    s = InferenceServer(ServerOptions([tmp_path], control_mode="poll", poll_secs=3600))
    await s.start()
    try:
        x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
        before = (await s.infer_numpy("mlp", {"INPUT__0": x}))["OUTPUT__0"]
        opts = OptimizeOptions(candidates=["onnx"], select="onnx", timing=FAST)
        result = await asyncio.to_thread(optimize, d, opts)
        assert result.new_version == 2
        await s.poll_once()
        assert s.model_metadata("mlp")["versions"] == ["2"]
        assert s.model_config("mlp").platform == "onnxruntime_onnx"
        after = (await s.infer_numpy("mlp", {"INPUT__0": x}))["OUTPUT__0"]
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    finally:
        await s.stop()


def test_openvino_variant_of_a_cnn_is_served(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "cnn", cnn(), CNN_CONFIG)
    opts = OptimizeOptions(candidates=["openvino"], select="openvino", timing=FAST)
    result = optimize(d, opts)
    assert result.new_version == 2 and result.winner == "openvino"
    assert (d / "2" / "model.xml").is_file() and (d / "2" / "model.bin").is_file()
    x = np.random.default_rng(2).standard_normal((2, 3, 12, 12)).astype(np.float32)
    out, cfg = served_outputs(tmp_path, "cnn", x)
    assert cfg["backend"] == "openvino"
    with torch.inference_mode():
        want = cnn()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_report_files_and_fields(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    result = optimize(d, OptimizeOptions(candidates=["onnx"], timing=FAST, dry_run=True))
    assert result.new_version is None and not (d / "2").exists()
    names = sorted(p.name for p in (d / "optimize").iterdir())
    assert names == ["optimize-report.json", "optimize-report.md", "optimize-report.png"]
    report = json.loads((d / "optimize" / "optimize-report.json").read_text())
    assert report["samples"] == {
        "origin": "generated from the config (32 random samples)",
        "real": False,
        "count": 32,
    }
    assert report["batch_sizes"] == [1, 8]
    assert report["warnings"] and "random data" in report["warnings"][0]
    variants = {v["name"]: v for v in report["variants"]}
    onnx = variants["onnx"]
    assert onnx["status"] in ("passed", "selected")
    assert onnx["accuracy"]["passed"] is True
    out = onnx["accuracy"]["outputs"][0]
    assert out["kind"] == "classes" and out["top1"] == 1.0 and out["cos_min"] > 0.99999
    assert [s["batch"] for s in onnx["speed"]] == [1, 8]
    assert {"ratio", "spread", "rounds", "stable", "background_cores"} <= set(onnx["speed"][0])
    assert variants["eager"]["speed"], "eager against itself: the noise band"
    assert "torch" in report["environment"]["packages"]
    md = (d / "optimize" / "optimize-report.md").read_text()
    assert "| onnx | lossless |" in md and "random" in md


# --------------------------------------------------------------------------- gates fail closed


def _export_variant(module_fn: Any) -> Any:
    def build(ctx: candmod.BuildContext, model_dir: Path) -> list[str]:
        src = ctx.source
        torch.onnx.export(  # a conversion gone wrong: a different module is exported
            module_fn(),
            src.torch_args(candmod._example(ctx)),
            str(model_dir / "1" / "model.onnx"),
            input_names=["INPUT__0"],
            output_names=["OUTPUT__0"],
            dynamic_axes={"INPUT__0": {0: "b"}, "OUTPUT__0": {0: "b"}},
            dynamo=False,
        )
        cfg = candmod.derive_config(src, "onnxruntime", "onnxruntime_onnx", "model.onnx")
        candmod.write_config(cfg, model_dir)
        return []

    return build


def test_a_variant_that_fails_its_gate_is_reported_never_chosen(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    broken = Candidate(
        "broken",
        Tier.LOSSLESS,
        "exports a wrong model",
        lambda s: None,
        _export_variant(lambda: Noisy(mlp()).eval()),
    )
    batchy = Candidate(
        "batchy",
        Tier.INT8,
        "mixes the rows of a batch",
        lambda s: None,
        _export_variant(lambda: BatchDependent(mlp()).eval()),
    )
    samples = real_samples(tmp_path / "s.npz", (16,))
    opts = OptimizeOptions(
        candidates=["broken", "batchy"],
        extra=[broken, batchy],
        select="broken",
        precision="int8",
        samples=samples,
        timing=FAST,
    )
    result = optimize(d, opts)
    v = by_name(result)
    assert v["broken"].status is Status.FAILED
    assert "max |d|" in v["broken"].reason or "cosine" in v["broken"].reason
    assert not v["broken"].speed, "a variant that fails its gate is not timed"
    assert v["batchy"].status is Status.FAILED
    assert "batch-8 vs batch-1" in v["batchy"].reason, v["batchy"].reason
    assert v["batchy"].accuracy is not None and v["batchy"].accuracy.passed, "batch 1 is right"
    assert result.winner == "eager" and result.new_version is None
    assert not (d / "2").exists()
    assert any("--select broken" in w for w in result.warnings)


def test_user_gate_can_fail_a_variant(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    opts = OptimizeOptions(
        candidates=["onnx"],
        select="onnx",
        timing=FAST,
        user_gate=lambda ref, got: "task metric below 0.9",
        time_failed=True,
    )
    result = optimize(d, opts)
    v = by_name(result)["onnx"]
    assert v.status is Status.FAILED
    assert "user gate: task metric below 0.9" in v.reason
    assert [s.batch for s in v.speed] == [1, 8], "timed for the report (time_failed)"
    assert result.new_version is None and result.winner == "eager"


def test_lossy_tiers_refuse_random_data(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    opts = OptimizeOptions(
        candidates=["onnx-int8"], precision="int8", select="onnx-int8", timing=FAST
    )
    result = optimize(d, opts)
    v = by_name(result)["onnx-int8"]
    assert v.status in (Status.REFUSED, Status.FAILED), v.reason
    if v.status is Status.REFUSED:
        assert "random" in v.reason
    assert result.winner == "eager" and not (d / "2").exists()
    # with real samples the same variant is judged on them and may be chosen
    opts.samples = real_samples(tmp_path / "s.npz", (16,))
    result = optimize(d, opts)
    v = by_name(result)["onnx-int8"]
    assert result.samples_real and v.status is not Status.REFUSED
    assert v.accuracy is not None and v.accuracy.outputs[0].cos_min > 0.9
    assert v.status is Status.SELECTED if v.accuracy.passed else v.status is Status.FAILED


def test_int8_variants_of_a_cnn(tmp_path: Path) -> None:
    """Static QDQ calibration (the graph has convolutions) and NNCF: built, gated, reported."""
    pytest.importorskip("nncf")
    d = write_torchscript(tmp_path, "cnn", cnn(), CNN_CONFIG)
    opts = OptimizeOptions(
        candidates=["onnx-int8", "openvino-int8"],
        precision="int8",
        samples=real_samples(tmp_path / "s.npz", (3, 12, 12), 16),
        timing=FAST,
        dry_run=True,
    )
    result = optimize(d, opts)
    v = by_name(result)
    assert "static QDQ" in v["onnx-int8"].notes[0]
    assert "NNCF" in v["openvino-int8"].notes[0]
    for name in ("onnx-int8", "openvino-int8"):
        acc = v[name].accuracy
        assert acc is not None and acc.outputs[0].cos_mean > 0.9, (name, v[name].reason)
        assert v[name].status is not Status.SKIPPED


def test_latency_budget_excludes_slow_variants(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    opts = OptimizeOptions(
        candidates=["onnx"], timing=FAST, min_gain=0.0, latency_budget_ms=1e-9, dry_run=True
    )
    result = optimize(d, opts)
    v = by_name(result)["onnx"]
    assert v.status is Status.PASSED and "over the 1e-09 ms budget" in v.reason
    assert result.winner == "eager"


def test_precision_tier_limits_the_variants(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    result = optimize(d, OptimizeOptions(candidates=["onnx-int8"], timing=FAST))
    v = by_name(result)["onnx-int8"]
    assert v.status is Status.SKIPPED and "--precision int8" in v.reason


# --------------------------------------------------------------------------- bf16 (written here, run where the CPU has it)


def test_bf16_variants_are_skipped_without_native_bf16(tmp_path: Path) -> None:
    from torchtide.backends.precision import cpu_has_bf16

    if cpu_has_bf16():
        pytest.skip("this CPU has bf16")
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    result = optimize(
        d,
        OptimizeOptions(candidates=["eager-bf16", "openvino-bf16"], precision="bf16", timing=FAST),
    )
    for name in ("eager-bf16", "openvino-bf16"):
        v = by_name(result)[name]
        assert v.status is Status.SKIPPED
        assert v.reason.startswith("this CPU has no native bf16"), v.reason


def test_bf16_variants_write_their_precision_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(candmod, "cpu_has_bf16", lambda: True)
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    src = open_source(d)
    from torchtide.optimize.samples import generated

    ctx = candmod.BuildContext(src, generated(src.config, 4), tmp_path / "work", lambda t: None)
    eager = CANDIDATES["eager-bf16"].build(ctx)
    text = (eager.model_dir / "config.pbtxt").read_text()
    assert 'key: "INFERENCE_PRECISION"' in text and 'string_value: "bf16"' in text
    assert (eager.model_dir / "1" / "model.pt").is_file()
    ov_bf16 = CANDIDATES["openvino-bf16"].build(ctx)
    text = (ov_bf16.model_dir / "config.pbtxt").read_text()
    assert 'backend: "openvino"' in text and 'key: "INFERENCE_PRECISION_HINT"' in text
    assert (ov_bf16.model_dir / "1" / "model.xml").is_file()


# --------------------------------------------------------------------------- inputs and usage


def test_samples_from_a_bench_data_file_are_real(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    rng = np.random.default_rng(3)
    data = {"data": [{"INPUT__0": rng.standard_normal(16).tolist()} for _ in range(5)]}
    (tmp_path / "data.json").write_text(json.dumps(data))
    result = optimize(
        d,
        OptimizeOptions(
            candidates=["onnx"], samples=tmp_path / "data.json", timing=FAST, dry_run=True
        ),
    )
    assert result.samples_real and result.sample_count == 5 and not result.warnings


def test_samples_from_model_warmup_data_files_are_real(tmp_path: Path) -> None:
    warm = """model_warmup [{ name: "w" batch_size: 2 inputs { key: "INPUT__0" value {
  data_type: TYPE_FP32 dims: [16] input_data_file: "x.bin" } } }]
"""
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG + warm)
    (d / "warmup").mkdir()
    (d / "warmup" / "x.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    result = optimize(d, OptimizeOptions(candidates=["onnx"], timing=FAST, dry_run=True))
    assert result.samples_real and result.samples_origin == "model_warmup"
    assert result.sample_count == 2 and by_name(result)["onnx"].status is not Status.FAILED


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["optimize", "--help"])
    assert e.value.code == 0
    assert "--precision" in capsys.readouterr().out
    assert cli.main(["optimize", str(tmp_path / "nope")]) == 2
    write_add_sub(tmp_path)
    assert cli.main(["optimize", str(tmp_path / "add_sub")]) == 2
    assert "Python-backend" in capsys.readouterr().err
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    assert cli.main(["optimize", str(d), "--candidates", "tensorrt"]) == 2
    assert "unknown candidate 'tensorrt'" in capsys.readouterr().err
    assert cli.main(["optimize", "--rollback", str(d)]) == 2
    assert ADD_SUB_CONFIG  # the python model above used the standard config


def test_variant_from_an_nn_module_given_through_the_api(tmp_path: Path) -> None:
    """The served file is TorchScript; the module is what the converters start from."""
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    result = optimize(
        d, OptimizeOptions(candidates=["openvino"], timing=FAST, dry_run=True), module=mlp()
    )
    v = by_name(result)["openvino"]
    assert v.status in (Status.PASSED, Status.SELECTED), v.reason
    assert "converted from PyTorch" in v.notes[0]
    shutil.rmtree(d / "optimize")


# --------------------------------------------------------------------------- gate functions


def test_gate_thresholds_by_tier() -> None:
    rng = np.random.default_rng(0)
    ref = [{"y": rng.standard_normal(10).astype(np.float32)} for _ in range(20)]
    same = [{"y": r["y"].copy()} for r in ref]
    assert judge(ref, same, Tier.LOSSLESS).passed
    noisy = [{"y": (r["y"] + 0.01 * rng.standard_normal(10)).astype(np.float32)} for r in ref]
    lossless = judge(ref, noisy, Tier.LOSSLESS)
    assert not lossless.passed and any("max |d|" in f for f in lossless.failures)
    assert judge(ref, noisy, Tier.INT8).passed
    nan = [{"y": r["y"].copy()} for r in ref]
    nan[3]["y"][0] = np.nan
    assert "NaN" in judge(ref, nan, Tier.INT8).failures[0]
    assert "missing" in judge(ref, [{} for _ in ref], Tier.INT8).failures[0]
    shape = [{"y": r["y"][:5]} for r in ref]
    assert not judge(ref, shape, Tier.INT8).passed


def test_embeddings_are_not_judged_by_top1() -> None:
    rng = np.random.default_rng(0)
    e = rng.standard_normal((8, 32))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    ref = [{"emb": row.astype(np.float32)} for row in e]
    v = judge(ref, ref, Tier.INT8)
    assert v.outputs[0].kind == "embedding" and v.outputs[0].top1 is None


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 12)),
        elements=st.floats(-1e3, 1e3, width=32),
    )
)
def test_identical_outputs_always_pass_every_tier(x: np.ndarray) -> None:
    ref = [{"y": row} for row in x]
    for tier in Tier:
        assert judge(ref, [{"y": row.copy()} for row in x], tier).passed


# --------------------------------------------------------------------------- AOTInductor (slow)


@pytest.mark.slow
def test_aoti_variant_is_served_without_compiling(tmp_path: Path) -> None:
    d = write_torchscript(tmp_path, "mlp", mlp(), MLP_CONFIG)
    result = optimize(
        d, OptimizeOptions(candidates=["aoti"], select="aoti", timing=FAST), module=mlp()
    )
    v = by_name(result)["aoti"]
    assert v.status is Status.SELECTED, v.reason
    assert result.new_version == 2
    x = np.random.default_rng(4).standard_normal((5, 16)).astype(np.float32)
    out, cfg = served_outputs(tmp_path, "mlp", x)
    assert cfg["platform"] == "torch_aoti"
    with torch.inference_mode():
        want = mlp()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
