"""Error types: ``TritonError`` (response errors) and ``TritonModelException``."""

from __future__ import annotations

from typing import ClassVar

__all__ = ["TritonError", "TritonModelException"]


class TritonModelException(Exception):
    """Raised by the utilities when an operation is invalid (Triton's name)."""


class TritonError(Exception):
    """An error attached to an ``InferenceResponse``.

    The codes are ``TRITONSERVER_Error_Code`` values.  When no code is given the
    error is ``INTERNAL`` (Triton's default), which the HTTP frontend maps to 500.
    Unlike Triton's class this one is also an ``Exception`` so that a model may
    raise it; the server can then read its code.
    """

    UNKNOWN: ClassVar[int] = 0
    INTERNAL: ClassVar[int] = 1
    NOT_FOUND: ClassVar[int] = 2
    INVALID_ARG: ClassVar[int] = 3
    UNAVAILABLE: ClassVar[int] = 4
    UNSUPPORTED: ClassVar[int] = 5
    ALREADY_EXISTS: ClassVar[int] = 6
    CANCELLED: ClassVar[int] = 7

    _CODE_NAMES: ClassVar[dict[int, str]] = {
        0: "UNKNOWN",
        1: "INTERNAL",
        2: "NOT_FOUND",
        3: "INVALID_ARG",
        4: "UNAVAILABLE",
        5: "UNSUPPORTED",
        6: "ALREADY_EXISTS",
        7: "CANCELLED",
    }

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        if not isinstance(message, str):
            raise TypeError(f"TritonError message must be a str, got {type(message).__name__}")
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"TritonError code must be an int, got {type(code).__name__}")
        if code not in self._CODE_NAMES:
            raise ValueError(f"invalid TritonError code {code}")
        super().__init__(message)
        self._message = message
        self._code = int(code)

    def message(self) -> str:
        """The error message."""
        return self._message

    def code(self) -> int:
        """The ``TRITONSERVER_Error_Code`` value."""
        return self._code

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code=TritonError.{self._CODE_NAMES[self._code]})"
