"""AOTInductor packages (`model.pt2` from `torch._inductor.aoti_compile_and_package`) served by
the pytorch backend: told apart from torch.export's `model.pt2` by their contents, loaded
without compiling (Triton's platform "torch_aoti"; torchtide also batches them)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from torchtide.config import ConfigError


def is_aoti_package(path: Path) -> bool:
    """A PT2 archive holding AOTInductor's compiled model (`<archive>/data/aotinductor/`)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/data/aotinductor/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load(path: Path, device: torch.device) -> tuple[Any, int]:
    """The compiled model and its number of positional arguments."""
    from torch.utils import _pytree

    try:
        model = torch._inductor.aoti_load_package(  # type: ignore[attr-defined]
            str(path), device_index=device.index if device.index is not None else -1
        )
    except Exception as e:
        raise ConfigError(f"{path}: cannot load the AOTInductor package: {e}") from None
    built_for = str(model.get_metadata().get("AOTI_DEVICE_KEY", ""))
    if built_for and built_for != device.type:
        raise ConfigError(
            f"{path}: the AOTInductor package was compiled for {built_for}, but this instance "
            f"runs on {device.type} (compile it on the instance's device, or change "
            "instance_group kind)"
        )
    in_spec = _pytree.treespec_loads(model.loader.get_call_spec()[0])
    args, kwargs = in_spec.child(0), in_spec.child(1)
    if kwargs.num_children:
        raise ConfigError(
            f"{path}: the package takes keyword arguments ({', '.join(map(str, kwargs.context))}); "
            "torchtide passes inputs by position: export the model with positional inputs only"
        )
    return model, int(args.num_children)
