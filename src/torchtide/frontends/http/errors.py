"""The one place a core `Status` becomes an HTTP status code (Triton's HttpCodeFromError)."""

from __future__ import annotations

from torchtide.errors import ServerError, Status

HTTP_STATUS: dict[Status, int] = {
    Status.INTERNAL: 500,
    Status.NOT_FOUND: 404,
    Status.UNAVAILABLE: 503,
    Status.UNSUPPORTED: 501,
    # Everything else has no direct match and is a client error, as in Triton.
    Status.UNKNOWN: 400,
    Status.INVALID_ARG: 400,
    Status.ALREADY_EXISTS: 400,
    Status.CANCELLED: 400,
}

REASONS: dict[int, bytes] = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}

CLIENT_SHM_DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm' "
    "(--allow-client-shm=true) to enable it."
)


def http_status(error: ServerError) -> int:
    return HTTP_STATUS.get(error.status, 400)


def bad_request(message: str) -> ServerError:
    """A malformed request body or header (Triton answers some of these with 500; we say 400)."""
    return ServerError(Status.INVALID_ARG, message)
