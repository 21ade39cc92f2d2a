from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.models import standard_repository
from torchtide.app import AppOptions, AppThread
from torchtide.server import ServerOptions

# Property tests judge results, never speed: no per-example deadline and no "too slow" health
# check, which a loaded machine would trip by timing alone.
settings.register_profile(
    "torchtide", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("torchtide")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def standard_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standard_repository(tmp_path_factory.mktemp("repo"))


def start_app(
    repo: Path, *, http: bool = True, grpc: bool = True, metrics: bool = False, **kwargs: object
) -> AppThread:
    server_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in ServerOptions.__dataclass_fields__}
    opts = AppOptions(
        server=ServerOptions([repo], **server_kwargs),  # type: ignore[arg-type]
        http_port=free_port() if http else None,
        grpc_port=free_port() if grpc else None,
        metrics_port=free_port() if metrics else None,
        http_address="127.0.0.1",
        grpc_address="127.0.0.1",
        metrics_address="127.0.0.1",
        **kwargs,  # type: ignore[arg-type]
    )
    return AppThread(opts).start()


@pytest.fixture(scope="session")
def served(standard_repo: Path) -> Iterator[AppThread]:
    """The standard repository served over HTTP and gRPC on free loopback ports."""
    app = start_app(standard_repo, allow_client_shm=True)
    yield app
    app.stop()
