"""InferenceServer: the one facade the front-ends call. Works in-process with no network."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from torchtide import __version__
from torchtide import config as cfgmod
from torchtide.backends.base import LoadContext
from torchtide.config import ConfigError, ModelConfig
from torchtide.cuda_ipc import load_cuda_runtime
from torchtide.errors import ServerError, Status, invalid_arg, not_found, unavailable
from torchtide.instances import InstanceRunner, instance_infos
from torchtide.logsettings import LogSettings
from torchtide.profiling import Profiler, ProfileReport, profile_parameters
from torchtide.repository import Prepared, prepare, scan, version_dirs
from torchtide.repository_remote import RemoteRepositories
from torchtide.served import ServedVersion
from torchtide.shm import SharedMemoryRegistry
from torchtide.tracing import Changes, SettingsView, TraceOptions, Tracer
from torchtide.types import InferRequest, InferResponse, InferTensor, RequestedOutput
from torchtide.warmup import warm_up

log = logging.getLogger("torchtide.server")

EXTENSIONS = [
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
]

MAX_MODEL_NAME_BYTES = 255  # NAME_MAX: a model is one folder of a repository


class ModelState(Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ServerOptions:
    repositories: list[Path]
    control_mode: str = "none"  # none | poll | explicit
    startup_models: list[str] = field(default_factory=list)  # explicit mode; "*" = all
    strict_readiness: bool = True
    auto_complete: bool = True
    exit_timeout_s: float = 30.0
    poll_secs: float = 15.0
    gpu_count: int = -1  # -1: detect
    cpu_count: int = 0  # 0: detect (os.cpu_count)
    latency_histograms: bool = True  # beyond Triton: per-stage latency histograms (metrics)
    server_name: str = "triton"  # metadata "name": clients and Triton's examples check it
    remote_repositories: list[str] = field(default_factory=list)  # s3://, gs://, as:// URLs
    model_cache_dir: Path | None = None  # where remote repositories are mirrored (None: default)
    trace: TraceOptions = field(default_factory=TraceOptions)  # --trace-config
    allow_profiling: bool = False  # ours: `torchtide profile` (POST /v2/models/{m}/profile)


@dataclass
class ModelRecord:
    """Everything the server knows about one model name."""

    name: str
    model_dir: Path | None
    served: dict[int, ServedVersion] = field(default_factory=dict)
    states: dict[int, tuple[ModelState, str]] = field(default_factory=dict)
    error: str = ""  # the last load failure, kept even while an older version serves
    config: ModelConfig | None = None
    override: ModelConfig | None = None
    load_seconds: float = 0.0
    fingerprint: tuple[Any, ...] = ()  # the files as they were when the last load began


def detect_gpus() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


class InferenceServer:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.gpu_count = detect_gpus() if options.gpu_count < 0 else options.gpu_count
        self.models: dict[str, ModelRecord] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._started = False
        self._stopping = False
        self._startup_done = False
        self._poll_task: asyncio.Task[None] | None = None
        # Client-registered shared memory; CUDA regions only when torch sees a GPU.
        self.shm = SharedMemoryRegistry(load_cuda_runtime() if self.gpu_count > 0 else None)
        self.log_settings = LogSettings()
        self.tracer = Tracer(options.trace)
        self.remotes = RemoteRepositories(options.remote_repositories, options.model_cache_dir)
        self.profiler = Profiler(options.allow_profiling)

    def _repository_paths(self) -> list[Path]:
        """The folders to scan: local repositories, then the mirrors of remote ones."""
        return [*self.options.repositories, *self.remotes.paths()]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the start-up models (all of them unless control mode is explicit)."""
        self._started = True
        if self.remotes:
            await asyncio.to_thread(self.remotes.sync)
        names, dupes = scan(self._repository_paths())
        for name, reason in dupes.items():
            self.models[name] = ModelRecord(name, None, error=reason)
            log.error("failed to load '%s': %s", name, reason)
        if self.options.control_mode == "explicit":
            wanted = self.options.startup_models
            targets = sorted(names) if "*" in wanted else list(dict.fromkeys(wanted))
        else:
            targets = sorted(names)
        await asyncio.gather(
            *(self._load_quietly(n) for n in targets if n not in dupes), return_exceptions=False
        )
        self._startup_done = True
        if self.options.control_mode == "poll":
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.options.poll_secs)
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Apply what changed on disk: new models load, removed ones unload, changed ones reload
        (beside the old version, which keeps serving if the new one is broken)."""
        if self.remotes:
            await asyncio.to_thread(self.remotes.sync)
        names, dupes = await asyncio.to_thread(scan, self._repository_paths())
        prints = await asyncio.to_thread(lambda: {n: fingerprint(d) for n, d in names.items()})
        for name in [n for n in self.models if n not in names]:
            await self.unload_model(name)  # its folder is gone: drain, release, forget
            self.models.pop(name, None)
        for name in sorted(names):
            if name in dupes:
                continue
            known = self.models.get(name)
            if known is None or known.fingerprint != prints[name]:
                await self._load_quietly(name)

    async def _load_quietly(self, name: str) -> None:
        with contextlib.suppress(ServerError):  # logged once where it failed (_load_locked)
            await self.load_model(name)

    async def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting, drain in-flight work within `timeout`, then unload everything.
        True when all in-flight requests finished."""
        self._stopping = True
        self.profiler.stop()
        if self._poll_task is not None:
            self._poll_task.cancel()
        timeout = self.options.exit_timeout_s if timeout is None else timeout
        versions = [v for r in self.models.values() for v in r.served.values()]
        results = await asyncio.gather(*(v.scheduler.drain(timeout) for v in versions))
        await asyncio.gather(*(v.scheduler.close() for v in versions))
        for r in self.models.values():
            r.served.clear()
            r.states = {v: (ModelState.UNAVAILABLE, "server stopped") for v in r.states}
        self.shm.close()
        await asyncio.to_thread(self.tracer.close)
        return all(results)

    # ------------------------------------------------------------------ health and metadata

    def is_live(self) -> bool:
        return not self._stopping

    def is_ready(self) -> bool:
        if self._stopping or not self._startup_done:
            return False
        if not self.options.strict_readiness:
            return True
        if not self.remotes.ready():
            return False  # a remote repository that never answered: its models are missing
        # Ready when every model that should serve serves at least one version: a broken new
        # version beside a serving one does not make the whole server unready (unlike Triton).
        # A model still loading counts only while it serves nothing: a version switch keeps the
        # old version serving, so the server stays ready through it.
        for r in self.models.values():
            loading = any(s is ModelState.LOADING for s, _ in r.states.values())
            if not r.served and (loading or r.error):
                return False
            if any(not sv.scheduler.alive for sv in r.served.values()):
                return False  # every instance of a version has died
        return True

    def metadata(self) -> dict[str, Any]:
        extensions = list(EXTENSIONS)
        if self.shm.cuda is not None:
            extensions.insert(extensions.index("system_shared_memory") + 1, "cuda_shared_memory")
        return {"name": self.options.server_name, "version": __version__, "extensions": extensions}

    def resolve(self, name: str, version: str = "") -> ServedVersion:
        record = self.models.get(name)
        if record is None:
            check_model_name(name)  # only well-formed names ever get a record
            raise not_found(f"Request for unknown model: '{name}' is not found")
        if not version:
            if not record.served:
                raise not_found(f"Request for unknown model: '{name}' has no available versions")
            return record.served[max(record.served)]
        v = parse_version(version)
        served = record.served.get(v)
        if served is None:
            if not record.served:
                raise not_found(f"Request for unknown model: '{name}' has no available versions")
            raise not_found(f"Request for unknown model: '{name}' version {v} is not found")
        return served

    def model_ready(self, name: str, version: str = "") -> bool:
        """False for a model or version that is not served; a malformed name or version is an
        error (INVALID_ARG), as Triton answers over gRPC."""
        check_model_name(name)
        if version:
            parse_version(version)
        try:
            sv = self.resolve(name, version)
        except ServerError:
            return False
        return not self._stopping and sv.scheduler.alive

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        sv = self.resolve(name, version)
        record = self.models[name]
        batch = [-1] if sv.spec.max_batch_size > 0 else []
        versions = [str(v) for v in sorted(record.served)] if not version else [sv.version_str]

        def tensors(specs: Mapping[str, cfgmod.TensorSpec]) -> list[dict[str, Any]]:
            return [
                {"name": s.name, "datatype": s.datatype, "shape": [*batch, *s.dims]}
                for s in specs.values()
            ]

        return {
            "name": name,
            "versions": versions,
            "platform": sv.config.platform or sv.spec.platform,  # as Triton: config's, else backend
            "inputs": tensors(sv.spec.inputs),
            "outputs": tensors(sv.spec.outputs),
        }

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.resolve(name, version).config

    # ------------------------------------------------------------------ inference

    async def infer(self, request: InferRequest) -> InferResponse:
        if self._stopping:
            raise unavailable("server is shutting down; not accepting new requests")
        return await self.resolve(request.model_name, request.model_version).infer(request)

    async def infer_numpy(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: str = "",
        outputs: list[str] | None = None,
        request_id: str = "",
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Convenience for in-process use: numpy in, {output name: numpy} out."""
        req = InferRequest(
            model_name=model,
            inputs=[InferTensor.of(n, a) for n, a in inputs.items()],
            model_version=version,
            id=request_id,
            outputs=None if outputs is None else [RequestedOutput(o) for o in outputs],
            parameters=parameters or {},
        )
        resp = await self.infer(req)
        return {t.name: t.data for t in resp.outputs}

    # ------------------------------------------------------------------ trace settings

    def trace_settings(self, model: str = "", changes: Changes | None = None) -> SettingsView:
        """Triton's trace extension: the settings of the server or of one model, after applying
        `changes` when given (None clears a model's own value)."""
        if model and not self.model_ready(model):
            raise invalid_arg(f"Request for unknown model : {model}")
        if changes:
            return self.tracer.update(model, changes)
        return self.tracer.settings(model)

    async def profile_with_parameters(
        self, name: str, version: str, parameters: Mapping[str, object]
    ) -> ProfileReport:
        """Ours: profile the model's next executions ('executions', 'timeout' in seconds) while
        it keeps serving; see profiling.py. Off unless ServerOptions.allow_profiling."""
        self.profiler.check()
        executions, timeout_s = profile_parameters(parameters)
        sv = self.resolve(name, version)
        return await self.profiler.run(
            name, sv.version_str, sv.scheduler.instances, executions, timeout_s
        )

    # ------------------------------------------------------------------ statistics

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        if not name:
            return [
                sv.stats.as_dict(n, sv.version_str)
                for n, r in sorted(self.models.items())
                for _, sv in sorted(r.served.items())
            ]
        check_model_name(name)
        record = self.models.get(name)
        if record is None or not record.served:
            raise invalid_arg(f"requested model '{name}' is not available")
        if version:
            sv = record.served.get(parse_version(version))
            if sv is None:
                raise invalid_arg(f"requested model version is not available for model '{name}'")
            return [sv.stats.as_dict(name, sv.version_str)]
        return [sv.stats.as_dict(name, sv.version_str) for _, sv in sorted(record.served.items())]

    # ------------------------------------------------------------------ repository

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        names, _ = scan(self._repository_paths())
        entries: list[dict[str, Any]] = []
        for name in sorted(set(names) | set(self.models)):
            record = self.models.get(name)
            if record is None or (not record.states and not record.error):
                if not ready_only:
                    entries.append({"name": name})
                continue
            if record.states:
                for v, (state, reason) in sorted(record.states.items()):
                    sv = record.served.get(v)
                    if sv is not None and sv.scheduler.dead:
                        reason = "; ".join(sv.scheduler.dead.values())
                        if not sv.scheduler.alive:
                            state = ModelState.UNAVAILABLE
                    if ready_only and state is not ModelState.READY:
                        continue
                    e: dict[str, Any] = {"name": name, "version": str(v), "state": state.value}
                    if reason:
                        e["reason"] = reason
                    elif record.error and state is ModelState.READY:
                        e["reason"] = f"serving; a newer load failed: {record.error}"
                    entries.append(e)
            elif not ready_only:
                versions = version_dirs(record.model_dir) if record.model_dir else []
                for v in versions or [0]:
                    entries.append(
                        {
                            "name": name,
                            "version": str(v) if v else "",
                            "state": ModelState.UNAVAILABLE.value,
                            "reason": record.error,
                        }
                    )
        return entries

    def _check_control(self) -> None:
        if self.options.control_mode == "none":
            raise unavailable(
                "explicit model load / unload is not allowed when --model-control-mode is 'none'"
            )

    async def load_with_parameters(self, name: str, parameters: Mapping[str, object]) -> None:
        """The repository API's load as a request carries it, for every front-end: 'config'
        (a string: the configuration as JSON) and 'file:<path>' (bytes); any other key, or a
        value of another type, is INVALID_ARG (Triton's gRPC answer)."""
        config, files = load_parameters(parameters)
        await self.load(name, config, files or None)

    async def unload_with_parameters(self, name: str, parameters: Mapping[str, object]) -> None:
        """The repository API's unload as a request carries it: 'unload_dependents' must be a
        bool when present; other keys are ignored (as Triton does on both protocols)."""
        dependents = parameters.get("unload_dependents", False)
        if not isinstance(dependents, bool):
            raise invalid_arg(
                "invalid value type for 'unload_dependents' parameter, expected a bool"
            )
        await self.unload(name, dependents)

    async def load(
        self, name: str, config_json: str | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        """The repository API's load (explicit mode): optional config override and files."""
        check_model_name(name)  # before any file is written under the name
        self._check_control()
        override = None
        if config_json:
            try:
                override = cfgmod.parse_json(config_json, f"load request for '{name}': config")
            except ConfigError as e:
                raise invalid_arg(str(e)) from None
        if self.remotes:
            await asyncio.to_thread(self.remotes.sync, name)
        if files:
            self._write_files(name, files)
        await self.load_model(name, override=override)

    def _write_files(self, name: str, files: dict[str, bytes]) -> None:
        paths = self._repository_paths()
        if not paths:
            raise unavailable("no model repository is available to write the files into")
        names, _ = scan(paths)
        model_dir = names.get(name) or (paths[0] / name)
        for rel, content in files.items():
            target = (model_dir / rel).resolve()
            if model_dir.resolve() not in target.parents:
                raise invalid_arg(f"file override '{rel}' escapes the model folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        check_model_name(name)
        self._check_control()
        await self.unload_model(name)

    async def load_model(self, name: str, *, override: ModelConfig | None = None) -> None:
        """Load or reload a model. A reload loads the new versions beside the old ones and
        switches when they are ready; if it fails, the old versions keep serving. An override
        lasts until the model is unloaded (a plain reload keeps it, as in Triton)."""
        check_model_name(name)
        lock = self._load_locks.setdefault(name, asyncio.Lock())
        async with lock:
            await self._load_locked(name, override)

    async def _load_locked(self, name: str, override: ModelConfig | None) -> None:
        names, dupes = scan(self._repository_paths())
        if name in dupes:
            log.error("failed to load '%s': %s", name, dupes[name])
            raise invalid_arg(dupes[name])
        model_dir = names.get(name)
        if model_dir is None:
            log.error("failed to load '%s': no such model in the model repository", name)
            raise ServerError(
                Status.INTERNAL,
                f"failed to load '{name}', no such model in the model repository"
                + "".join(f"; {e}" for e in self.remotes.errors()),
            )
        record = self.models.get(name)
        if record is None:
            record = self.models[name] = ModelRecord(name, model_dir)
        record.model_dir = model_dir
        record.fingerprint = await asyncio.to_thread(fingerprint, model_dir)
        # the override this load applies; it becomes the model's only if the load succeeds
        override = record.override if override is None else override
        started = time.perf_counter()
        for v in version_dirs(model_dir):
            if v not in record.served:
                record.states[v] = (ModelState.LOADING, "")
        try:
            prepared = await asyncio.to_thread(
                prepare,
                name,
                model_dir,
                override=_copy(override),
                auto_complete=self.options.auto_complete,
                gpu_count=self.gpu_count,
                cpu_count=self.options.cpu_count,
            )
            for v in prepared.versions:
                log.info("%s: %s:%d", "reloading" if v in record.served else "loading", name, v)
            new = await self._instantiate(name, model_dir, prepared)
        except (ConfigError, ServerError) as e:
            msg = e.message if isinstance(e, ServerError) else str(e)
            self._mark_failed(record, msg)
            raise ServerError(Status.INVALID_ARG, f"failed to load '{name}': {msg}") from None
        old = record.served
        record.served = new
        record.config = prepared.config
        record.override = override
        record.error = ""
        record.load_seconds = time.perf_counter() - started
        record.states = {v: (ModelState.READY, "") for v in new}
        for v in new:
            log.info("successfully loaded '%s' version %d: READY", name, v)
        for v in version_dirs(model_dir):
            if v not in new:
                record.states.setdefault(
                    v, (ModelState.UNAVAILABLE, "not selected by version_policy")
                )
        if old:
            asyncio.get_running_loop().create_task(self._retire(list(old.values())))

    def _mark_failed(self, record: ModelRecord, msg: str) -> None:
        record.error = msg
        failed = []
        for v, (state, _) in list(record.states.items()):
            if state is ModelState.LOADING:
                if v in record.served:
                    record.states[v] = (ModelState.READY, "")
                else:
                    record.states[v] = (ModelState.UNAVAILABLE, msg)
                    failed.append(v)
        for v in failed:
            log.error("failed to load '%s' version %d: UNAVAILABLE: %s", record.name, v, msg)
        if not failed:
            log.error("failed to load '%s': %s", record.name, msg)
        if record.served:
            log.warning(
                "'%s' version(s) %s keep serving",
                record.name,
                ", ".join(map(str, sorted(record.served))),
            )

    async def _instantiate(
        self, name: str, model_dir: Path, prepared: Prepared
    ) -> dict[int, ServedVersion]:
        built: dict[int, ServedVersion] = {}
        runners: list[InstanceRunner] = []
        try:
            for v in prepared.versions:
                spec = cfgmod.ModelSpec.of(prepared.config)
                version_runners = [InstanceRunner(info) for info in instance_infos(prepared.config)]
                runners.extend(version_runners)
                # Every load settles before a failure is raised, so the cleanup below finalizes
                # the instances that did load and no thread answers a loop that has gone.
                loaded = await asyncio.gather(
                    *(
                        r.load(
                            prepared.backend,
                            LoadContext(
                                prepared.config, spec, model_dir, v, prepared.model_files[v], r.info
                            ),
                        )
                        for r in version_runners
                    ),
                    return_exceptions=True,
                )
                for outcome in loaded:
                    if isinstance(outcome, BaseException):
                        raise outcome
                if prepared.config.model_warmup:
                    await warm_up(prepared.config, version_runners, model_dir)
                built[v] = ServedVersion(
                    prepared.config,
                    v,
                    version_runners,
                    model_dir,
                    histograms=self.options.latency_histograms,
                    completed=prepared.completed,
                )
        except BaseException:
            await asyncio.gather(*(r.close() for r in runners), return_exceptions=True)
            raise
        for sv in built.values():
            sv.start()
        return built

    async def _retire(self, versions: list[ServedVersion]) -> None:
        """Let replaced versions finish their in-flight work, then release them."""
        await asyncio.gather(*(v.scheduler.drain() for v in versions))
        await asyncio.gather(*(v.scheduler.close() for v in versions))

    async def unload_model(self, name: str) -> None:
        """Unload every version; a config override ends here (the next load reads the
        repository's config.pbtxt again, as in Triton)."""
        check_model_name(name)
        lock = self._load_locks.setdefault(name, asyncio.Lock())
        async with lock:
            record = self.models.get(name)
            if record is not None:
                record.override = None
            if record is None or not record.served:
                return
            old = list(record.served.values())
            record.served = {}
            record.states = {v.version: (ModelState.UNLOADING, "") for v in old}
            for sv in old:
                log.info("unloading: %s:%d", name, sv.version)
            await self._retire(old)
            record.states = {v.version: (ModelState.UNAVAILABLE, "unloaded") for v in old}
            for sv in old:
                log.info("successfully unloaded '%s' version %d", name, sv.version)


def fingerprint(model_dir: Path) -> tuple[Any, ...]:
    """What poll mode compares: every file's path, size and mtime (bytecode caches excluded)."""
    items = []
    for p in sorted(model_dir.rglob("*")):
        if "__pycache__" in p.parts or not p.is_file():
            continue
        st = p.stat()
        items.append((str(p.relative_to(model_dir)), st.st_size, st.st_mtime_ns))
    return tuple(items)


_VERSION = re.compile(r"-?[0-9]{1,19}")  # what fits an int64, as Triton's std::stol reads it
_INT64 = range(-(2**63), 2**63)


def parse_version(version: str) -> int:
    """A requested version, as Triton reads one: "0" is well formed (and never served, so not
    found); a negative number or anything that is not an integer is INVALID_ARG, in Triton's
    words. Stricter than std::stol: no sign, space or trailing characters around the digits."""
    if _VERSION.fullmatch(version) is None or int(version) not in _INT64:
        raise invalid_arg(
            f"failed to get model version from specified version string '{version}' "
            "(details: stol), version should be an integral value > 0"
        )
    v = int(version)
    if v < 0:
        raise invalid_arg(
            f"invalid model version specified '{version}' , version should be an integral value > 0"
        )
    return v


def load_parameters(parameters: Mapping[str, object]) -> tuple[str | None, dict[str, bytes]]:
    """A load request's parameters -> (config JSON or None, {path in the model: content})."""
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        if key == "config":
            if not isinstance(value, str):
                raise invalid_arg(
                    "invalid value type for load parameter 'config', expected a string "
                    "(the model configuration as JSON)"
                )
            config = value
        elif key.startswith("file:"):
            if not isinstance(value, bytes):
                raise invalid_arg(
                    f"invalid value type for load parameter '{key}', expected the file's bytes"
                )
            files[key[len("file:") :]] = value
        else:
            raise invalid_arg(
                f"unrecognized load parameter '{key}'; expected 'config' or 'file:<path>'"
            )
    return config, files


def check_model_name(name: str) -> None:
    """A model name names one folder of a repository: not empty, '.' or '..', no '/', '\\'
    or NUL, at most MAX_MODEL_NAME_BYTES. Every call that takes a name checks it here first,
    before a lookup or a file is touched; a malformed name is INVALID_ARG."""
    reason = ""
    if name in ("", ".", ".."):
        reason = "a model name must name one folder of the repository"
    elif "/" in name or "\\" in name:
        reason = "a model name must not contain '/' or '\\'"
    elif "\x00" in name:
        reason = "a model name must not contain a NUL character"
    elif len(name.encode()) > MAX_MODEL_NAME_BYTES:
        reason = f"a model name must be at most {MAX_MODEL_NAME_BYTES} bytes"
    if reason:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise invalid_arg(f"invalid model name '{shown}': {reason}")


def _copy(cfg: ModelConfig | None) -> ModelConfig | None:
    if cfg is None:
        return None
    out = type(cfg)()
    out.CopyFrom(cfg)
    return out
