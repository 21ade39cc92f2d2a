"""What the runner needs from a protocol client (HTTP or gRPC), and the errors they raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from torchtide.bench.inputs import Tensor
from torchtide.bench.serverstats import ServerCounters


class TransportError(Exception):
    """A control call (metadata, statistics, shared memory) failed."""


class Unreachable(TransportError):
    """No connection to the server: at start, or lost during a step (which then ends)."""


@dataclass(slots=True)
class ShmRef:
    """A tensor placed in a registered system shared-memory region."""

    name: str
    region: str
    offset: int
    byte_size: int


@dataclass(slots=True)
class ShmPlacement:
    inputs: list[ShmRef]
    outputs: list[ShmRef]


class Worker(Protocol):
    """One in-flight request at a time (an HTTP connection, or a gRPC stub on a shared channel)."""

    async def infer(self, request: Any) -> str | None:
        """Send a prepared request; None on success, else the error message. Raises
        Unreachable when the server cannot be reached at all (a new connection is refused)."""
        ...

    def close(self) -> None: ...


class Transport(Protocol):
    protocol: str

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]: ...

    async def max_batch_size(self, model: str, version: str) -> int | None:
        """The model config's max_batch_size, or None without the configuration extension."""
        ...

    async def statistics(self, model: str, version: str) -> ServerCounters | None:
        """Cumulative server-side counters, or None without the statistics extension."""
        ...

    async def register_shm(self, name: str, key: str, byte_size: int) -> None: ...

    async def unregister_shm(self, name: str) -> None: ...

    def prepare(
        self, model: str, version: str, tensors: list[Tensor], shm: ShmPlacement | None
    ) -> Any:
        """Serialise one request once; workers send it many times."""
        ...

    async def new_worker(self) -> Worker: ...

    async def close(self) -> None: ...
