"""Reading a model config's tunable values and writing a candidate into it: instance groups,
the backend's thread parameter, max_batch_size and the dynamic batcher. Instance kinds are
decided once: KIND_GPU only when the server already runs the model on GPUs and the host is
not known to have none (Model Analyzer writes KIND_GPU on CPU-only hosts; we never do)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from torchtide.config import PLATFORM_BACKEND, THREAD_PARAMS, ModelConfig, to_json_dict
from torchtide.tune.space import Dim, Point

# The parameter that sets a backend's intra-op threads per instance. Python models have none
# of their own; NUM_THREADS is the convention of torchtide's examples (the model applies it).
THREAD_KEYS = {**THREAD_PARAMS, "python": "NUM_THREADS"}
KIND_CPU = mc.ModelInstanceGroup.KIND_CPU
KIND_GPU = mc.ModelInstanceGroup.KIND_GPU
LOCAL_HOSTS = frozenset(("localhost", "127.0.0.1", "::1", "0.0.0.0", "::"))


class TuneConfigError(Exception):
    """A config tune cannot work with, or a candidate it refuses to write."""


def from_json(doc: dict[str, Any]) -> ModelConfig:
    """A config as the server's config endpoint returns it (fields a newer server knows and
    this client does not are skipped)."""
    cfg = mc.ModelConfig()
    try:
        json_format.ParseDict(doc, cfg, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise TuneConfigError(f"the server's config does not parse: {e}") from None
    return cfg


def backend_of(cfg: ModelConfig) -> str:
    return str(cfg.backend or PLATFORM_BACKEND.get(cfg.platform, ""))


def thread_key(cfg: ModelConfig) -> str | None:
    """The parameter tune writes for threads per instance, or None (not tunable)."""
    backend = backend_of(cfg)
    key = THREAD_KEYS.get(backend)
    if key is None:
        return None
    if key not in cfg.parameters and "NUM_THREADS" in cfg.parameters:
        return "NUM_THREADS"  # onnxruntime and openvino read it too: keep the user's spelling
    return key


def current_values(cfg: ModelConfig, key: str | None, cores: int) -> dict[Dim, int]:
    """The config's values of each dimension (the server's defaults, once it completed them)."""
    instances = sum(max(1, g.count) for g in cfg.instance_group) or 1
    values = {Dim.INSTANCES: instances}
    if key is not None:
        text = cfg.parameters[key].string_value if key in cfg.parameters else ""
        values[Dim.THREADS] = int(text) if text.strip().isdigit() else max(1, cores // instances)
    if cfg.max_batch_size > 0:
        db = cfg.dynamic_batching
        pref = list(db.preferred_batch_size)
        values[Dim.MAX_BATCH] = int(cfg.max_batch_size)
        values[Dim.PREFERRED] = 0 if not pref or pref == [cfg.max_batch_size] else int(pref[0])
        values[Dim.DELAY] = int(db.max_queue_delay_microseconds)
    return values


def observed_point(cfg: ModelConfig, key: str | None, cores: int) -> Point:
    v = current_values(cfg, key, cores)
    return Point(
        instances=v[Dim.INSTANCES],
        threads=v.get(Dim.THREADS),
        max_batch=v.get(Dim.MAX_BATCH),
        preferred=v.get(Dim.PREFERRED),
        delay_us=v.get(Dim.DELAY),
    )


def serves(cfg: ModelConfig, point: Point, key: str | None, cores: int) -> bool:
    """Whether a served config carries the point (what poll mode waits for)."""
    seen = observed_point(cfg, key, cores)
    return all(point.get(d) is None or point.get(d) == seen.get(d) for d in Dim)


def has_local_gpu() -> bool:
    """A cheap check for an NVIDIA GPU on this host, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def instance_kind(served: ModelConfig, host: str) -> int:
    """KIND_GPU only when the server already runs this model on a GPU (it resolved KIND_AUTO
    itself) and, for a server on this host, this host has one; KIND_CPU otherwise."""
    on_gpu = any(g.kind == KIND_GPU for g in served.instance_group)
    if on_gpu and host in LOCAL_HOSTS and not has_local_gpu():
        return int(KIND_CPU)
    return int(KIND_GPU if on_gpu else KIND_CPU)


def apply_point(cfg: ModelConfig, point: Point, key: str | None, kind: int) -> ModelConfig:
    """A copy of `cfg` with the point's values; everything else is kept."""
    out = mc.ModelConfig()
    out.CopyFrom(cfg)
    group = mc.ModelInstanceGroup()
    if cfg.instance_group:
        group.CopyFrom(cfg.instance_group[0])  # name, rate limiter, host policy stay
    del out.instance_group[:]
    group.count = point.instances
    group.kind = kind
    if kind != KIND_GPU:
        del group.gpus[:]
    out.instance_group.append(group)
    if point.threads is not None and key is not None:
        out.parameters[key].string_value = str(point.threads)
    if point.max_batch is not None:
        out.max_batch_size = point.max_batch
        db = out.dynamic_batching
        del db.preferred_batch_size[:]
        if point.preferred:
            db.preferred_batch_size.append(point.preferred)
        db.max_queue_delay_microseconds = point.delay_us or 0
    check_kinds(out, kind == KIND_GPU)
    return out


def check_kinds(cfg: ModelConfig, gpu_ok: bool) -> None:
    """The last guard before a config leaves tune: no KIND_GPU without a GPU, no KIND_AUTO
    (which some servers resolve to KIND_GPU)."""
    for g in cfg.instance_group:
        if g.kind == KIND_GPU and not gpu_ok:
            raise TuneConfigError("refusing to write KIND_GPU: the server has no GPU for it")
        if g.kind == mc.ModelInstanceGroup.KIND_AUTO:
            raise TuneConfigError("refusing to write KIND_AUTO: tune writes an explicit kind")


def to_json(cfg: ModelConfig) -> str:
    import orjson

    return orjson.dumps(to_json_dict(cfg)).decode()


def render(cfg: ModelConfig) -> str:
    return str(text_format.MessageToString(cfg))


def tuned_text(cfg: ModelConfig, header: list[str]) -> str:
    return "".join(f"# {line}\n" for line in header) + render(cfg)


def config_diff(before: ModelConfig, after: ModelConfig, name: str) -> str:
    """A unified diff of the two configs in one canonical spelling (so it shows only what
    tune changed; comments and layout of the original file are not part of it)."""
    return "".join(
        difflib.unified_diff(
            render(before).splitlines(keepends=True),
            render(after).splitlines(keepends=True),
            fromfile=f"{name}/config.pbtxt",
            tofile=f"{name}/config.tuned.pbtxt",
        )
    )
