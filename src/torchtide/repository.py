"""Model repositories on disk: which models and versions exist, and how a model's config is
read, auto-completed and validated before anything loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torchtide import config as cfgmod
from torchtide.backends import get_backend
from torchtide.backends.base import Backend
from torchtide.config import ConfigError, ModelConfig
from torchtide.errors import ServerError


def version_dirs(model_dir: Path) -> list[int]:
    """Numeric version folders; names that are not numbers or start with '0' are ignored."""
    out = []
    for p in model_dir.iterdir() if model_dir.is_dir() else []:
        if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"):
            out.append(int(p.name))
    return sorted(out)


def scan(repositories: list[Path]) -> tuple[dict[str, Path], dict[str, str]]:
    """Model name -> folder, plus models that appear in more than one repository."""
    found: dict[str, list[Path]] = {}
    for repo in repositories:
        if not repo.is_dir():
            continue
        for p in sorted(repo.iterdir()):
            if p.is_dir() and not p.name.startswith("."):
                found.setdefault(p.name, []).append(p)
    models = {name: dirs[0] for name, dirs in found.items()}
    dupes = {
        name: f"model '{name}' appears in several repositories: {', '.join(map(str, dirs))}"
        for name, dirs in found.items()
        if len(dirs) > 1
    }
    return models, dupes


def select_versions(cfg: ModelConfig, available: list[int], source: str) -> list[int]:
    vp = cfg.version_policy
    if vp.HasField("all"):
        chosen = list(available)
    elif vp.HasField("specific"):
        wanted = sorted(set(vp.specific.versions))
        missing = [v for v in wanted if v not in available]
        if missing:
            raise ConfigError(
                f"{source}: version_policy.specific: version(s) {missing} have no folder "
                f"(found: {available or 'none'})"
            )
        chosen = wanted
    else:
        n = vp.latest.num_versions or 1
        chosen = available[-n:]
    if not chosen:
        raise ConfigError(f"{source}: no version folder (e.g. '1/') holds the model")
    return chosen


@dataclass(slots=True)
class Prepared:
    config: ModelConfig
    backend: Backend
    versions: list[int]
    model_files: dict[int, Path]
    # config fields auto-complete filled -> what they were read from ("the ONNX graph")
    completed: dict[str, str] = field(default_factory=dict)


def prepare(
    name: str,
    model_dir: Path,
    *,
    override: ModelConfig | None = None,
    auto_complete: bool = True,
    gpu_count: int = 0,
    cpu_count: int = 0,
) -> Prepared:
    """Read, complete and validate a model's config; raise ConfigError naming what is wrong.

    Runs off the event loop: auto-complete may import model.py or open the model file.
    """
    cfg = override if override is not None else cfgmod.read_config(model_dir)
    source = cfgmod.config_source(model_dir, override is not None, cfg is not None)
    if cfg is None:
        if not auto_complete:
            raise ConfigError(
                f"{model_dir / cfgmod.CONFIG_FILE}: not found (and auto-complete is disabled)"
            )
        cfg = cfgmod.new_config(name)
    if cfg.name and cfg.name != name:
        raise ConfigError(
            f"{source}: name: '{cfg.name}' does not match the model's folder name '{name}'"
        )
    available = version_dirs(model_dir)
    backend_name = cfgmod.resolve_backend(cfg, model_dir, available, source)
    try:
        backend = get_backend(backend_name)
    except ServerError as e:
        raise ConfigError(f"{source}: backend: {e.message}") from None
    cfgmod.complete_defaults(cfg, name, backend_name, gpu_count, cpu_count)
    versions = select_versions(cfg, available, source)
    files = {v: model_dir / str(v) / cfg.default_model_filename for v in versions}
    for v, f in files.items():
        if not f.exists():
            pt2 = f.with_suffix(".pt2")
            if backend_name == "pytorch" and f.name == "model.pt" and pt2.exists():
                files[v] = pt2
                continue
            raise ConfigError(
                f"{source}: default_model_filename: model file '{v}/{f.name}' not found"
            )
    completed: dict[str, str] = {}
    if auto_complete:
        max_batch_size = cfg.max_batch_size
        try:
            backend.auto_complete(cfg, files[versions[-1]], model_dir)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(
                f"{files[versions[-1]]}: cannot read the model to complete its config: "
                f"{type(e).__name__}: {e}"
            ) from None
        if cfg.max_batch_size != max_batch_size:
            completed["max_batch_size"] = backend.completes_from
        cfgmod.complete_defaults(cfg, name, backend_name, gpu_count, cpu_count)
    cfgmod.validate(cfg, source, gpu_count, model_dir)
    return Prepared(cfg, backend, versions, files, completed)
