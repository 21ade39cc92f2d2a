"""The management calls of tests/wire_vectors.py (CALLS), driven over HTTP and over gRPC against
one server: the same call must mean the same thing on both protocols."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.conftest import start_app
from tests.http_util import http_code, request
from tests.models import write_add_sub
from tests.test_grpc import EXPECTED_CODE
from tests.wire_vectors import CALLS, Call
from torchtide.app import AppThread


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # deep enough that a name climbing two folders up still lands inside this test's folder
    r = tmp_path_factory.mktemp("mgmt") / "a" / "b" / "repo"
    write_add_sub(r)
    return r


@pytest.fixture(scope="module")
def app(repo: Path) -> Iterator[AppThread]:
    a = start_app(repo, control_mode="explicit", startup_models=["add_sub"])  # no client shm
    yield a
    a.stop()


@pytest.fixture(scope="module")
def stub(app: AppThread) -> Iterator[Any]:
    ch = grpc.insecure_channel(f"127.0.0.1:{app.app.port('grpc')}")
    yield pb_grpc.GRPCInferenceServiceStub(ch)
    ch.close()


# ---------------------------------------------------------------------------- HTTP


def _model_path(c: Call) -> str:
    path = f"/v2/models/{quote(c.name, safe='')}"
    return path + f"/versions/{c.version}" if c.version else path


def _http_call(port: int, c: Call) -> tuple[int, str]:
    """Send the call as tritonclient.http would; (HTTP status, error message or '')."""
    params = {
        k: base64.b64encode(v).decode() if isinstance(v, bytes) else v
        for k, v in c.parameters.items()
    }
    name = quote(c.name, safe="")
    if c.call in ("load", "unload"):
        r = request(port, "POST", f"/v2/repository/models/{name}/{c.call}", {"parameters": params})
    elif c.call == "metadata":
        r = request(port, "GET", _model_path(c))
    elif c.call in ("ready", "stats"):
        r = request(port, "GET", f"{_model_path(c)}/{c.call}")
    elif c.call == "shm_status":
        r = request(port, "GET", "/v2/systemsharedmemory/status")
    elif c.call == "shm_register":
        body = {"offset": 0, **params}
        r = request(port, "POST", f"/v2/systemsharedmemory/region/{name}/register", body)
    elif c.call == "shm_unregister":
        r = request(port, "POST", "/v2/systemsharedmemory/unregister")
    else:
        raise AssertionError(f"no HTTP form for {c.call}")
    return r.status, r.error if r.status != 200 else ""


@pytest.mark.parametrize("c", CALLS, ids=[c.id for c in CALLS])
def test_http(app: AppThread, c: Call) -> None:
    port = app.app.port("http")
    status, message = _http_call(port, c)
    expected = 200 if c.status == "OK" else http_code(c.status)
    assert (status, c.message in message) == (expected, True), message
    assert request(port, "GET", "/v2/health/ready").status == 200


# ---------------------------------------------------------------------------- gRPC


def _repository_parameters(target: Any, params: dict[str, Any]) -> None:
    """Typed as a client would send them: bool, int64, string or bytes."""
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, bytes):
            p.bytes_param = value
        else:
            p.string_param = value


def _grpc_call(stub: Any, c: Call) -> Any:
    if c.call == "load":
        req = pb.RepositoryModelLoadRequest(model_name=c.name)
        _repository_parameters(req.parameters, c.parameters)
        return stub.RepositoryModelLoad(req)
    if c.call == "unload":
        req = pb.RepositoryModelUnloadRequest(model_name=c.name)
        _repository_parameters(req.parameters, c.parameters)
        return stub.RepositoryModelUnload(req)
    if c.call == "metadata":
        return stub.ModelMetadata(pb.ModelMetadataRequest(name=c.name, version=c.version))
    if c.call == "ready":
        return stub.ModelReady(pb.ModelReadyRequest(name=c.name, version=c.version))
    if c.call == "stats":
        return stub.ModelStatistics(pb.ModelStatisticsRequest(name=c.name, version=c.version))
    if c.call == "shm_status":
        return stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name=c.name))
    if c.call == "shm_register":
        return stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name=c.name, **c.parameters)
        )
    if c.call == "shm_unregister":
        return stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())
    raise AssertionError(f"no gRPC form for {c.call}")


@pytest.mark.parametrize("c", CALLS, ids=[c.id for c in CALLS])
def test_grpc(stub: Any, c: Call) -> None:
    try:
        _grpc_call(stub, c)
        code, message = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        code, message = e.code(), e.details()  # type: ignore[attr-defined]
    expected = grpc.StatusCode.OK if c.status == "OK" else EXPECTED_CODE[c.status]
    assert (code, c.message in message) == (expected, True), message
    assert stub.ServerReady(pb.ServerReadyRequest()).ready


def test_no_call_wrote_outside_the_repository(
    app: AppThread, stub: Any, repo: Path
) -> None:
    """Every file under this test's folder is in the repository: no model name or file path of
    the vectors reached past it (run after the vectors, on both protocols)."""
    for c in CALLS:
        _http_call(app.app.port("http"), c)
        with contextlib.suppress(grpc.RpcError):
            _grpc_call(stub, c)
    top = repo.parent.parent.parent
    stray = [p for p in top.rglob("*") if p.is_file() and repo not in p.parents]
    assert stray == []
