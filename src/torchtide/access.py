"""Who may call which API: Triton's restricted API groups and our bearer tokens.

Every route and RPC belongs to one API group (Triton's `RestrictedCategory`, restricted_features.h).
A front-end asks `AccessPolicy.check` once per request, at its one choke point, before the body is
read, and maps a `Denial` to its wire in one table. Two independent checks, both must pass:

- Triton's restriction (`--http-restricted-api`, `--grpc-restricted-protocol`): a header (over gRPC
  the metadata key `triton-grpc-protocol-<key>`) must carry an exact value; refused as Triton does
  (HTTP 403, gRPC UNAVAILABLE, Triton's message).
- Ours (`--auth-token-file`): `Authorization: Bearer <token>`, a token granted the group in the
  file. Refused with 401 / UNAUTHENTICATED (no or unknown token) or 403 / PERMISSION_DENIED (a valid
  token not granted this group). The file is re-read when it changes; tokens never expire.

Secrets are compared in constant time (`hmac.compare_digest`) and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

log = logging.getLogger("torchtide.access")

GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton's kRestrictedProtocolHeaderTemplate
RELOAD_CHECK_S = 1.0  # how often the token file's stat is compared, at most


class ApiGroup(Enum):
    """Triton's restricted categories, with their flag names, and ours (`profile`)."""

    HEALTH = "health"
    METADATA = "metadata"
    INFERENCE = "inference"
    SHARED_MEMORY = "shared-memory"
    MODEL_CONFIG = "model-config"
    MODEL_REPOSITORY = "model-repository"
    STATISTICS = "statistics"
    TRACE = "trace"
    LOGGING = "logging"
    PROFILE = "profile"  # ours: `torchtide profile` (POST /v2/models/{m}/profile)


GROUP_NAMES = [g.value for g in ApiGroup]

# Each gRPC method's group, as tritonserver's grpc_server.cc / infer_handler.cc register them.
# `Check` and `Watch` are grpc.health.v1 (Triton registers Check as HEALTH; Watch we add).
GRPC_METHOD_GROUPS: dict[str, ApiGroup] = {
    "ServerLive": ApiGroup.HEALTH,
    "ServerReady": ApiGroup.HEALTH,
    "ModelReady": ApiGroup.HEALTH,
    "Check": ApiGroup.HEALTH,
    "Watch": ApiGroup.HEALTH,
    "ServerMetadata": ApiGroup.METADATA,
    "ModelMetadata": ApiGroup.METADATA,
    "ModelConfig": ApiGroup.MODEL_CONFIG,
    "ModelStatistics": ApiGroup.STATISTICS,
    "TraceSetting": ApiGroup.TRACE,
    "LogSettings": ApiGroup.LOGGING,
    "SystemSharedMemoryStatus": ApiGroup.SHARED_MEMORY,
    "SystemSharedMemoryRegister": ApiGroup.SHARED_MEMORY,
    "SystemSharedMemoryUnregister": ApiGroup.SHARED_MEMORY,
    "CudaSharedMemoryStatus": ApiGroup.SHARED_MEMORY,
    "CudaSharedMemoryRegister": ApiGroup.SHARED_MEMORY,
    "CudaSharedMemoryUnregister": ApiGroup.SHARED_MEMORY,
    "RepositoryIndex": ApiGroup.MODEL_REPOSITORY,
    "RepositoryModelLoad": ApiGroup.MODEL_REPOSITORY,
    "RepositoryModelUnload": ApiGroup.MODEL_REPOSITORY,
    "ModelInfer": ApiGroup.INFERENCE,
    "ModelStreamInfer": ApiGroup.INFERENCE,
}


# ---------------------------------------------------------------------------- Triton's restrictions


@dataclass(frozen=True, slots=True)
class Restriction:
    name: str  # the header (gRPC: metadata key) that must be present, as configured
    value: str  # ... with exactly this value

    @property
    def header(self) -> str:
        """The name looked up: header names are case-insensitive (HTTP), and gRPC metadata keys
        arrive lower-case (HTTP/2), where Triton would never match a key with capitals."""
        return self.name.lower()


Restrictions = dict[ApiGroup, Restriction]


def parse_restriction(
    arg: str, option: str, *, grpc: bool, into: Restrictions | None = None
) -> Restrictions:
    """One `<api>[,<api>...]:<key>=<value>` flag value, as tritonserver's
    ParseRestrictedFeatureOption reads it: split at the first ':' and the first '=' after it, all
    three parts non-empty; each group known and restricted at most once across repeated flags.
    Over gRPC the key gets Triton's `triton-grpc-protocol-` prefix. Raises ValueError with
    Triton's message."""
    out: Restrictions = {} if into is None else into
    colon = arg.find(":")
    equals = arg.find("=", colon + 1) if colon >= 0 else -1
    names, key, value = arg[:colon], arg[colon + 1 : equals], arg[equals + 1 :]
    if colon < 0 or equals < 0 or not names or not key or not value:
        raise ValueError(
            f"--{option} option format is '<config name>:<setting>=<value>'. Got {arg}"
        )
    feature = "protocol" if grpc else "api"
    header = GRPC_HEADER_PREFIX + key if grpc else key
    for name in names.split(","):
        if name not in GROUP_NAMES:
            raise ValueError(f"unknown restricted {feature} '{name}'")
        group = ApiGroup(name)
        if group in out:
            raise ValueError(
                f"restricted {feature} '{name}' can not be specified in multiple config groups"
            )
        out[group] = Restriction(header, value)
    return out


def parse_groups(text: str) -> frozenset[ApiGroup]:
    """A comma-separated list of group names ('*' for all, '' for none)."""
    if text.strip() == "*":
        return frozenset(ApiGroup)
    groups = set()
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        if name not in GROUP_NAMES:
            raise ValueError(
                f"unknown API group '{name}'; expected one of {', '.join(GROUP_NAMES)}"
            )
        groups.add(ApiGroup(name))
    return frozenset(groups)


# ---------------------------------------------------------------------------- bearer tokens


class TokenFileError(ValueError):
    """The token file cannot be used; the message never contains a token."""


@dataclass(frozen=True, slots=True)
class _Grant:
    digest: bytes  # sha256 of the token: what is kept and compared
    groups: frozenset[ApiGroup]


def parse_token_file(text: str) -> list[_Grant]:
    """Lines `<api>[,<api>...]:<token>` ('*' = every group); blank lines and '#' comments are
    skipped; the same token may appear on several lines (its groups add up)."""
    grants: list[_Grant] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        names, sep, token = line.partition(":")
        token = token.strip()
        if not sep or not token:
            raise TokenFileError(f"line {number}: expected '<api>[,<api>...]:<token>'")
        try:
            groups = parse_groups(names)
        except ValueError as e:
            raise TokenFileError(f"line {number}: {e}") from None
        if not groups:
            raise TokenFileError(f"line {number}: no API group before ':'")
        grants.append(_Grant(hashlib.sha256(token.encode()).digest(), groups))
    return grants


class TokenFile:
    """The token file, re-read when its stat changes (checked at most every `check_s`). A file
    that becomes unreadable or invalid keeps the last good tokens (an error is logged)."""

    def __init__(self, path: Path, check_s: float = RELOAD_CHECK_S) -> None:
        self.path = path
        self.check_s = check_s
        self._stamp: tuple[int, ...] | None = None
        self._next_check = 0.0
        self.grants = self._read()  # at start-up an unusable file is an error, raised

    def _stat(self) -> tuple[int, ...]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _read(self) -> list[_Grant]:
        try:
            stamp = self._stat()
            text = self.path.read_text()
        except OSError as e:
            raise TokenFileError(f"cannot read the token file {self.path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise TokenFileError(f"the token file {self.path} is not UTF-8 text") from None
        try:
            grants = parse_token_file(text)
        except TokenFileError as e:
            raise TokenFileError(f"token file {self.path}: {e}") from None
        self._stamp = stamp
        groups = sorted({g.value for grant in grants for g in grant.groups})
        log.info("token file %s: %d tokens for %s", self.path, len(grants), groups or "no API")
        return grants

    def current(self) -> list[_Grant]:
        now = time.monotonic()
        if now < self._next_check:
            return self.grants
        self._next_check = now + self.check_s
        try:
            changed = self._stat() != self._stamp
        except OSError:
            changed = True
        if changed:
            try:
                self.grants = self._read()
            except TokenFileError as e:
                log.error("%s; keeping the previous tokens", e)
        return self.grants

    def granted(self, token: str) -> frozenset[ApiGroup] | None:
        """The groups this token is granted (None: no such token). Compares against every
        token in constant time per token, whatever matches."""
        digest = hashlib.sha256(token.encode()).digest()
        found = False
        groups: frozenset[ApiGroup] = frozenset()
        for grant in self.current():
            if hmac.compare_digest(grant.digest, digest):
                found = True
                groups |= grant.groups
        return groups if found else None


# ---------------------------------------------------------------------------- the check


class Refusal(Enum):
    """Why a request is refused; each front-end maps these to its status in one table."""

    RESTRICTED = "restricted"  # Triton's header check failed: HTTP 403, gRPC UNAVAILABLE
    UNAUTHENTICATED = "unauthenticated"  # no or unknown bearer token: 401, UNAUTHENTICATED
    FORBIDDEN = "forbidden"  # a valid token not granted this group: 403, PERMISSION_DENIED


@dataclass(frozen=True, slots=True)
class Denial:
    reason: Refusal
    message: str


@dataclass
class AccessPolicy:
    """One protocol's rules: its Triton restrictions, and the shared token file (if any)
    for every group not in `open_groups`."""

    restrictions: Restrictions = field(default_factory=dict)
    tokens: TokenFile | None = None
    open_groups: frozenset[ApiGroup] = frozenset({ApiGroup.HEALTH})
    restricted_message: str = "This API is restricted, expecting header '{}'"

    @property
    def active(self) -> bool:
        return bool(self.restrictions) or self.tokens is not None

    def check(self, group: ApiGroup, headers: Mapping[str, str]) -> Denial | None:
        """`headers` by lower-case name. None: allowed."""
        rule = self.restrictions.get(group)
        if rule is not None:
            got = headers.get(rule.header)
            if got is None or not hmac.compare_digest(got.encode(), rule.value.encode()):
                return Denial(Refusal.RESTRICTED, self.restricted_message.format(rule.name))
        if self.tokens is None or group in self.open_groups:
            return None
        return self._check_token(group, headers.get("authorization"))

    def _check_token(self, group: ApiGroup, authorization: str | None) -> Denial | None:
        assert self.tokens is not None
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Denial(
                Refusal.UNAUTHENTICATED,
                f"the '{group.value}' API requires a bearer token "
                "(header 'Authorization: Bearer <token>')",
            )
        granted = self.tokens.granted(token)
        if granted is None:
            return Denial(Refusal.UNAUTHENTICATED, "the bearer token is not valid")
        if group not in granted:
            return Denial(
                Refusal.FORBIDDEN, f"the bearer token is not granted the '{group.value}' API"
            )
        return None


def grpc_policy(
    restrictions: Restrictions, tokens: TokenFile | None, open_groups: Iterable[ApiGroup]
) -> AccessPolicy:
    return AccessPolicy(
        restrictions,
        tokens,
        frozenset(open_groups),
        "This protocol is restricted, expecting header '{}'",  # Triton's gRPC wording
    )
