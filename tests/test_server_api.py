"""The in-process API: versions and policies, metadata and config defaults, load/unload/reload,
classification, statistics errors."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import probe
from tests.models import ADD_SUB_CONFIG, ADD_SUB_PY, write_add_sub, write_model
from torchtide.config import to_json_dict
from torchtide.errors import ServerError, Status
from torchtide.server import InferenceServer, ServerOptions
from torchtide.types import InferRequest, InferTensor, RequestedOutput

VERSIONED_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = int(args["model_version"])

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", np.full(x.shape, self.version, np.float32))]))
        return out
"""


def versioned(policy: str = "") -> str:
    return f"""
backend: "python"
max_batch_size: 4
input [{{ name: "IN" data_type: TYPE_FP32 dims: [1] }}]
output [{{ name: "OUT" data_type: TYPE_FP32 dims: [1] }}]
{policy}
"""


def write_versioned(repo: Path, name: str, policy: str, versions: list[str]) -> None:
    write_model(repo, name, versioned(policy), {f"{v}/model.py": VERSIONED_PY for v in versions})


ONE = np.ones((1, 1), np.float32)


async def started(repo: Path, **kw: Any) -> InferenceServer:
    s = InferenceServer(ServerOptions([repo], **kw))
    await s.start()
    return s


async def test_version_policies(tmp_path: Path) -> None:
    write_versioned(tmp_path, "latest", "", ["1", "2", "3", "010", "abc"])
    write_versioned(
        tmp_path, "latest2", "version_policy { latest { num_versions: 2 } }", ["1", "2", "3"]
    )
    write_versioned(tmp_path, "all", "version_policy { all {} }", ["1", "2", "3"])
    write_versioned(
        tmp_path, "specific", "version_policy { specific { versions: [1, 3] } }", ["1", "2", "3"]
    )
    s = await started(tmp_path)
    try:
        assert s.model_metadata("latest")["versions"] == ["3"]  # '010', 'abc' ignored
        assert s.model_metadata("latest2")["versions"] == ["2", "3"]
        assert s.model_metadata("all")["versions"] == ["1", "2", "3"]
        assert s.model_metadata("specific")["versions"] == ["1", "3"]
        assert s.model_metadata("all", "2")["versions"] == ["2"]
        for name, version, want in [
            ("all", "", 3),
            ("all", "1", 1),
            ("specific", "1", 1),
            ("latest2", "02", 2),
        ]:
            out = await s.infer_numpy(name, {"IN": ONE}, version=version)
            assert out["OUT"][0, 0] == want
        with pytest.raises(ServerError) as ei:
            await s.infer_numpy("specific", {"IN": ONE}, version="2")
        assert ei.value.status is Status.NOT_FOUND
        assert ei.value.message == "Request for unknown model: 'specific' version 2 is not found"
        with pytest.raises(ServerError) as ei:
            s.resolve("all", "abc")
        assert ei.value.status is Status.INVALID_ARG
        assert not s.model_ready("all", "7") and s.model_ready("all", "1")
        stats = s.statistics("all")
        assert [x["version"] for x in stats] == ["1", "2", "3"]
        assert [x["version"] for x in s.statistics("all", "2")] == ["2"]
    finally:
        await s.stop()


async def test_config_defaults_like_triton(tmp_path: Path) -> None:
    write_add_sub(tmp_path)
    s = await started(tmp_path)
    try:
        cfg = to_json_dict(s.model_config("add_sub"))
        assert cfg["name"] == "add_sub" and cfg["backend"] == "python" and cfg["platform"] == ""
        assert cfg["version_policy"] == {"latest": {"num_versions": 1}}
        assert cfg["default_model_filename"] == "model.py"
        assert cfg["instance_group"][0]["name"] == "add_sub_0"
        assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
        assert cfg["instance_group"][0]["count"] == 1
        assert cfg["dynamic_batching"]["preferred_batch_size"] == [64]
        assert cfg["input"][0]["dims"] == [16] and cfg["input"][0]["data_type"] == "TYPE_INT32"
        assert cfg["optimization"]["input_pinned_memory"] == {"enable": True}
        md = s.model_metadata("add_sub")
        assert md["platform"] == "python"
        assert md["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
        assert s.metadata()["name"] == "triton"
    finally:
        await s.stop()


async def test_unknown_model_and_statistics_errors(tmp_path: Path) -> None:
    write_add_sub(tmp_path)
    s = await started(tmp_path)
    try:
        with pytest.raises(ServerError) as ei:
            s.model_metadata("nope")
        assert (ei.value.status, ei.value.message) == (
            Status.NOT_FOUND,
            "Request for unknown model: 'nope' is not found",
        )
        with pytest.raises(ServerError) as ei:
            s.statistics("nope")
        assert ei.value.message == "requested model 'nope' is not available"
        with pytest.raises(ServerError) as ei:
            await s.load("add_sub")
        assert ei.value.status is Status.UNAVAILABLE  # control mode none
    finally:
        await s.stop()


async def test_explicit_load_unload_and_override(tmp_path: Path) -> None:
    write_add_sub(tmp_path)
    write_versioned(tmp_path, "ver", "", ["1"])
    s = await started(tmp_path, control_mode="explicit", startup_models=["ver"])
    try:
        assert [e.get("state") for e in s.repository_index()] == [None, "READY"]
        assert not s.model_ready("add_sub")
        await s.load("add_sub")
        assert s.model_ready("add_sub")
        one = np.ones((1, 16), np.int32)
        assert (await s.infer_numpy("add_sub", {"INPUT0": one, "INPUT1": one}))[
            "OUTPUT0"
        ].sum() == 32
        await s.unload("add_sub")
        assert not s.model_ready("add_sub")
        entry = next(e for e in s.repository_index() if e["name"] == "add_sub")
        assert (entry["state"], entry["reason"]) == ("UNAVAILABLE", "unloaded")
        with pytest.raises(ServerError) as ei:
            await s.infer_numpy("add_sub", {"INPUT0": one, "INPUT1": one})
        assert ei.value.message == "Request for unknown model: 'add_sub' has no available versions"
        # a load with a config override (JSON, as the repository API sends it)
        override = to_json_dict(s.model_config("ver"))
        override["max_batch_size"] = 2
        await s.load("ver", json.dumps(override))
        assert s.model_config("ver").max_batch_size == 2
        with pytest.raises(ServerError) as ei:
            await s.load("nope")
        assert ei.value.status is Status.INTERNAL
        with pytest.raises(ServerError) as ei:
            await s.load("ver", "{not json")
        assert ei.value.status is Status.INVALID_ARG and s.model_ready("ver")
    finally:
        await s.stop()


async def test_reload_under_traffic_switches_atomically(tmp_path: Path) -> None:
    write_versioned(tmp_path, "ver", "", ["1"])
    s = await started(tmp_path, control_mode="explicit", startup_models=["*"])
    seen: list[tuple[bool, float]] = []  # (sent after the reload returned, version served)
    errors: list[BaseException] = []
    stop = asyncio.Event()
    switched = False

    async def client() -> None:
        while not stop.is_set():
            after = switched
            try:
                seen.append((after, float((await s.infer_numpy("ver", {"IN": ONE}))["OUT"][0, 0])))
            except ServerError as e:
                errors.append(e)
                await asyncio.sleep(0.01)  # an error may come without a suspension point

    try:
        clients = [asyncio.ensure_future(client()) for _ in range(4)]
        await asyncio.sleep(0.2)
        shutil.copytree(tmp_path / "ver" / "1", tmp_path / "ver" / "2")
        await s.load("ver")  # version 2 appears; latest policy switches to it
        switched = True
        await asyncio.sleep(0.2)
        # a broken new config leaves version 2 serving, with the reason reported
        (tmp_path / "ver" / "config.pbtxt").write_text("max_batch: 1\n")
        with pytest.raises(ServerError):
            await s.load("ver")
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*clients)
        entry = next(e for e in s.repository_index() if e["name"] == "ver" and e["version"] == "2")
        assert entry["state"] == "READY"
        assert "unknown field 'max_batch'" in entry.get("reason", "")
    finally:
        await s.stop()
    assert errors == []
    assert 1.0 in {v for after, v in seen if not after}
    assert {v for after, v in seen if after} == {2.0}  # sent after the switch: always version 2


async def test_classification_extension(tmp_path: Path) -> None:
    write_model(
        tmp_path,
        "scores",
        """
        backend: "python"
        max_batch_size: 4
        input [{ name: "IN" data_type: TYPE_FP32 dims: [4] }]
        output [{ name: "OUT" data_type: TYPE_FP32 dims: [4] label_filename: "labels.txt" }]
        """,
        {
            "labels.txt": "cat\ndog\nbird\nfish\n",
            "1/model.py": """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]) for r in requests]
""",
        },
    )
    s = await started(tmp_path)
    try:
        x = np.array([[0.1, 0.9, 0.3, 0.2], [0.5, 0.1, 0.2, 0.7]], np.float32)
        resp = await s.infer(
            InferRequest(
                "scores",
                [InferTensor.of("IN", x)],
                outputs=[RequestedOutput("OUT", classification=2)],
            )
        )
        out = resp.outputs[0]
        assert out.datatype == "BYTES" and out.shape == (2, 2)
        assert out.data.tolist() == [
            [b"0.900000:1:dog", b"0.300000:2:bird"],
            [b"0.700000:3:fish", b"0.500000:0:cat"],
        ]
    finally:
        await s.stop()


async def test_validation_messages(tmp_path: Path) -> None:
    from tests.wire_vectors import VECTORS

    write_add_sub(tmp_path)
    s = await started(tmp_path)
    try:
        for v in VECTORS:
            req = InferRequest(
                v.model,
                [InferTensor(n, dt, arr) for n, (dt, arr) in v.inputs.items()],
                model_version=v.version,
                outputs=None if v.outputs is None else [RequestedOutput(o) for o in v.outputs],
            )
            with pytest.raises(ServerError) as ei:
                await s.infer(req)
            assert ei.value.status.name == v.status, v.id
            assert v.message in ei.value.message, v.id
        assert s.is_live() and s.is_ready()
    finally:
        await s.stop()


async def test_model_without_config_pbtxt_needs_enough_in_the_file(tmp_path: Path) -> None:
    write_model(tmp_path, "bare", None, {"1/model.py": ADD_SUB_PY})
    write_model(tmp_path, "ok", ADD_SUB_CONFIG, {"1/model.py": ADD_SUB_PY})
    s = await started(tmp_path)
    try:
        entry = next(e for e in s.repository_index() if e["name"] == "bare")
        assert entry["state"] == "UNAVAILABLE" and "the model has no inputs" in entry["reason"]
        assert s.model_ready("ok")
    finally:
        await s.stop()
        probe.reset()
