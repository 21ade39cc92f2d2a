"""Putting a candidate config in service on a live server, and taking it back out.

Explicit mode: the repository API's load with a `config` override (tritonclient's
`load_model(config=...)`); it returns once the model serves it, and a failed load leaves the
old config serving. Poll mode: write config.pbtxt and wait until the server's config endpoint
shows the candidate. Either way the original is put back at the end."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from torchtide.bench.httpclient import HttpConnection, build_request, error_text, model_path
from torchtide.bench.transport import TransportError, Unreachable
from torchtide.config import ModelConfig
from torchtide.tune import configedit as ce
from torchtide.tune.space import Point

POLL_INTERVAL_S = 0.25


class ApplyError(Exception):
    """The server did not take a candidate config (its load failed); the old one serves."""


class ControlRefused(ApplyError):
    """The server refuses explicit loads (it is in 'none' or 'poll' model control mode)."""


@dataclass(slots=True)
class Control:
    """The few V2 HTTP calls tune needs besides inference."""

    host: str
    port: int
    timeout: float = 30.0

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def call(
        self, method: str, path: str, doc: Any = None, timeout: float | None = None
    ) -> tuple[int, bytes]:
        body = b"" if doc is None else orjson.dumps(doc)
        headers = {"Content-Type": "application/json", "Connection": "close"}
        conn = HttpConnection(self.host, self.port, self.timeout)
        try:
            resp = await asyncio.wait_for(
                conn.send(build_request(method, path, self.authority, body, headers)),
                timeout or self.timeout,
            )
        except TimeoutError:
            raise TransportError(
                f"{method} {path}: no answer in {timeout or self.timeout:g} s"
            ) from None
        except OSError as e:
            raise Unreachable(f"cannot reach {self.authority}: {type(e).__name__}: {e}") from None
        finally:
            conn.close()
        return resp.status, resp.body

    async def config(self, model: str) -> ModelConfig:
        status, body = await self.call("GET", model_path(model, "") + "/config")
        if status != 200:
            raise TransportError(f"config of '{model}': HTTP {status}: {error_text(body)}")
        doc = orjson.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("config"), dict):
            doc = doc["config"]  # some servers wrap it
        return ce.from_json(doc)

    async def ready(self, model: str) -> bool:
        status, _ = await self.call("GET", model_path(model, "") + "/ready")
        return status == 200

    async def load(self, model: str, config_json: str | None, timeout: float) -> None:
        doc = {"parameters": {"config": config_json}} if config_json is not None else {}
        path = f"/v2/repository/models/{quote(model, safe='')}/load"
        status, body = await self.call("POST", path, doc, timeout)
        if status == 200:
            return
        msg = error_text(body)
        if status == 503 or "not allowed" in msg:
            raise ControlRefused(msg)
        raise ApplyError(msg)


class Applier(Protocol):
    @property
    def mode(self) -> str:
        """'explicit' or 'poll': how candidates reach the server."""
        ...

    async def apply(self, point: Point) -> None:
        """Serve the point's config; raise ApplyError when the server does not take it."""
        ...

    async def restore(self, final: Point | None, header: list[str]) -> None:
        """Serve `final` (--apply; a written file starts with `header`) or the config served
        before tune began."""
        ...


@dataclass
class Setup:
    """What every applier needs to write a candidate."""

    model: str
    served: ModelConfig  # the config the server served before tune began
    key: str | None  # thread parameter
    kind: int  # instance kind to write
    cores: int
    timeout: float  # per load / per poll pickup


class ExplicitApplier:
    mode = "explicit"

    def __init__(self, control: Control, setup: Setup) -> None:
        self.control, self.setup = control, setup

    async def apply(self, point: Point) -> None:
        s = self.setup
        cfg = ce.apply_point(s.served, point, s.key, s.kind)
        await self.control.load(s.model, ce.to_json(cfg), s.timeout)

    async def restore(self, final: Point | None, header: list[str]) -> None:
        """Back to the original config (or the winner), as an override: the server keeps it
        until the model is unloaded, as for any override; unload and load to drop it."""
        s = self.setup
        cfg = s.served if final is None else ce.apply_point(s.served, final, s.key, s.kind)
        await self.control.load(s.model, ce.to_json(cfg), s.timeout)


class PollApplier:
    """Writes each candidate into config.pbtxt and waits for the server's poll to load it.
    The original file is put back at the end (and on Ctrl-C or a failure)."""

    mode = "poll"

    def __init__(self, control: Control, setup: Setup, model_dir: Path, base: ModelConfig) -> None:
        self.control, self.setup = control, setup
        self.path = model_dir / "config.pbtxt"
        self.original = self.path.read_bytes() if self.path.is_file() else None
        self.base = base  # the file's own config: what candidates are written over

    async def apply(self, point: Point) -> None:
        s = self.setup
        cfg = ce.apply_point(self.base, point, s.key, s.kind)
        _write_atomic(self.path, ce.render(cfg).encode())
        await self._wait(lambda served: ce.serves(served, point, s.key, s.cores), point.label)

    async def restore(self, final: Point | None, header: list[str]) -> None:
        s = self.setup
        if final is not None:
            cfg = ce.apply_point(self.base, final, s.key, s.kind)
            _write_atomic(self.path, ce.tuned_text(cfg, header).encode())
            await self._wait(lambda served: ce.serves(served, final, s.key, s.cores), final.label)
            return
        if self.original is None:
            self.path.unlink(missing_ok=True)
        else:
            _write_atomic(self.path, self.original)
        before = ce.observed_point(s.served, s.key, s.cores)
        await self._wait(lambda served: ce.serves(served, before, s.key, s.cores), "the original")

    async def _wait(self, done: Any, label: str) -> None:
        deadline = time.monotonic() + self.setup.timeout
        while time.monotonic() < deadline:
            try:
                if done(await self.control.config(self.setup.model)) and await self.control.ready(
                    self.setup.model
                ):
                    return
            except TransportError:
                pass  # between versions: try again
            await asyncio.sleep(POLL_INTERVAL_S)
        raise ApplyError(
            f"the server did not serve {label} within {self.setup.timeout:g} s of writing "
            f"{self.path} (its load failed, or the server does not poll the repository)"
        )


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AutoApplier:
    """Explicit loads when the server takes them, else config.pbtxt and the server's poll."""

    def __init__(self, explicit: ExplicitApplier, poll: PollApplier | None, note: Any) -> None:
        self.explicit, self.poll = explicit, poll
        self.current: ExplicitApplier | PollApplier = explicit
        self.note = note  # called with one line when tune falls back to poll mode

    @property
    def mode(self) -> str:
        return self.current.mode

    async def apply(self, point: Point) -> None:
        try:
            await self.current.apply(point)
        except ControlRefused as e:
            if self.current is not self.explicit or self.poll is None or "'none'" in str(e):
                raise
            self.note(
                f"explicit load refused ({e}): writing config.pbtxt and waiting for the "
                "server's repository poll"
            )
            self.current = self.poll
            await self.current.apply(point)

    async def restore(self, final: Point | None, header: list[str]) -> None:
        await self.current.restore(final, header)
