"""Model control from a model (``load_model``, ``unload_model``, ``is_model_ready``).

These are not available until the server registers hooks on ``model_control_hooks``.
"""

from __future__ import annotations

from collections.abc import Callable

from ._errors import TritonModelException

__all__ = ["is_model_ready", "load_model", "model_control_hooks", "unload_model"]


class _ModelControlHooks:
    """The server's implementations; each is None until the server sets it."""

    __slots__ = ("is_model_ready", "load_model", "unload_model")

    def __init__(self) -> None:
        self.load_model: Callable[[str, str, dict[str, bytes] | None], None] | None = None
        self.unload_model: Callable[[str, bool], None] | None = None
        self.is_model_ready: Callable[[str, str], bool] | None = None


model_control_hooks = _ModelControlHooks()


def _unavailable(what: str) -> TritonModelException:
    return TritonModelException(f"{what} is not available in torchtide yet")


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load (or reload) ``model_name``, optionally with a config JSON and override files."""
    hook = model_control_hooks.load_model
    if hook is None:
        raise _unavailable("load_model")
    hook(model_name, config, files)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload ``model_name`` (and its dependents if asked)."""
    hook = model_control_hooks.unload_model
    if hook is None:
        raise _unavailable("unload_model")
    hook(model_name, unload_dependents)


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether ``model_name`` (at ``model_version``, or the server's choice) is ready."""
    hook = model_control_hooks.is_model_ready
    if hook is None:
        raise _unavailable("is_model_ready")
    return bool(hook(model_name, model_version))
