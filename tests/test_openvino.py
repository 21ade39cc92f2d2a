"""The openvino backend on small IRs converted here from torch modules (`ov.convert_model` ->
`ov.save_model`), served by a real server and checked against torch eager; configs that do not
match the IR are refused at load with messages naming the file, the tensor and both values.
Also ONNX Runtime's execution accelerators as Triton configures them."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2 as mc

from tests.conftest import start_app
from tests.models import write_model
from torchtide.app import AppThread
from torchtide.errors import ServerError
from torchtide.server import InferenceServer, ServerOptions

ov = pytest.importorskip("openvino")


class Mix(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.lin(x)) + y.sum(-1, keepdim=True), x.mean(-1, keepdim=True)


class FixedBatch(torch.nn.Module):
    """Converted at batch 4, and its reshape keeps the 4 even when the input's batch is made
    dynamic: such an IR serves only through ENABLE_BATCH_PADDING."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).reshape(4, 4)


class Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1, keepdim=True)


def mix() -> Mix:
    torch.manual_seed(0)
    return Mix().eval()


def fixed_batch() -> FixedBatch:
    torch.manual_seed(1)
    return FixedBatch().eval()


def save_ir(
    module: torch.nn.Module, example: Any, inputs: Any, path: Path, names: list[str]
) -> None:
    model = ov.convert_model(module, example_input=example, input=inputs)
    for port, name in zip(model.outputs, names, strict=False):
        port.get_tensor().set_names({name})
    path.parent.mkdir(parents=True, exist_ok=True)
    # save_model stores fp16 weights unless told otherwise; these tests compare with fp32 eager.
    ov.save_model(model, str(path), compress_to_fp16=False)


MIX_INPUTS = [("x", [-1, 8]), ("y", [-1, 3])]
MIX_EXAMPLE = (torch.randn(2, 8), torch.randn(2, 3))

MIX_CONFIG = """
backend: "openvino"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [8] }, { name: "y" data_type: TYPE_FP32 dims: [3] }]
output [{ name: "sum" data_type: TYPE_FP32 dims: [4] }, { name: "mean" data_type: TYPE_FP32 dims: [1] }]
dynamic_batching { max_queue_delay_microseconds: 2000 }
parameters [
  { key: "PERFORMANCE_HINT" value { string_value: "latency" } },
  { key: "NUM_STREAMS" value { string_value: "1" } },
  { key: "INFERENCE_NUM_THREADS" value { string_value: "1" } }
]
"""

# Each of these configs is refused at load; the message (after the model file's path) must
# name the tensor and both values.
BAD_CONFIGS = {
    "bad_dtype": (
        MIX_CONFIG.replace('name: "y" data_type: TYPE_FP32', 'name: "y" data_type: TYPE_FP16'),
        "input 'y': data_type TYPE_FP16 does not match the model's element type f32 (TYPE_FP32)",
    ),
    "bad_dims": (
        MIX_CONFIG.replace("dims: [8]", "dims: [9]"),
        "input 'x': dims [-1, 9] do not match the model's shape [?, 8] at dimension 1 "
        "(the first is the batch dimension: max_batch_size > 0)",
    ),
    "bad_rank": (
        MIX_CONFIG.replace("dims: [4]", "dims: [2, 2]"),
        "output 'sum': the model has 2 dimensions [?, 4] but the config gives 3 [-1, 2, 2] "
        "(the first is the batch dimension: max_batch_size > 0)",
    ),
    "bad_name": (
        MIX_CONFIG.replace('name: "y"', 'name: "w"'),
        "input 'w' is not an input of the model (model inputs: x, y; or use the "
        "<name>__<index> convention, index < 2)",
    ),
    "bad_output": (
        MIX_CONFIG.replace('name: "mean"', 'name: "avg"'),
        "output 'avg' is not an output of the model (model outputs: sum, mean; or use the "
        "<name>__<index> convention, index < 2)",
    ),
    "missing_input": (
        MIX_CONFIG.replace(', { name: "y" data_type: TYPE_FP32 dims: [3] }', ""),
        "the model's input 'y' is not listed in config.pbtxt (configured inputs: x)",
    ),
    "fixed_batch": (
        """
        backend: "openvino"
        max_batch_size: 4
        input [{ name: "x" data_type: TYPE_FP32 dims: [8] }]
        output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [4] }]
        """,
        "output 'OUTPUT__0': the model's batch dimension is fixed at 4 [4, 4]; convert it "
        "with a dynamic batch dimension, set max_batch_size: 0, or set the parameter "
        "ENABLE_BATCH_PADDING: YES",
    ),
}


def build_repo(repo: Path) -> None:
    # No config.pbtxt: backend from the .xml, everything else from the IR (unnamed outputs
    # become OUTPUT__<i>).
    save_ir(mix(), MIX_EXAMPLE, MIX_INPUTS, repo / "ov_auto" / "1" / "model.xml", [])
    d = write_model(repo, "ov_mix", MIX_CONFIG, {})
    save_ir(mix(), MIX_EXAMPLE, MIX_INPUTS, d / "1" / "model.xml", ["sum", "mean"])
    xml, bin_ = (d / "1" / "model.xml").read_bytes(), (d / "1" / "model.bin").read_bytes()
    for name, (config, _) in BAD_CONFIGS.items():
        if name != "fixed_batch":
            write_model(repo, name, config, {"1/model.xml": xml, "1/model.bin": bin_})
    fixed = write_model(repo, "fixed_batch", BAD_CONFIGS["fixed_batch"][0], {})
    save_ir(fixed_batch(), torch.randn(4, 8), [("x", [4, 8])], fixed / "1" / "model.xml", [])
    write_model(
        repo,
        "padded",
        BAD_CONFIGS["fixed_batch"][0]
        + 'parameters { key: "ENABLE_BATCH_PADDING" value { string_value: "YES" } }',
        {
            "1/model.xml": (fixed / "1" / "model.xml").read_bytes(),
            "1/model.bin": (fixed / "1" / "model.bin").read_bytes(),
        },
    )
    # An IR fixed at [1, 8], served for any row count through RESHAPE_IO_LAYERS.
    d = write_model(
        repo,
        "reshaped",
        """
        backend: "openvino"
        input [{ name: "x" data_type: TYPE_FP32 dims: [-1, 8] }]
        output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [-1, 1] }]
        parameters { key: "RESHAPE_IO_LAYERS" value { string_value: "yes" } }
        """,
        {},
    )
    save_ir(Mean(), torch.randn(1, 8), [("x", [1, 8])], d / "1" / "model.xml", [])


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("openvino")
    build_repo(r)
    return r


@pytest.fixture(scope="module")
def app(repo: Path) -> Iterator[AppThread]:
    a = start_app(repo)
    yield a
    a.stop()


def eager(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> tuple[Any, Any]:
    with torch.inference_mode():
        s, m = mix()(torch.from_numpy(x), torch.from_numpy(y))
    return s.numpy(), m.numpy()


def sample(rows: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, 8), np.float32), rng.standard_normal((rows, 3), np.float32)


def test_http_and_grpc_match_torch_eager(app: AppThread) -> None:
    x, y = sample(4, 1)
    want_sum, want_mean = eager(x, y)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{app.app.port('grpc')}")
    for client, mod in ((http, httpclient), (grpc, grpcclient)):
        inputs = [mod.InferInput("x", [4, 8], "FP32"), mod.InferInput("y", [4, 3], "FP32")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(y)
        result = client.infer("ov_mix", inputs)
        np.testing.assert_allclose(result.as_numpy("sum"), want_sum, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.as_numpy("mean"), want_mean, rtol=1e-5, atol=1e-6)
        md = client.get_model_metadata("ov_auto")
        names = (
            [o["name"] for o in md["outputs"]]
            if isinstance(md, dict)
            else [o.name for o in md.outputs]
        )
        assert names == ["OUTPUT__0", "OUTPUT__1"]
        result = client.infer("ov_auto", inputs, outputs=[mod.InferRequestedOutput("OUTPUT__0")])
        np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), want_sum, rtol=1e-5, atol=1e-5)
    http.close()
    grpc.close()


@pytest.fixture
async def server(repo: Path) -> AsyncIterator[InferenceServer]:
    s = InferenceServer(ServerOptions([repo], gpu_count=0, cpu_count=2))
    await s.start()
    yield s
    await s.stop()


async def test_auto_complete_from_the_ir(server: InferenceServer) -> None:
    cfg = server.model_config("ov_auto")
    assert cfg.backend == "openvino" and cfg.default_model_filename == "model.xml"
    assert cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("x", [8]), ("y", [3])]
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("OUTPUT__0", [4]), ("OUTPUT__1", [1])]
    # Two instances sharing the two cores, as for the other tensor backends.
    assert [g.count for g in cfg.instance_group] == [2]
    assert cfg.parameters["INFERENCE_NUM_THREADS"].string_value == "1"
    assert server.model_metadata("ov_auto")["platform"] == "openvino"


async def test_requests_batched_together_match_eager(server: InferenceServer) -> None:
    import asyncio

    samples = [sample(1 + i % 3, 10 + i) for i in range(6)]
    outs = await asyncio.gather(
        *(server.infer_numpy("ov_mix", {"x": x, "y": y}) for x, y in samples)
    )
    for (x, y), out in zip(samples, outs, strict=True):
        np.testing.assert_allclose(out["sum"], eager(x, y)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
async def test_config_that_does_not_match_the_ir_is_refused(
    server: InferenceServer, repo: Path, name: str
) -> None:
    entry = next(e for e in server.repository_index() if e["name"] == name)
    assert entry["state"] == "UNAVAILABLE"
    assert entry["reason"] == f"{repo}/{name}/1/model.xml: {BAD_CONFIGS[name][1]}"


async def test_batch_padding_serves_a_fixed_batch_ir(server: InferenceServer) -> None:
    x = sample(2, 5)[0]
    out = await server.infer_numpy("padded", {"x": x})
    with torch.inference_mode():
        want = fixed_batch().lin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out["OUTPUT__0"], want, rtol=1e-5, atol=1e-5)


async def test_reshape_io_layers_takes_the_config_dims(server: InferenceServer) -> None:
    x = sample(3, 7)[0]
    out = await server.infer_numpy("reshaped", {"x": x})
    np.testing.assert_allclose(out["OUTPUT__0"], x.mean(-1, keepdims=True), rtol=1e-5, atol=1e-6)


async def load_with(tmp_path: Path, repo: Path, params: str, extra: str = "") -> str:
    """Load ov_mix with extra parameters (and config text); return '' or the load error."""
    config = MIX_CONFIG.replace("parameters [", f"parameters [{params},") + extra
    d = write_model(tmp_path, "m", config, {})
    for f in ("model.xml", "model.bin"):
        (d / "1").mkdir(exist_ok=True)
        (d / "1" / f).write_bytes((repo / "ov_mix" / "1" / f).read_bytes())
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0))
    await s.start()
    try:
        entry = next(e for e in s.repository_index() if e["name"] == "m")
        return str(entry.get("reason", "")) if entry["state"] != "READY" else ""
    finally:
        await s.stop()


def param(key: str, value: str) -> str:
    return f'{{ key: "{key}" value {{ string_value: "{value}" }} }}'


async def test_bad_parameter_values_are_refused(tmp_path: Path, repo: Path) -> None:
    err = await load_with(tmp_path / "a", repo, param("COMPILATION_NUM_THREADS", "many"))
    assert err == (
        f"{tmp_path}/a/m/config.pbtxt: parameters: expected the parameter "
        "'COMPILATION_NUM_THREADS' to be a non-negative number, got 'many'"
    )
    err = await load_with(tmp_path / "b", repo, param("ENABLE_BATCH_PADDING", "maybe"))
    assert err == (
        f"{tmp_path}/b/m/config.pbtxt: parameters: expected the parameter "
        "'ENABLE_BATCH_PADDING' to be YES or NO, got 'maybe'"
    )


async def test_kind_gpu_is_refused(tmp_path: Path, repo: Path) -> None:
    err = await load_with(tmp_path, repo, param("X", "1"), "instance_group [{ kind: KIND_GPU }]")
    assert err.endswith("instance_group 'm_0' kind: backend 'openvino' runs on KIND_CPU only")


def cpu_has_bf16() -> bool:
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps


@pytest.mark.skipif(cpu_has_bf16(), reason="this CPU runs bf16")
async def test_bf16_precision_refused_where_the_cpu_lacks_it(tmp_path: Path, repo: Path) -> None:
    err = await load_with(tmp_path, repo, param("INFERENCE_PRECISION_HINT", "bf16"))
    assert err.startswith(
        f"{tmp_path}/m/1/model.xml: parameters: INFERENCE_PRECISION_HINT 'bf16': CPU cannot run "
        "bf16 (OpenVINO reports capabilities "
    )
    assert err.endswith("it would run f32); a CPU with avx512_bf16 or AMX can")
    # Triton's HINT_BF16 stays a hint, as in Triton: the model loads and runs f32.
    assert await load_with(tmp_path / "t", repo, param("HINT_BF16", "YES")) == ""


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 (OpenVINO capabilities)")
async def test_bf16_precision_close_to_fp32(tmp_path: Path, repo: Path) -> None:
    d = write_model(
        tmp_path,
        "bf",
        MIX_CONFIG.replace(
            "parameters [", f"parameters [{param('INFERENCE_PRECISION_HINT', 'bf16')},"
        ),
        {},
    )
    (d / "1").mkdir()
    for f in ("model.xml", "model.bin"):
        (d / "1" / f).write_bytes((repo / "ov_mix" / "1" / f).read_bytes())
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0))
    await s.start()
    try:
        x, y = sample(8, 3)
        out = await s.infer_numpy("bf", {"x": x, "y": y})
    finally:
        await s.stop()
    want = eager(x, y)[0]
    cos = (
        (out["sum"] * want).sum(-1)
        / np.linalg.norm(out["sum"], axis=-1)
        / np.linalg.norm(want, axis=-1)
    )
    assert cos.min() >= 0.999


def test_missing_openvino_package_is_a_clear_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchtide.backends import get_backend

    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.delitem(sys.modules, "torchtide.backends.openvino", raising=False)
    with pytest.raises(ServerError) as e:
        get_backend("openvino")
    assert e.value.message.startswith(
        "backend 'openvino' needs the openvino extra: pip install 'torchtide[openvino]' ("
    )


# --------------------------------------------------------------------------- ONNX Runtime


ORT_CONFIG = """
backend: "onnxruntime"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [8] }, { name: "y" data_type: TYPE_FP32 dims: [3] }]
output [{ name: "sum" data_type: TYPE_FP32 dims: [4] }]
optimization { execution_accelerators { cpu_execution_accelerator: [{ name: "%s" }] } }
"""


async def load_onnx(tmp_path: Path, accelerator: str) -> tuple[str, InferenceServer]:
    d = write_model(tmp_path, "o", ORT_CONFIG % accelerator, {})
    (d / "1").mkdir()
    torch.onnx.export(
        mix(),
        MIX_EXAMPLE,
        str(d / "1" / "model.onnx"),
        input_names=["x", "y"],
        output_names=["sum", "mean"],
        dynamic_axes={n: {0: "b"} for n in ("x", "y", "sum", "mean")},
        dynamo=False,
    )
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0))
    await s.start()
    entry = next(e for e in s.repository_index() if e["name"] == "o")
    return (str(entry.get("reason", "")) if entry["state"] != "READY" else ""), s


def ort_has_openvino() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "OpenVINOExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(ort_has_openvino(), reason="this onnxruntime has the OpenVINO provider")
async def test_ort_openvino_accelerator_refused_without_its_provider(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")

    err, s = await load_onnx(tmp_path, "openvino")
    await s.stop()
    assert err == (
        f"{tmp_path}/o/config.pbtxt: optimization.execution_accelerators."
        "cpu_execution_accelerator: 'openvino' needs ONNX Runtime's OpenVINOExecutionProvider, "
        f"which the installed onnxruntime {ort.__version__} lacks (it has: "
        f"{', '.join(ort.get_available_providers())}); install the onnxruntime-openvino wheel "
        "in place of onnxruntime"
    )


async def test_ort_unknown_cpu_accelerator_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    err, s = await load_onnx(tmp_path, "dnnl")
    await s.stop()
    assert err.endswith(
        "cpu_execution_accelerator: unknown Execution Accelerator 'dnnl' is requested "
        "(on CPU ONNX Runtime offers: openvino)"
    )


@pytest.mark.skipif(not ort_has_openvino(), reason="this onnxruntime lacks the OpenVINO provider")
async def test_ort_openvino_accelerator_serves(tmp_path: Path) -> None:
    err, s = await load_onnx(tmp_path, "openvino")
    try:
        assert err == ""
        x, y = sample(3, 4)
        out = await s.infer_numpy("o", {"x": x, "y": y})
        np.testing.assert_allclose(out["sum"], eager(x, y)[0], rtol=1e-4, atol=1e-4)
    finally:
        await s.stop()


async def test_openvino_backend_reads_an_onnx_file(tmp_path: Path) -> None:
    """Triton's openvino backend also takes other formats through default_model_filename."""
    pytest.importorskip("onnx")
    d = write_model(
        tmp_path, "ov_onnx", 'backend: "openvino"\ndefault_model_filename: "model.onnx"', {}
    )
    (d / "1").mkdir()
    torch.onnx.export(
        mix(),
        MIX_EXAMPLE,
        str(d / "1" / "model.onnx"),
        input_names=["x", "y"],
        output_names=["sum", "mean"],
        dynamic_axes={n: {0: "b"} for n in ("x", "y", "sum", "mean")},
        dynamo=False,
    )
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0))
    await s.start()
    try:
        assert [t.name for t in s.model_config("ov_onnx").output] == ["sum", "mean"]
        x, y = sample(3, 9)
        out = await s.infer_numpy("ov_onnx", {"x": x, "y": y})
        np.testing.assert_allclose(out["sum"], eager(x, y)[0], rtol=1e-5, atol=1e-5)
    finally:
        await s.stop()


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


async def test_bf16_tensors_in_and_out(tmp_path: Path) -> None:
    from torchtide.types import InferRequest, InferTensor

    example = torch.randn(2, 4).to(torch.bfloat16)
    save_ir(
        Double(), example, [("x", [-1, 4], torch.bfloat16)], tmp_path / "bf" / "1" / "model.xml", []
    )
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0))
    await s.start()
    try:
        assert [t.data_type for t in s.model_config("bf").input] == [mc.TYPE_BF16]
        x = torch.tensor([[1.5, -2.0, 3.25, 0.0]], dtype=torch.bfloat16)
        resp = await s.infer(
            InferRequest("bf", [InferTensor("x", "BF16", x.view(torch.uint16).numpy())])
        )
    finally:
        await s.stop()
    out = resp.outputs[0]
    assert out.datatype == "BF16"
    assert torch.equal(torch.from_numpy(out.data.copy()).view(torch.bfloat16), x * 2)
