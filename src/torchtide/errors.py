"""One error family for the whole core; each front-end maps `Status` to its wire in one table."""

from __future__ import annotations

from enum import Enum


class Status(Enum):
    """Neutral error codes, named after Triton's TRITONSERVER_Error codes."""

    UNKNOWN = "UNKNOWN"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"


class ServerError(Exception):
    """An error with a status. Anything else escaping the core is INTERNAL."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"ServerError({self.status.name}, {self.message!r})"


def invalid_arg(message: str) -> ServerError:
    return ServerError(Status.INVALID_ARG, message)


def not_found(message: str) -> ServerError:
    return ServerError(Status.NOT_FOUND, message)


def unavailable(message: str) -> ServerError:
    return ServerError(Status.UNAVAILABLE, message)


def internal(message: str) -> ServerError:
    return ServerError(Status.INTERNAL, message)


def unsupported(message: str) -> ServerError:
    return ServerError(Status.UNSUPPORTED, message)
