"""`torchtide check` and the load path it exercises: a model that failed on one instance leaves
no thread behind answering a closed loop, the instances that did load are finalized, a model
without config.pbtxt is named by its folder, and `serve` logs each failure once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.models import write_add_sub, write_model
from torchtide import repository
from torchtide.backends.base import Backend, LoadContext, ModelInstance
from torchtide.check import check_repositories
from torchtide.cli import main
from torchtide.config import ConfigError
from torchtide.instances import InstanceInfo, InstanceRunner

ROOT = Path(__file__).resolve().parent.parent
TWO_INSTANCES = """
backend: "python"
input [{ name: "A" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "B" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ count: 2 kind: KIND_CPU }]
"""


class _Instance(ModelInstance):
    def __init__(self, finalized: list[str], name: str) -> None:
        self.finalized, self.name = finalized, name

    def execute(self, work: Any, timing: Any) -> Any:
        return []

    def finalize(self) -> None:
        self.finalized.append(self.name)


class _SecondFailsFirst(Backend):
    """Instance _1 fails at once; instance _0 loads only after the load call has returned,
    or after `patience` s when the load call (rightly) waits for it."""

    name = "python"

    def __init__(self, returned: threading.Event, finalized: list[str]) -> None:
        self.returned, self.finalized = returned, finalized

    def load(self, ctx: LoadContext) -> ModelInstance:
        if ctx.instance.name.endswith("_1"):
            raise ConfigError("instance 1 cannot load")
        self.returned.wait(2.0)
        return _Instance(self.finalized, ctx.instance.name)


def test_a_failed_load_waits_for_its_sibling_instances_and_finalizes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_model(tmp_path, "two", TWO_INSTANCES, {"1/model.py": "x = 1\n"})
    returned, finalized = threading.Event(), []
    backend = _SecondFailsFirst(returned, finalized)
    monkeypatch.setattr(repository, "get_backend", lambda name: backend)
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: errors.append(a.exc_value))

    async def run() -> Any:
        reports = await check_repositories([tmp_path])
        returned.set()
        return reports

    reports = asyncio.run(run())
    assert [(r.name, r.state) for r in reports] == [("two", "UNAVAILABLE")]
    assert "instance 1 cannot load" in reports[0].reason
    assert finalized == ["two_0_0"]  # the instance that loaded was released
    assert errors == []


def test_an_instance_thread_answering_a_closed_loop_stays_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: errors.append(a.exc_value))
    go, done = threading.Event(), threading.Event()
    runner = InstanceRunner(InstanceInfo("m_0_0", "CPU", 0))

    def work() -> int:
        go.wait(30)
        return 1

    async def abandon() -> None:
        runner.call(work)  # its caller goes away with the loop

    asyncio.run(abandon())  # closes the loop while work() still runs
    # The queue is served in order: once `done` is set, work() has answered the closed loop.
    runner._queue.put((done.set, (), lambda result, error: None))
    go.set()
    assert done.wait(30)
    runner._queue.put(None)
    runner._thread.join(30)
    assert errors == []


def test_a_model_without_config_is_named_by_its_folder(tmp_path: Path) -> None:
    write_model(tmp_path, "bare", None, {"1/notes.txt": "no model file here"})
    reports = asyncio.run(check_repositories([tmp_path]))
    assert reports[0].reason.startswith(f"{tmp_path / 'bare'} (no config.pbtxt): backend: ")
    assert not (tmp_path / "bare" / "config.pbtxt").exists()


def test_check_prints_the_failure_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the table keeps each reason on one line
    write_add_sub(tmp_path)
    write_model(tmp_path, "bad", 'backend: "python"\nmax_batch: 4\n', {"1/model.py": "x = 1\n"})
    assert main(["check", str(tmp_path)]) == 1
    out, err = capfd.readouterr()
    assert out.count("unknown field 'max_batch' in inference.ModelConfig (did you mean") == 1
    assert "max_batch" not in err


def test_serve_logs_a_failed_load_once(tmp_path: Path) -> None:
    write_model(tmp_path, "bad", 'backend: "python"\nmax_batch: 4\n', {"1/model.py": "x = 1\n"})
    args = [sys.executable, "-m", "torchtide.cli", "serve", f"--model-repository={tmp_path}"]
    for name in ("http", "grpc", "metrics"):
        args += [f"--{name}-port={free_port()}", f"--{name}-address=127.0.0.1"]
    done = subprocess.run(
        [*args, "--exit-on-error=true"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"},
    )
    assert done.returncode == 1
    # once as a log record (the start-up model table, Triton's, repeats it as a row)
    records = [line for line in done.stderr.splitlines() if not line.startswith("|")]
    assert sum("unknown field 'max_batch'" in r for r in records) == 1, done.stderr
