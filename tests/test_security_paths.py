"""Names that could reach past where they belong: shared-memory keys (a POSIX shm object in
/dev/shm, never a path) and model names (one folder of the repository), over HTTP and gRPC."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from tests.conftest import start_app
from tests.http_util import request
from tests.models import write_add_sub
from torchtide.app import AppThread
from torchtide.errors import ServerError, Status
from torchtide.server import check_model_name
from torchtide.shm import SHM_DIR, shm_object_name

SECRET = b"do not map me" + bytes(51)  # 64 bytes


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("sec") / "a" / "b" / "repo"
    write_add_sub(r)
    return r


@pytest.fixture(scope="module")
def app(repo: Path) -> Iterator[AppThread]:
    a = start_app(repo, control_mode="explicit", startup_models=["add_sub"], allow_client_shm=True)
    yield a
    a.stop()


@pytest.fixture(scope="module")
def http(app: AppThread) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(app: AppThread) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{app.app.port('grpc')}")
    yield c
    c.close()


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, http: Any, grpc_client: Any) -> Any:
    return http if request.param == "http" else grpc_client


def _refusal(fn: Callable[[], Any]) -> tuple[str, str]:
    """(status, message) of a tritonclient call that must fail; status in HTTP or gRPC words."""
    with pytest.raises(InferenceServerException) as ei:
        fn()
    return str(ei.value.status()), str(ei.value.message())


_INVALID = ("400", str(grpc.StatusCode.INVALID_ARGUMENT))
_INTERNAL = ("500", str(grpc.StatusCode.INTERNAL))


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "secret.bin"
    p.write_bytes(SECRET)
    return p


@pytest.fixture
def in_shm_dir(request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """Names for things the test creates in /dev/shm; removed afterwards."""
    made: list[str] = []

    def name(stem: str) -> str:
        made.append(f"tt_sec_{os.getpid()}_{request.node.name}_{stem}".replace("[", "_")[:200])
        return made[-1]

    yield name
    for n in made:
        p = Path(SHM_DIR) / n
        if p.is_dir() and not p.is_symlink():
            p.rmdir()
        elif p.exists() or p.is_symlink():
            p.unlink()


# ---------------------------------------------------------------------------- shared memory keys


def test_a_key_climbing_out_of_dev_shm_is_refused(client: Any, secret: Path) -> None:
    climbing = "/" + os.path.relpath(secret, SHM_DIR)  # /../../tmp/.../secret.bin
    for key in (climbing, "../../etc/passwd", climbing.lstrip("/")):
        status, msg = _refusal(lambda k=key: client.register_system_shared_memory("r", k, 64))
        assert status in _INVALID and f"invalid shm key '{key}'" in msg, msg
    assert secret.read_bytes() == SECRET
    assert _regions(client) == []


@pytest.mark.parametrize("key", ["a/b", "/a/b", "//a", "/", "", ".", "..", "/..", "a\x00b",
                                 "k" * 256])
def test_malformed_keys_are_refused(client: Any, key: str) -> None:
    status, msg = _refusal(lambda: client.register_system_shared_memory("r", key, 64))
    assert status in _INVALID and "invalid shm key" in msg, msg
    assert _regions(client) == []


def test_a_symlink_in_dev_shm_is_not_followed(
    client: Any, secret: Path, in_shm_dir: Callable[[str], str]
) -> None:
    link = in_shm_dir("link")
    os.symlink(secret, Path(SHM_DIR) / link)
    status, msg = _refusal(lambda: client.register_system_shared_memory("r", "/" + link, 64))
    assert status in _INVALID and "symbolic link" in msg, msg
    assert secret.read_bytes() == SECRET
    assert _regions(client) == []


def test_only_regular_files_are_mapped(client: Any, in_shm_dir: Callable[[str], str]) -> None:
    folder, fifo = in_shm_dir("dir"), in_shm_dir("fifo")
    os.mkdir(Path(SHM_DIR) / folder)
    os.mkfifo(Path(SHM_DIR) / fifo)
    for name in (folder, fifo):
        status, msg = _refusal(lambda n=name: client.register_system_shared_memory("r", n, 64))
        assert status in _INVALID and "not a regular file" in msg, msg
    # a key naming nothing keeps Triton's answer
    status, msg = _refusal(lambda: client.register_system_shared_memory("r", "/tt_nothing", 64))
    assert status in _INTERNAL and "Unable to open shared memory region: '/tt_nothing'" in msg
    assert _regions(client) == []


def test_a_proper_key_still_registers(client: Any, in_shm_dir: Callable[[str], str]) -> None:
    key = in_shm_dir("ok")
    handle = shm.create_shared_memory_region("ok", "/" + key, 128)
    try:
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        shm.set_shared_memory_region(handle, [a, a])
        for k in ("/" + key, key):  # one leading '/' or none: the same object
            client.register_system_shared_memory("ok", k, 128)
            assert _regions(client) == ["ok"]
            client.unregister_system_shared_memory("ok")
    finally:
        shm.destroy_shared_memory_region(handle)


def _regions(client: Any) -> list[Any]:
    status = client.get_system_shared_memory_status()
    return [r["name"] for r in status] if isinstance(status, list) else list(status.regions)


def _shm_open_takes(key: str) -> bool:
    """What shm_open accepts as one object name, written out independently of the server."""
    body = key[1:] if key.startswith("/") else key
    return (body not in ("", ".", "..") and "/" not in body and "\x00" not in body
            and len(body.encode()) <= 255)


@given(st.text(st.sampled_from("ab./\\\x00-_"), max_size=12) | st.text(max_size=300))
def test_an_accepted_key_names_one_object_in_dev_shm(key: str) -> None:
    try:
        name = shm_object_name("r", key)
    except ServerError as e:
        assert e.status is Status.INVALID_ARG and not _shm_open_takes(key)
        return
    assert _shm_open_takes(key)
    assert os.path.dirname(os.path.normpath(os.path.join(SHM_DIR, name))) == SHM_DIR


# ---------------------------------------------------------------------------- model names


def _files_outside(repo: Path) -> list[Path]:
    top = repo.parent.parent.parent
    return [p for p in top.rglob("*") if p.is_file() and repo not in p.parents]


def test_load_with_a_climbing_name_writes_nothing_over_http(app: AppThread, repo: Path) -> None:
    """The exact attack: a name of '../../x' with a file override."""
    body = {"parameters": {"file:1/model.py": base64.b64encode(b"x = 1\n").decode()}}
    r = request(app.app.port("http"), "POST", "/v2/repository/models/..%2F..%2Fx/load", body)
    assert r.status == 400 and "invalid model name '../../x'" in r.error, r.error
    assert _files_outside(repo) == []


def test_load_with_a_climbing_name_writes_nothing_over_grpc(
    grpc_client: grpcclient.InferenceServerClient, repo: Path
) -> None:
    with pytest.raises(InferenceServerException) as ei:
        grpc_client.load_model("../../y", config="{}", files={"file:1/model.py": b"x = 1\n"})
    assert ei.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert "invalid model name '../../y'" in str(ei.value.message())
    assert _files_outside(repo) == []
    assert grpc_client.is_server_ready()


def _one_folder(name: str) -> bool:
    return (name not in ("", ".", "..") and not any(c in name for c in "/\\\x00")
            and len(name.encode()) <= 255)


@given(st.text(st.sampled_from("ab./\\\x00"), max_size=8) | st.text(max_size=300))
def test_an_accepted_model_name_is_one_folder_of_the_repository(name: str) -> None:
    try:
        check_model_name(name)
    except ServerError as e:
        assert e.status is Status.INVALID_ARG and "invalid model name" in e.message
        assert not _one_folder(name)
        return
    assert _one_folder(name)
    repo = Path("/srv/repo")
    assert Path(os.path.normpath(repo / name)).parent == repo
