"""The pytorch backend's INFERENCE_PRECISION parameter (torchtide's: autocast in the instance
thread, outputs back in the config's data type) and AOTInductor packages (`model.pt2` from
`aoti_compile_and_package`, told apart from torch.export's `model.pt2`)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from tests.conftest import start_app
from tests.models import write_model
from torchtide.backends import aoti, precision
from torchtide.server import InferenceServer, ServerOptions


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp() -> Mlp:
    torch.manual_seed(0)
    return Mlp().eval()


def mlp_config(extra: str = "") -> str:
    return f"""
    platform: "pytorch_libtorch"
    max_batch_size: 8
    input [{{ name: "INPUT__0" data_type: TYPE_FP32 dims: [16] }}]
    output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [8] }}]
    {extra}
    """


def precision_param(value: str) -> str:
    return f'parameters {{ key: "INFERENCE_PRECISION" value {{ string_value: "{value}" }} }}'


def write_mlp(repo: Path, name: str, extra: str) -> None:
    d = write_model(repo, name, mlp_config(extra), {})
    (d / "1").mkdir()
    torch.jit.script(mlp()).save(str(d / "1" / "model.pt"))


def cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))


async def load_error(repo: Path, name: str) -> str:
    s = InferenceServer(ServerOptions([repo], gpu_count=0))
    await s.start()
    try:
        entry = next(e for e in s.repository_index() if e["name"] == name)
        return str(entry.get("reason", "")) if entry["state"] != "READY" else ""
    finally:
        await s.stop()


def test_bf16_runs_under_autocast_and_answers_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served over HTTP by a real server. This CPU may lack bf16 (then autocast is emulated):
    the check is stubbed so that the numerics are tested everywhere."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    write_mlp(tmp_path, "bf", precision_param("bf16"))
    x = np.random.default_rng(0).standard_normal((6, 16), np.float32)
    with torch.inference_mode():
        want = mlp()(torch.from_numpy(x)).numpy()
    app = start_app(tmp_path, grpc=False)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
        inp = httpclient.InferInput("INPUT__0", [6, 16], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("bf", [inp])
        client.close()
    finally:
        app.stop()
    got = result.as_numpy("OUTPUT__0")
    assert got.dtype == np.float32 and got.shape == (6, 8)
    assert not np.array_equal(got, want)  # it did run in bf16
    assert cosine(got, want).min() >= 0.999


@pytest.mark.skipif(precision.cpu_has_bf16(), reason="this CPU has native bf16")
async def test_bf16_refused_where_the_cpu_lacks_it(tmp_path: Path) -> None:
    write_mlp(tmp_path, "bf", precision_param("bf16"))
    assert await load_error(tmp_path, "bf") == (
        f"{tmp_path}/bf/config.pbtxt: parameters: INFERENCE_PRECISION 'bf16': this CPU has no "
        "native bf16 (neither avx512_bf16 nor amx_bf16 among its flags), so bf16 would be "
        "emulated and slower than fp32"
    )


async def test_bad_precision_values_are_refused(tmp_path: Path) -> None:
    write_mlp(tmp_path, "a", precision_param("int4"))
    write_mlp(tmp_path, "b", precision_param("fp16"))
    assert await load_error(tmp_path, "a") == (
        f"{tmp_path}/a/config.pbtxt: parameters: expected the parameter 'INFERENCE_PRECISION' "
        "to be fp32/bf16/fp16, got 'int4'"
    )
    assert await load_error(tmp_path, "b") == (
        f"{tmp_path}/b/config.pbtxt: parameters: INFERENCE_PRECISION 'fp16': fp16 autocast is "
        "for GPU instances; use bf16 on CPU"
    )
    write_mlp(tmp_path, "c", precision_param("fp32"))
    assert await load_error(tmp_path, "c") == ""


# --------------------------------------------------------------------------- AOTInductor


class TwoArgs(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2 + y, x - y


AOTI_CONFIG = """
platform: "torch_aoti"
max_batch_size: 8
input [{ name: "ARGS[0]" data_type: TYPE_FP32 dims: [3] }, { name: "INPUT__1" data_type: TYPE_FP32 dims: [3] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [3] }, { name: "RESULT[1]" data_type: TYPE_FP32 dims: [3] }]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One small AOTInductor package (compiling it takes tens of seconds) beside a torch.export
    program and a TorchScript file."""
    d = tmp_path_factory.mktemp("aoti")
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(
        TwoArgs(),
        (torch.randn(2, 3), torch.randn(2, 3)),
        dynamic_shapes={"x": {0: batch}, "y": {0: batch}},
    )
    torch.export.save(ep, str(d / "export.pt2"))
    torch.jit.script(TwoArgs()).save(str(d / "script.pt"))
    # torch's own compile path warns about its pytree internals (FutureWarning).
    with warnings.catch_warnings(), torch._inductor.config.patch(compile_threads=1):
        warnings.simplefilter("ignore", FutureWarning)
        torch._inductor.aoti_compile_and_package(ep, package_path=str(d / "aoti.pt2"))
    yield {"aoti": d / "aoti.pt2", "export": d / "export.pt2", "script": d / "script.pt"}


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first test also compiles the package (tens of seconds, cold)
def test_aoti_package_detection(packages: dict[str, Path], tmp_path: Path) -> None:
    assert aoti.is_aoti_package(packages["aoti"])
    assert not aoti.is_aoti_package(packages["export"])
    assert not aoti.is_aoti_package(packages["script"])
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    assert not aoti.is_aoti_package(tmp_path / "junk.pt2")


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first test also compiles the package (tens of seconds, cold)
async def test_aoti_package_served_batched(
    packages: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    write_model(tmp_path, "aoti", AOTI_CONFIG, {"1/model.pt2": packages["aoti"].read_bytes()})
    write_model(tmp_path, "aoti_noconfig", None, {"1/model.pt2": packages["aoti"].read_bytes()})
    write_model(
        tmp_path,
        "aoti_bf16",
        AOTI_CONFIG + precision_param("bf16"),
        {"1/model.pt2": packages["aoti"].read_bytes()},
    )
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0))
    await s.start()
    try:
        assert s.model_metadata("aoti")["platform"] == "torch_aoti"
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal((1 + i % 2, 3), np.float32) for i in range(4)]
        ys = [rng.standard_normal((1 + i % 2, 3), np.float32) for i in range(4)]
        outs = await asyncio.gather(
            *(
                s.infer_numpy("aoti", {"ARGS[0]": x, "INPUT__1": y})
                for x, y in zip(xs, ys, strict=True)
            )
        )
        for x, y, out in zip(xs, ys, outs, strict=True):
            np.testing.assert_allclose(out["OUTPUT__0"], x * 2 + y, rtol=1e-6)
            np.testing.assert_allclose(out["RESULT[1]"], x - y, rtol=1e-6)
        index = {e["name"]: e for e in s.repository_index()}
        assert index["aoti_noconfig"]["reason"] == (
            f"{tmp_path}/aoti_noconfig/config.pbtxt: input/output: an AOTInductor package does "
            "not record its tensor names and shapes; list them in config.pbtxt"
        )
        assert index["aoti_bf16"]["reason"] == (
            f"{tmp_path}/aoti_bf16/1/model.pt2: INFERENCE_PRECISION: an AOTInductor package runs "
            "as compiled; compile it under torch.autocast instead"
        )
    finally:
        await s.stop()
