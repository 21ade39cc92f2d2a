"""TLS for the listeners: Triton's gRPC SSL options (`--grpc-use-ssl`, ...) and the same for
HTTP (ours). A listener's context is built once at start; an unusable certificate or key stops the
start with a one-line error naming the file."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsError(ValueError):
    """A certificate or key that cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    cert: Path  # PEM server certificate (chain)
    key: Path  # PEM private key
    root_cert: Path | None = None  # PEM CAs that sign client certificates (mutual TLS)
    mutual: bool = False  # require and verify a client certificate


def server_context(opts: TlsOptions, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, the server's certificate, ALPN (gRPC: `h2`), and for
    mutual TLS a client certificate required and verified against `root_cert`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(opts.cert, opts.key)
    except (OSError, ssl.SSLError) as e:
        raise TlsError(
            f"cannot use the TLS certificate '{opts.cert}' with the key '{opts.key}': {_why(e)}"
        ) from None
    if opts.mutual:
        if opts.root_cert is None:
            raise TlsError("mutual TLS needs a root certificate to verify clients with")
        try:
            ctx.load_verify_locations(cafile=opts.root_cert)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(
                f"cannot use the TLS root certificate '{opts.root_cert}': {_why(e)}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _why(e: OSError | ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    return e.strerror or str(e)
