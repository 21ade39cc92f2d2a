"""Backends on small real models built here: TorchScript, torch.export, ONNX exported from torch,
and Python (sync, async, auto-complete, stacked batch)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.models import write_model
from torchtide.errors import ServerError, Status
from torchtide.server import InferenceServer, ServerOptions


class TwoArgs(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2 + y, x - y


class PickyDouble(torch.nn.Module):
    """Fails on any negative input, so a batch holding one bad request fails as a whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError("negative input")
        return x * 2


class Bf16Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


TWO_ARGS_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [3] }, { name: "y" data_type: TYPE_FP32 dims: [3] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [3] },
        { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [3] }]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""


def build_repo(repo: Path) -> None:
    d = write_model(repo, "ts_args", TWO_ARGS_CONFIG, {})
    (d / "1").mkdir()
    torch.jit.script(TwoArgs()).save(str(d / "1" / "model.pt"))

    d = write_model(repo, "ts_badname", TWO_ARGS_CONFIG.replace('name: "y"', 'name: "z"'), {})
    (d / "1").mkdir()
    torch.jit.script(TwoArgs()).save(str(d / "1" / "model.pt"))

    d = write_model(
        repo,
        "picky",
        """
        platform: "pytorch_libtorch"
        max_batch_size: 16
        input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [2] }]
        output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [2] }]
        dynamic_batching { max_queue_delay_microseconds: 200000 }
        parameters { key: "NUM_THREADS" value { string_value: "1" } }
        """,
        {},
    )
    (d / "1").mkdir()
    torch.jit.script(PickyDouble()).save(str(d / "1" / "model.pt"))

    d = write_model(
        repo,
        "bf16",
        """
        platform: "pytorch_libtorch"
        max_batch_size: 4
        input [{ name: "INPUT__0" data_type: TYPE_BF16 dims: [4] }]
        output [{ name: "OUTPUT__0" data_type: TYPE_BF16 dims: [4] }]
        """,
        {},
    )
    (d / "1").mkdir()
    torch.jit.script(Bf16Double()).save(str(d / "1" / "model.pt"))

    # torch.export program with no config.pbtxt at all: everything comes from the program.
    d = repo / "exported" / "1"
    d.mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(
        TwoArgs(),
        (torch.randn(2, 3), torch.randn(2, 3)),
        dynamic_shapes={"x": {0: batch}, "y": {0: batch}},
    )
    torch.export.save(ep, str(d / "model.pt2"))

    # ONNX exported from torch, no config.pbtxt.
    d = repo / "onnx_auto" / "1"
    d.mkdir(parents=True)
    torch.onnx.export(
        TwoArgs(),
        (torch.randn(2, 3), torch.randn(2, 3)),
        str(d / "model.onnx"),
        input_names=["x", "y"],
        output_names=["s", "d"],
        dynamic_axes={n: {0: "b"} for n in ("x", "y", "s", "d")},
        dynamo=False,
    )
    d = write_model(
        repo,
        "onnx_badname",
        """
        backend: "onnxruntime"
        max_batch_size: 4
        input [{ name: "x" data_type: TYPE_FP32 dims: [3] }, { name: "w" data_type: TYPE_FP32 dims: [3] }]
        output [{ name: "s" data_type: TYPE_FP32 dims: [3] }]
        """,
        {"1/model.onnx": (repo / "onnx_auto" / "1" / "model.onnx").read_bytes()},
    )

    write_model(
        repo,
        "py_async",
        """
        backend: "python"
        max_batch_size: 4
        input [{ name: "IN" data_type: TYPE_FP32 dims: [-1] }]
        output [{ name: "OUT" data_type: TYPE_FP32 dims: [-1] }]
        """,
        {
            "1/model.py": """
import asyncio
import json
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def initialize(self, args):
        self.args = args

    async def execute(self, requests):
        await asyncio.sleep(0)
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x + 1)]))
        return out
"""
        },
    )

    # Auto-complete from the model itself, no config.pbtxt; also echoes initialize() args.
    write_model(
        repo,
        "py_auto",
        None,
        {
            "1/model.py": """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.add_input({"name": "IN", "data_type": "TYPE_INT64", "dims": [2]})
        auto_complete_model_config.add_output({"name": "ARGS", "data_type": "TYPE_STRING", "dims": [1]})
        auto_complete_model_config.set_max_batch_size(8)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def initialize(self, args):
        self.args = args

    def execute(self, requests):
        out = []
        for r in requests:
            n = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy().shape[0]
            blob = json.dumps(self.args, sort_keys=True).encode()
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("ARGS", np.array([[blob]] * n, dtype=np.object_))]))
        return out
"""
        },
    )

    # Beyond Triton: one stacked request per execute().
    write_model(
        repo,
        "py_stacked",
        """
        backend: "python"
        max_batch_size: 16
        input [{ name: "IN" data_type: TYPE_FP32 dims: [2] }]
        output [{ name: "OUT" data_type: TYPE_FP32 dims: [2] }, { name: "N" data_type: TYPE_INT32 dims: [1] }]
        dynamic_batching { max_queue_delay_microseconds: 200000 }
        parameters { key: "TORCHTIDE_STACKED_BATCH" value { string_value: "true" } }
        """,
        {
            "1/model.py": """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        assert len(requests) == 1
        x = pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()
        n = np.full((x.shape[0], 1), len(x), dtype=np.int32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x * 10), pb_utils.Tensor("N", n)])]
"""
        },
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("backends")
    build_repo(r)
    return r


Run = Callable[[Callable[[InferenceServer], Awaitable[Any]]], Any]


@pytest.fixture
async def server(repo: Path) -> AsyncIterator[InferenceServer]:
    s = InferenceServer(ServerOptions([repo]))
    await s.start()
    yield s
    await s.stop()


def f32(*shape: int, start: float = 0.0) -> np.ndarray[Any, Any]:
    return (np.arange(int(np.prod(shape)), dtype=np.float32) + start).reshape(shape)


async def test_torchscript_forward_argument_names(server: InferenceServer) -> None:
    x, y = f32(2, 3), f32(2, 3, start=1)
    out = await server.infer_numpy("ts_args", {"x": x, "y": y})
    np.testing.assert_allclose(out["OUTPUT__0"], x * 2 + y)
    np.testing.assert_allclose(out["OUTPUT__1"], x - y)


async def test_torchscript_unknown_input_name_is_reported(
    server: InferenceServer, repo: Path
) -> None:
    entry = next(e for e in server.repository_index() if e["name"] == "ts_badname")
    assert entry["state"] == "UNAVAILABLE"
    assert entry["reason"] == (
        f"{repo}/ts_badname/1/model.pt: input 'z' is not an input of the model "
        "(forward arguments: x, y; or use the <name>__<index> convention, index < 2)"
    )


async def test_torch_export_program_without_config(server: InferenceServer) -> None:
    cfg = server.model_metadata("exported")
    assert cfg["platform"] == "pytorch_libtorch"
    assert cfg["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert [o["name"] for o in cfg["outputs"]] == ["OUTPUT__0", "OUTPUT__1"]
    assert server.model_config("exported").max_batch_size == 4
    x, y = f32(3, 3), f32(3, 3, start=5)
    outs = await asyncio.gather(
        *(server.infer_numpy("exported", {"x": x[i : i + 1], "y": y[i : i + 1]}) for i in range(3))
    )
    for i, o in enumerate(outs):
        np.testing.assert_allclose(o["OUTPUT__0"], x[i : i + 1] * 2 + y[i : i + 1])


async def test_onnx_auto_complete_and_infer(server: InferenceServer) -> None:
    md = server.model_metadata("onnx_auto")
    assert md["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["shape"]) for t in md["inputs"]] == [("x", [-1, 3]), ("y", [-1, 3])]
    assert [t["name"] for t in md["outputs"]] == ["s", "d"]
    cfg = server.model_config("onnx_auto")
    assert cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
    x, y = f32(4, 3), f32(4, 3, start=2)
    out = await server.infer_numpy("onnx_auto", {"x": x, "y": y}, outputs=["d"])
    assert list(out) == ["d"]
    np.testing.assert_allclose(out["d"], x - y)


async def test_onnx_input_the_graph_lacks(server: InferenceServer, repo: Path) -> None:
    entry = next(e for e in server.repository_index() if e["name"] == "onnx_badname")
    assert entry["reason"] == (
        f"{repo}/onnx_badname/1/model.onnx: input 'w' is not an input of the model "
        "(graph inputs: x, y)"
    )


async def test_failed_batch_is_retried_per_request(server: InferenceServer) -> None:
    values = [1.0, -1.0, 2.0, 3.0]
    tasks = [
        server.infer_numpy("picky", {"INPUT__0": np.full((1, 2), v, np.float32)}) for v in values
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for v, r in zip(values, results, strict=True):
        if v < 0:
            assert isinstance(r, ServerError) and r.status is Status.INTERNAL
            assert "negative input" in r.message
        else:
            assert isinstance(r, dict)
            np.testing.assert_allclose(r["OUTPUT__0"], np.full((1, 2), 2 * v))
    st = server.statistics("picky")[0]["inference_stats"]
    assert st["success"]["count"] == 3 and st["fail"]["count"] == 1
    # NUM_THREADS is applied on the instance's own thread, where it executes.
    runner = server.resolve("picky").scheduler.instances[0]
    assert runner.call_blocking(torch.get_num_threads) == 1


async def test_bf16_through_torchscript(server: InferenceServer) -> None:
    x = torch.tensor([[1.5, -2.0, 3.25, 0.0]], dtype=torch.bfloat16)
    bits = x.view(torch.uint16).numpy()
    from torchtide.types import InferRequest, InferTensor

    resp = await server.infer(InferRequest("bf16", [InferTensor("INPUT__0", "BF16", bits)]))
    out = resp.outputs[0]
    assert out.datatype == "BF16"
    back = torch.from_numpy(out.data.copy()).view(torch.bfloat16)
    assert torch.equal(back, x * 2)


async def test_python_async_execute_and_initialize(server: InferenceServer) -> None:
    out = await server.infer_numpy("py_async", {"IN": f32(2, 5)})
    np.testing.assert_allclose(out["OUT"], f32(2, 5) + 1)


async def test_python_auto_complete_and_initialize_args(
    server: InferenceServer, repo: Path
) -> None:
    import json

    cfg = server.model_config("py_auto")
    assert cfg.max_batch_size == 8 and cfg.HasField("dynamic_batching")
    out = await server.infer_numpy("py_auto", {"IN": np.zeros((2, 2), np.int64)})
    args = json.loads(out["ARGS"][0, 0])
    assert set(args) == {
        "model_config",
        "model_instance_kind",
        "model_instance_name",
        "model_instance_device_id",
        "model_repository",
        "model_version",
        "model_name",
    }
    assert args["model_name"] == "py_auto" and args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU" and args["model_instance_name"] == "py_auto_0_0"
    assert args["model_repository"] == str(repo / "py_auto")
    assert json.loads(args["model_config"])["max_batch_size"] == 8


async def test_python_stacked_batch_mode(server: InferenceServer) -> None:
    tasks = [
        server.infer_numpy("py_stacked", {"IN": np.full((1 + i % 2, 2), i, np.float32)})
        for i in range(6)
    ]
    outs = await asyncio.gather(*tasks)
    total = sum(1 + i % 2 for i in range(6))
    for i, o in enumerate(outs):
        np.testing.assert_allclose(o["OUT"], np.full((1 + i % 2, 2), 10 * i))
        assert o["N"].tolist() == [[total]] * (1 + i % 2)  # all six arrived as one stacked batch


@pytest.mark.parametrize("cores,threads", [(2, "1"), (8, "4"), (1, "1")])
async def test_cpu_layout_default_for_tensor_backends(tmp_path: Path, cores: int, threads: str) -> None:
    """No instance_group: 2 instances sharing the cores (beyond Triton's count of 1 for PyTorch)."""
    d = write_model(tmp_path, "lin", """
        platform: "pytorch_libtorch"
        max_batch_size: 4
        input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [2] }]
        output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [2] }]
        """, {})
    (d / "1").mkdir()
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(d / "1" / "model.pt"))
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0, cpu_count=cores))
    await s.start()
    try:
        cfg = s.model_config("lin")
        assert [(g.count, g.name) for g in cfg.instance_group] == [(min(2, cores), "lin_0")]
        assert cfg.parameters["NUM_THREADS"].string_value == threads
        runners = s.resolve("lin").scheduler.instances
        assert [r.info.name for r in runners] == [f"lin_0_{i}" for i in range(min(2, cores))]
    finally:
        await s.stop()


OVERLAP_PY = '''
import builtins, time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        # Module globals are per instance here; builtins is shared by the whole interpreter.
        active = getattr(builtins, "_torchtide_test_init_active", 0)
        builtins._torchtide_test_init_active = active + 1
        try:
            if active:
                raise RuntimeError("another instance was initializing at the same time")
            time.sleep(0.2)
        finally:
            builtins._torchtide_test_init_active -= 1

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests]
'''


async def test_python_instances_initialize_one_at_a_time(tmp_path: Path) -> None:
    """Lazy-import libraries are not thread-safe; two instances of a model (and two models)
    must not run initialize() at once in the one interpreter they share."""
    for name in ("a", "b"):
        write_model(tmp_path, name, """
            backend: "python"
            max_batch_size: 4
            input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
            output [{ name: "OUT" data_type: TYPE_FP32 dims: [1] }]
            instance_group [{ count: 3 kind: KIND_CPU }]
            """, {"1/model.py": OVERLAP_PY})
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0))
    await s.start()
    try:
        assert [e["state"] for e in s.repository_index()] == ["READY", "READY"]
        out = await s.infer_numpy("b", {"IN": np.ones((1, 1), np.float32)})
        np.testing.assert_array_equal(out["OUT"], [[1.0]])
    finally:
        await s.stop()


async def test_python_models_import_their_own_helpers(tmp_path: Path) -> None:
    """Two models that each ship utils.py (and helpers beside it) see their own, at import,
    in initialize() (pickle, importlib) and lazily in execute(); instances do not share them."""
    import sys

    from tests.models import HELPERS_CONFIG, HELPERS_OUT_LEN, helper_files, write_helpers_model

    write_helpers_model(tmp_path, "helpers_a", 1)
    write_helpers_model(tmp_path, "helpers_b", 2)
    # two versions of one model, both served: each version its own utils.py
    files = {**helper_files(3, "1"), **helper_files(4, "2")}
    write_model(tmp_path, "helpers_v", HELPERS_CONFIG + "version_policy { all {} }", files)
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0))
    await s.start()
    try:
        states = {(e["name"], e["version"]): e["state"] for e in s.repository_index()}
        assert set(states.values()) == {"READY"} and len(states) == 4, s.repository_index()
        for name, value in (("helpers_a", 1), ("helpers_b", 2)):
            for _ in range(4):  # both instances
                out = await s.infer_numpy(name, {"IN": np.zeros(1, np.float32)})
                assert out["OUT"].tolist() == [value] * (HELPERS_OUT_LEN - 1) + [1], name
        for version, value in (("1", 3), ("2", 4)):
            out = await s.infer_numpy("helpers_v", {"IN": np.zeros(1, np.float32)}, version=version)
            assert out["OUT"].tolist()[:-2] == [value] * (HELPERS_OUT_LEN - 2), version
        for bare in ("utils", "helpers", "lazy_helper", "shared"):
            assert bare not in sys.modules  # nothing leaks under a bare name
    finally:
        await s.stop()
    assert not [m for m in sys.modules if m.startswith("_torchtide_helpers")]


async def test_python_reload_reads_changed_helpers(tmp_path: Path) -> None:
    """A reload imports model.py and utils.py again, even when an edit keeps the file's size
    and modification time (a bytecode cache would be taken as fresh)."""
    import os

    from tests.models import HELPERS_OUT_LEN, helper_files, write_helpers_model

    d = write_helpers_model(tmp_path, "helpers", 1)
    s = InferenceServer(ServerOptions([tmp_path], gpu_count=0, control_mode="explicit"))
    await s.start()
    try:
        await s.load("helpers")
        out = await s.infer_numpy("helpers", {"IN": np.zeros(1, np.float32)})
        assert out["OUT"].tolist() == [1] * (HELPERS_OUT_LEN - 1) + [1]
        files = helper_files(7)
        files["1/model.py"] = str(files["1/model.py"]).replace("SCALE = 1", "SCALE = 2")
        for rel, content in files.items():
            p = d / rel
            st = p.stat()
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
            assert p.stat().st_size == st.st_size
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        await s.load("helpers")
        out = await s.infer_numpy("helpers", {"IN": np.zeros(1, np.float32)})
        assert out["OUT"].tolist() == [14] + [7] * (HELPERS_OUT_LEN - 2) + [1]
    finally:
        await s.stop()


def test_python_auto_complete_while_other_threads_import(tmp_path: Path) -> None:
    """Reading a Python model's config ends by dropping its private package from sys.modules
    while other models load on other threads, whose imports add to sys.modules: that cleanup
    failed now and then with "RuntimeError: dictionary changed size during iteration". Thread
    switches are made frequent so the race, if any, shows within a few hundred reads (before the fix: in well under a second)."""
    import sys
    import threading
    import types

    from torchtide.backends.python import PythonBackend
    from torchtide.config import new_config

    model_file = tmp_path / "m" / "1" / "model.py"
    model_file.parent.mkdir(parents=True)
    model_file.write_text(
        "class TritonPythonModel:\n"
        "    @staticmethod\n"
        "    def auto_complete_config(config):\n"
        "        config.set_max_batch_size(4)\n"
        "        return config\n"
    )
    stop = threading.Event()
    added: list[str] = []

    def import_elsewhere() -> None:  # what other threads' imports do to sys.modules
        while not stop.is_set():
            name = f"_elsewhere_{len(added) % 1000}"
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
            if len(added) % 1000 == 0:  # and keep it from growing without end
                for gone in added[-1000:]:
                    del sys.modules[gone]

    backend = PythonBackend()
    interval = sys.getswitchinterval()
    other = threading.Thread(target=import_elsewhere, daemon=True)
    sys.setswitchinterval(1e-6)
    other.start()
    try:
        for _ in range(200):
            cfg = new_config("m")
            backend.auto_complete(cfg, model_file, model_file.parent.parent)
            assert cfg.max_batch_size == 4
    finally:
        stop.set()
        other.join()
        sys.setswitchinterval(interval)
        for name in set(added):
            sys.modules.pop(name, None)
    assert added  # the other thread did run alongside
    assert not [m for m in sys.modules if m.startswith("_torchtide_m_autocomplete")]


def test_client_errors_are_one_line_over_http_and_grpc(repo: Path) -> None:
    """A TorchScript failure reaches the client as the one line that says what went wrong (no
    script traceback, no server file path); a batch-size limit auto-completed from the model
    says where it came from."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from tests.conftest import start_app

    cases = [
        ("picky", "INPUT__0", np.full((1, 2), -1.0, np.float32), "ValueError: negative input"),
        (
            "onnx_auto",
            "x",
            f32(5, 3),
            "[request id: <id_unknown>] inference request batch-size must be <= 4 for "
            "'onnx_auto' (max_batch_size auto-completed from the ONNX graph)",
        ),
        (
            "exported",
            "x",
            f32(5, 3),
            "[request id: <id_unknown>] inference request batch-size must be <= 4 for "
            "'exported' (max_batch_size auto-completed from the torch.export program)",
        ),
        (
            "py_auto",
            "IN",
            np.zeros((9, 2), np.int64),
            "[request id: <id_unknown>] inference request batch-size must be <= 8 for "
            "'py_auto' (max_batch_size auto-completed from auto_complete_config() in model.py)",
        ),
    ]
    app = start_app(repo)
    try:
        for module in (httpclient, grpcclient):
            url = f"127.0.0.1:{app.app.port('http' if module is httpclient else 'grpc')}"
            client: Any = module.InferenceServerClient(url)
            try:
                for model, name, arr, expected in cases:
                    inputs = [module.InferInput(name, list(arr.shape), "FP32")]
                    if arr.dtype == np.int64:
                        inputs[0] = module.InferInput(name, list(arr.shape), "INT64")
                    inputs[0].set_data_from_numpy(arr)
                    if model in ("onnx_auto", "exported"):
                        y = module.InferInput("y", list(arr.shape), "FP32")
                        y.set_data_from_numpy(arr)
                        inputs.append(y)
                    with pytest.raises(InferenceServerException) as e:
                        client.infer(model, inputs)
                    assert e.value.message() == expected, (module.__name__, model)
            finally:
                client.close()
    finally:
        app.stop()


async def test_model_traceback_goes_to_the_verbose_log(
    server: InferenceServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.log_settings.update({"log_verbose_level": 1})
    try:
        with caplog.at_level("DEBUG", logger="torchtide.backends"), pytest.raises(ServerError) as e:
            await server.infer_numpy("picky", {"INPUT__0": np.full((1, 2), -1.0, np.float32)})
    finally:
        server.log_settings.update({"log_verbose_level": 0})
    assert e.value.message == "ValueError: negative input"
    records = [r for r in caplog.records if r.name == "torchtide.backends" and r.exc_info]
    assert records and records[0].levelname == "DEBUG"
    assert records[0].getMessage().startswith("model 'picky' instance 'picky_0_")
    assert "Traceback of TorchScript" in str(records[0].exc_info[1])  # type: ignore[index]


def test_one_line_keeps_the_message_and_drops_the_rest() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from torchtide.backends.base import MAX_MESSAGE, one_line

    torchscript = (
        "The following operation failed in the TorchScript interpreter.\n"
        "Traceback of TorchScript (most recent call last):\n"
        '  File "/srv/models/m/1/code.py", line 5, in forward\n'
        "builtins.ValueError: negative input\n"
    )
    assert one_line(RuntimeError(torchscript)) == "ValueError: negative input"
    assert one_line(RuntimeError("bad shape\nException raised from f at /src/x.cpp:1")) == (
        "RuntimeError: bad shape"
    )
    assert one_line(ValueError("a\n  b\n")) == "ValueError: a b"
    assert one_line(KeyError()) == "KeyError"

    @given(st.text())
    def one_line_always(text: str) -> None:
        line = one_line(RuntimeError(text))
        assert line and len(line) <= MAX_MESSAGE
        assert not any(c in line for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")

    one_line_always()
