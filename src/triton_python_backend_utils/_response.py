"""``InferenceResponse``, ``InferenceResponseSender`` and request/response flags."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Final

from ._errors import TritonError, TritonModelException
from ._tensor import Tensor

__all__ = [
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "InferenceResponse",
    "InferenceResponseSender",
]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START: Final = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END: Final = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL: Final = 1
TRITONSERVER_REQUEST_RELEASE_ALL: Final = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE: Final = 2

ResponseSink = Callable[["InferenceResponse | None", int], None]


def _parameters_to_json(parameters: dict[str, Any] | str | None) -> str:
    """Triton's parameter rules: str keys, bool/int/str values; a JSON string as given."""
    if parameters is None:
        return "{}"
    if isinstance(parameters, str):
        try:
            decoded = json.loads(parameters)
        except json.JSONDecodeError as exc:
            raise TritonModelException(f"parameters is not valid JSON: {exc}") from None
        if not isinstance(decoded, dict):
            raise TritonModelException("parameters must be a JSON object")
        return parameters
    if not isinstance(parameters, dict):
        raise TritonModelException(f"Expect dict, got {type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(
                f"Expect parameters keys to have type str, found type {type(key)}"
            )
        if not isinstance(value, bool | int | str):
            raise TritonModelException(
                f"Expect parameters values to have type bool/int/str, found type {type(value)}"
            )
    return json.dumps(parameters)


def _check_tensors(tensors: list[Tensor] | None, what: str) -> list[Tensor]:
    if tensors is None:
        return []
    result = list(tensors) if not isinstance(tensors, list) else tensors
    for tensor in result:
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{what} must be pb_utils.Tensor objects, got {type(tensor).__name__}")
    return result


class InferenceResponse:
    """A response: output tensors, or an error, plus optional parameters."""

    __slots__ = ("_error", "_output_tensors", "_parameters")

    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(f"error must be a pb_utils.TritonError, got {type(error).__name__}")
        self._output_tensors = _check_tensors(output_tensors, "output_tensors")
        self._error = error
        self._parameters = _parameters_to_json(parameters)

    def output_tensors(self) -> list[Tensor]:
        return self._output_tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        """The parameters as a JSON string (``"{}"`` when none)."""
        return self._parameters

    def __repr__(self) -> str:
        names = [t.name() for t in self._output_tensors]
        return f"InferenceResponse(output_tensors={names}, error={self._error!r})"


class InferenceResponseSender:
    """Sends responses of one request of a decoupled model to the server.

    ``sink(response, flags)`` is the server's callback.  The sender enforces
    Triton's rules: flags are 0 or ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``, a
    response is required when flags are 0, and nothing may follow the final flag.
    With ``decoupled=False`` it also allows only one response, as Triton does.
    """

    __slots__ = ("_cancel_check", "_closed", "_decoupled", "_lock", "_sent", "_sink")

    def __init__(
        self,
        sink: ResponseSink,
        cancel_check: Callable[[], bool] | None = None,
        decoupled: bool = True,
    ) -> None:
        self._sink = sink
        self._cancel_check = cancel_check
        self._decoupled = decoupled
        self._lock = threading.Lock()
        self._closed = False
        self._sent = 0

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if response is None and flags == 0:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero."
            )
        if response is not None and not isinstance(response, InferenceResponse):
            raise TypeError(
                f"response must be a pb_utils.InferenceResponse, got {type(response).__name__}"
            )
        with self._lock:
            if not self._decoupled:
                if response is not None and self._sent > 0:
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send more "
                        "than one response."
                    )
                if response is None and self._sent == 0:
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send complete "
                        "final before sending a response."
                    )
            if self._closed:
                raise TritonModelException(
                    "Unable to send response. Response sender has been closed."
                )
            if flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                self._closed = True
            self._sent += 1
            # Under the lock so that the sink sees responses in order, FINAL last.
            self._sink(response, flags)

    def is_cancelled(self) -> bool:
        check = self._cancel_check
        return bool(check()) if check is not None else False

    def _is_closed(self) -> bool:
        """Whether the final flag has been sent (for the server)."""
        with self._lock:
            return self._closed
