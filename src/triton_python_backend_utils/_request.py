"""``InferenceRequest`` and its helper types (trace, preferred memory)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Final

from ._errors import TritonModelException
from ._response import (
    TRITONSERVER_REQUEST_RELEASE_ALL,
    InferenceResponseSender,
    ResponseSink,
    _check_tensors,
    _parameters_to_json,
)
from ._tensor import Tensor

__all__ = [
    "TRITONSERVER_MEMORY_CPU",
    "TRITONSERVER_MEMORY_GPU",
    "BLSExecutor",
    "InferenceRequest",
    "InferenceTrace",
    "PreferredMemory",
]

# PreferredMemory::MemoryType values.
TRITONSERVER_MEMORY_GPU: Final = 0
TRITONSERVER_MEMORY_CPU: Final = 1
_MEMORY_DEFAULT: Final = 2

# (request, decoupled) -> InferenceResponse, or an iterator of them when decoupled.
BLSExecutor = Callable[["InferenceRequest", bool], Any]
BLSAsyncExecutor = Callable[["InferenceRequest", bool], Awaitable[Any]]


class PreferredMemory:
    """Where a BLS caller prefers output tensors to be allocated."""

    __slots__ = ("preferred_device_id", "preferred_memory_type")

    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id

    def __repr__(self) -> str:
        return f"PreferredMemory({self.preferred_memory_type}, {self.preferred_device_id})"


class InferenceTrace:
    """The trace attached to a request; ``get_context()`` is None when not traced."""

    __slots__ = ("_context",)

    def __init__(self, context: str | None = None) -> None:
        self._context = context or None

    def get_context(self) -> str | None:
        return self._context


class InferenceRequest:
    """A request, as given to ``execute`` by the server or built by a model for BLS.

    The keyword names and positional order follow Triton's constructor.  Server-only
    state lives in private attributes set after construction:

    * ``_cancel_check``: ``() -> bool``, backs ``is_cancelled()``;
    * ``_response_sink``: ``(response | None, flags) -> None``, backs
      ``get_response_sender()`` (None for a non-decoupled model);
    * ``_release_flags``: what the model passed to ``set_release_flags``;
    * ``_server_data``: free for the server's own bookkeeping.

    BLS (``exec``/``async_exec``) goes through the class attributes
    ``InferenceRequest._bls_executor`` and ``_bls_async_executor``.
    """

    __slots__ = (
        "_cancel_check",
        "_correlation_id",
        "_flags",
        "_inputs",
        "_model_name",
        "_model_version",
        "_parameters",
        "_preferred_memory",
        "_release_flags",
        "_request_id",
        "_requested_output_names",
        "_response_sender",
        "_response_sink",
        "_server_data",
        "_timeout",
        "_trace",
    )

    _bls_executor: ClassVar[BLSExecutor | None] = None
    _bls_async_executor: ClassVar[BLSAsyncExecutor | None] = None

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: list[Tensor] | None = None,
        requested_output_names: Iterable[str] | None = None,
        model_name: str = "",
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: PreferredMemory | None = None,
        trace: InferenceTrace | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        if isinstance(correlation_id, bool) or not isinstance(correlation_id, int | str):
            raise TritonModelException("Correlation ID must be integer or string")
        names = list(dict.fromkeys(requested_output_names or ()))
        for output_name in names:
            if not isinstance(output_name, str) or output_name == "":
                raise TritonModelException(
                    f"Requested output name for request with id '{request_id}' and model "
                    f"name '{model_name}' should not be empty."
                )
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._inputs = _check_tensors(inputs, "inputs")
        self._requested_output_names = names
        self._model_name = model_name
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        self._preferred_memory = (
            preferred_memory if preferred_memory is not None else PreferredMemory(_MEMORY_DEFAULT)
        )
        self._trace = trace if trace is not None else InferenceTrace()
        self._parameters = _parameters_to_json(parameters)
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        self._cancel_check: Callable[[], bool] | None = None
        self._response_sink: ResponseSink | None = None
        self._response_sender: InferenceResponseSender | None = None
        self._server_data: Any = None

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        """The request parameters as a JSON string (``"{}"`` when none)."""
        return self._parameters

    def trace(self) -> InferenceTrace:
        return self._trace

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def preferred_memory(self) -> PreferredMemory:
        return self._preferred_memory

    def requested_output_names(self) -> set[str]:
        """The requested output names, as a set (as in Triton)."""
        return set(self._requested_output_names)

    def is_cancelled(self) -> bool:
        check = self._cancel_check
        return bool(check()) if check is not None else False

    def get_response_sender(self) -> InferenceResponseSender:
        """The (single) response sender of this request; decoupled models only."""
        if self._response_sender is None:
            if self._response_sink is None:
                raise TritonModelException(
                    "Unable to get the response sender: the request was not given to a "
                    "model using the decoupled transaction policy."
                )
            self._response_sender = InferenceResponseSender(self._response_sink, self._cancel_check)
        return self._response_sender

    def set_release_flags(self, flags: int) -> None:
        self._release_flags = flags

    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on another model (BLS) and return its response.

        With ``decoupled=True`` the result is an iterator of responses.
        """
        executor = InferenceRequest._bls_executor
        if executor is None:
            raise TritonModelException(
                "BLS is not available: no BLS executor is registered in this process."
            )
        return executor(self, decoupled)

    def async_exec(self, decoupled: bool = False) -> Awaitable[Any]:
        """Like ``exec`` but returns an awaitable; call from a running event loop."""
        async_executor = InferenceRequest._bls_async_executor
        if async_executor is not None:
            return async_executor(self, decoupled)
        executor = InferenceRequest._bls_executor
        if executor is None:
            raise TritonModelException(
                "BLS is not available: no BLS executor is registered in this process."
            )
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, executor, self, decoupled)

    def __repr__(self) -> str:
        names = [t.name() for t in self._inputs]
        return (
            f"InferenceRequest(request_id={self._request_id!r}, model_name="
            f"{self._model_name!r}, inputs={names})"
        )
