"""Poll mode, warmup, load/unload cycles (memory), and how long a config override lasts."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests import probe
from tests.conftest import start_app
from tests.models import write_model
from tests.test_server_api import ONE, versioned, write_versioned
from torchtide.app import AppThread
from torchtide.config import to_json_dict
from torchtide.errors import ServerError
from torchtide.server import InferenceServer, ServerOptions


async def test_poll_mode_applies_changes_without_failures(tmp_path: Path) -> None:
    write_versioned(tmp_path, "ver", "", ["1"])
    s = InferenceServer(ServerOptions([tmp_path], control_mode="poll", poll_secs=3600))
    await s.start()
    errors: list[BaseException] = []
    served: list[float] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                served.append(float((await s.infer_numpy("ver", {"IN": ONE}))["OUT"][0, 0]))
            except ServerError as e:
                errors.append(e)
                await asyncio.sleep(0.01)  # an error may come without a suspension point

    try:
        clients = [asyncio.ensure_future(client()) for _ in range(3)]
        await asyncio.sleep(0.1)
        # a new version appears; the server stays ready while it loads beside version 1
        shutil.copytree(tmp_path / "ver" / "1", tmp_path / "ver" / "2")
        polling = asyncio.ensure_future(s.poll_once())
        readiness = []
        while not polling.done():
            readiness.append(s.is_ready())
            await asyncio.sleep(0.001)
        await polling
        assert readiness and all(readiness)
        assert s.model_metadata("ver")["versions"] == ["2"]
        # a changed config is applied
        (tmp_path / "ver" / "config.pbtxt").write_text(versioned().replace("max_batch_size: 4", "max_batch_size: 2"))
        await s.poll_once()
        assert s.model_config("ver").max_batch_size == 2
        # a broken config leaves the old one serving, and the index says why
        (tmp_path / "ver" / "config.pbtxt").write_text("max_batch_size: x\n")
        await s.poll_once()
        assert s.model_ready("ver") and s.is_ready()  # one broken new config: still ready
        entry = next(e for e in s.repository_index() if e["name"] == "ver" and e["version"] == "2")
        assert entry["state"] == "READY" and "a newer load failed" in entry["reason"]
        await asyncio.sleep(0.1)
        # unchanged files: nothing reloads
        before = s.resolve("ver")
        await s.poll_once()
        assert s.resolve("ver") is before
        # a new model appears, then is removed
        write_versioned(tmp_path, "extra", "", ["1"])
        await s.poll_once()
        assert s.model_ready("extra")
        shutil.rmtree(tmp_path / "extra")
        await s.poll_once()
        assert not s.model_ready("extra")
        assert all(e["name"] != "extra" for e in s.repository_index())
        stop.set()
        await asyncio.gather(*clients)
    finally:
        await s.stop()
    assert errors == []
    assert served and set(served) <= {1.0, 2.0}


async def test_poll_loop_runs_by_itself(tmp_path: Path) -> None:
    write_versioned(tmp_path, "ver", "", ["1"])
    s = InferenceServer(ServerOptions([tmp_path], control_mode="poll", poll_secs=0.05))
    await s.start()
    try:
        shutil.copytree(tmp_path / "ver" / "1", tmp_path / "ver" / "3")
        deadline = asyncio.get_running_loop().time() + 120
        while asyncio.get_running_loop().time() < deadline:
            if s.model_metadata("ver")["versions"] == ["3"]:
                break
            await asyncio.sleep(0.05)
        assert s.model_metadata("ver")["versions"] == ["3"]
    finally:
        await s.stop()


WARM_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils
from tests import probe


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            probe.CALLS.append(probe.Call(self.name, [r.request_id()], [x.shape[0]]))
            if r.request_id().startswith("warmup") and x.dtype != np.float32:
                raise ValueError("bad warmup dtype")
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]))
        return out
'''


async def test_warmup_runs_on_every_instance_before_ready(tmp_path: Path) -> None:
    probe.reset()
    write_model(tmp_path, "warm", """
        backend: "python"
        max_batch_size: 4
        input [{ name: "IN" data_type: TYPE_FP32 dims: [3] }]
        output [{ name: "OUT" data_type: TYPE_FP32 dims: [3] }]
        instance_group [{ count: 2 kind: KIND_CPU }]
        model_warmup [{ name: "zeros" batch_size: 2 count: 3
                        inputs { key: "IN" value { data_type: TYPE_FP32 dims: [3] zero_data: true } } },
                      { name: "file" batch_size: 1
                        inputs { key: "IN" value { data_type: TYPE_FP32 dims: [3] input_data_file: "in.bin" } } }]
        """, {"1/model.py": WARM_PY, "warmup/in.bin": np.arange(3, dtype=np.float32).tobytes()})
    write_model(tmp_path, "warm_bad", """
        backend: "python"
        max_batch_size: 4
        input [{ name: "IN" data_type: TYPE_FP32 dims: [3] }]
        output [{ name: "OUT" data_type: TYPE_FP32 dims: [3] }]
        model_warmup [{ name: "short" batch_size: 1
                        inputs { key: "IN" value { data_type: TYPE_FP32 dims: [3] input_data_file: "nope.bin" } } }]
        """, {"1/model.py": WARM_PY})
    s = InferenceServer(ServerOptions([tmp_path]))
    await s.start()
    try:
        warm = [c for c in probe.CALLS if c.ids[0].startswith("warmup:")]
        assert sorted({c.instance for c in warm}) == ["warm_0_0", "warm_0_1"]
        assert len([c for c in warm if c.ids == ["warmup:zeros"]]) == 6  # 3 times x 2 instances
        assert all(c.rows == [2] for c in warm if c.ids == ["warmup:zeros"])
        assert len([c for c in warm if c.ids == ["warmup:file"]]) == 2
        assert s.model_ready("warm")
        entry = next(e for e in s.repository_index() if e["name"] == "warm_bad")
        assert entry["state"] == "UNAVAILABLE"
        assert "model_warmup 'short' input 'IN': cannot read" in entry["reason"]
    finally:
        await s.stop()
        probe.reset()


@pytest.mark.slow
async def test_load_unload_cycles_do_not_leak(tmp_path: Path) -> None:
    import gc

    import psutil
    import torch

    d = write_model(tmp_path, "lin", """
        platform: "pytorch_libtorch"
        max_batch_size: 8
        input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [256] }]
        output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [256] }]
        """, {})
    (d / "1").mkdir()
    torch.jit.script(torch.nn.Linear(256, 256)).save(str(d / "1" / "model.pt"))
    s = InferenceServer(ServerOptions([tmp_path], control_mode="explicit"))
    await s.start()
    proc = psutil.Process()
    x = np.ones((2, 256), np.float32)

    async def cycle() -> None:
        await s.load("lin")
        await s.infer_numpy("lin", {"INPUT__0": x})
        await s.unload("lin")

    try:
        for _ in range(10):  # let allocators and caches reach their steady state
            await cycle()
        gc.collect()
        base = proc.memory_info().rss
        for _ in range(50):
            await cycle()
        gc.collect()
        grown = proc.memory_info().rss - base
    finally:
        await s.stop()
    assert grown < 20 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over 50 load/unload cycles"


SLOW_INIT_PY = '''
import triton_python_backend_utils as pb_utils
from tests import probe


class TritonPythonModel:
    def initialize(self, args):
        probe.ENTERED.set()
        probe.GATE.wait(60)  # the test holds the load here

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]) for r in requests]
'''


async def test_model_removed_while_reloading(tmp_path: Path) -> None:
    """Triton kept serving such a model, stopped polling and ignored SIGTERM."""
    probe.reset()
    write_model(tmp_path, "slow", versioned(), {"1/model.py": SLOW_INIT_PY})
    s = InferenceServer(ServerOptions([tmp_path], control_mode="poll", poll_secs=3600))
    await s.start()
    try:
        assert s.model_ready("slow")
        probe.ENTERED.clear()
        probe.GATE.clear()
        (tmp_path / "slow" / "config.pbtxt").write_text(versioned().replace("4", "2"))
        reloading = asyncio.ensure_future(s.poll_once())
        # the new version is loading beside the old one (held in initialize())
        assert await asyncio.to_thread(probe.ENTERED.wait, 60)
        shutil.rmtree(tmp_path / "slow")
        probe.GATE.set()
        await reloading
        await s.poll_once()  # polling goes on and sees the folder gone
        assert not s.model_ready("slow")
        assert all(e["name"] != "slow" for e in s.repository_index())
        write_versioned(tmp_path, "later", "", ["1"])
        await s.poll_once()
        assert s.model_ready("later")
    finally:
        probe.GATE.set()
        assert await asyncio.wait_for(s.stop(timeout=5), 60)


# ---------------------------------------------------------------------------- config overrides


async def test_a_config_override_ends_with_its_unload(tmp_path: Path) -> None:
    """As Triton: a plain load after an override keeps it (nothing changed on disk), an unload
    ends it, and an override whose load failed never becomes the model's configuration."""
    write_versioned(tmp_path, "ver", "", ["1"])
    s = InferenceServer(ServerOptions([tmp_path], control_mode="explicit", startup_models=["*"]))
    await s.start()
    try:
        override = to_json_dict(s.model_config("ver"))
        override["max_batch_size"] = 2
        await s.load("ver", json.dumps(override))
        await s.load("ver")
        assert s.model_config("ver").max_batch_size == 2
        await s.unload("ver")
        await s.load("ver")
        assert s.model_config("ver").max_batch_size == 4  # config.pbtxt again
        # an override that parses but cannot load: the model keeps serving config.pbtxt, and
        # the next plain load does not pick the broken override up
        broken = {**override, "backend": "no_such_backend"}
        with pytest.raises(ServerError):
            await s.load("ver", json.dumps(broken))
        assert s.model_config("ver").max_batch_size == 4
        await s.load("ver")
        assert s.model_config("ver").max_batch_size == 4
    finally:
        await s.stop()


@pytest.fixture(scope="module")
def explicit_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppThread]:
    repo = tmp_path_factory.mktemp("override")
    write_versioned(repo, "ver", "", ["1"])
    app = start_app(repo, control_mode="explicit", startup_models=["*"])
    yield app
    app.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unload_ends_a_config_override_over_the_wire(explicit_app: AppThread, protocol: str) -> None:
    if protocol == "http":
        c: Any = httpclient.InferenceServerClient(f"127.0.0.1:{explicit_app.app.port('http')}")
        config = c.get_model_config("ver")
    else:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{explicit_app.app.port('grpc')}")
        config = c.get_model_config("ver", as_json=True)["config"]

    def batch() -> int:
        cfg = c.get_model_config("ver")
        return int(cfg["max_batch_size"] if protocol == "http" else cfg.config.max_batch_size)

    try:
        c.load_model("ver", config=json.dumps({**config, "max_batch_size": 2}))
        assert batch() == 2
        c.unload_model("ver")
        c.load_model("ver")
        assert batch() == 4
    finally:
        c.close()
