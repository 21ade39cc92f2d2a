"""Publishing the winner as a new version folder of the same model, and rolling it back.

Triton's backend/platform belongs to the model, not the version, so a format change rewrites
config.pbtxt; the previous file is kept as `config.pbtxt.v<served version>` and the old
version folder is never touched. Rollback deletes the new folder and restores that file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from torchtide.config import CONFIG_FILE, ModelConfig, read_config
from torchtide.repository import version_dirs

PROVENANCE = "optimize.json"  # in the new version folder: what it is and where it came from


class PublishError(RuntimeError):
    pass


def next_version(model_dir: Path) -> int:
    return max(version_dirs(model_dir), default=0) + 1


def version_policy_note(cfg: ModelConfig, new: int) -> str:
    """Make the new version the one served; say what that means for the old one."""
    vp = cfg.version_policy
    if vp.HasField("specific"):
        vp.specific.ClearField("versions")
        vp.specific.versions.append(new)
        return f"version_policy specific: now [{new}]"
    if vp.HasField("all"):
        cfg.ClearField("version_policy")
        cfg.version_policy.latest.num_versions = 1
        return (
            "version_policy all became latest 1: versions of another format cannot be "
            "served by one config"
        )
    n = vp.latest.num_versions if vp.HasField("latest") else 1
    return f"version_policy latest {n}: version {new} is the newest, so it serves"


def publish(
    model_dir: Path,
    variant_dir: Path,
    source_version: int,
    provenance: dict[str, Any],
) -> tuple[int, str]:
    """Move the variant's `1/` in as version N+1 and install its config. Returns (N+1, the
    version-policy note)."""
    built_cfg = read_config(variant_dir)
    if built_cfg is None:
        raise PublishError(f"{variant_dir}: no config")
    new = next_version(model_dir)
    note = version_policy_note(built_cfg, new)
    header = (
        f"# Written by torchtide optimize: version {new} is the '{provenance['variant']}' "
        f"variant of version {source_version}.\n"
        f"# The previous config is {CONFIG_FILE}.v{source_version}; to roll back run "
        f"'torchtide optimize --rollback {model_dir}'\n"
        f"# (it deletes {new}/ and restores that file).\n"
    )
    text = header + text_format.MessageToString(built_cfg)
    staging = model_dir / ".optimize-tmp"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(variant_dir / "1", staging)
    (staging / PROVENANCE).write_text(
        json.dumps({**provenance, "source_version": source_version, "version": new}, indent=2)
    )
    backup = model_dir / f"{CONFIG_FILE}.v{source_version}"
    shutil.copy2(model_dir / CONFIG_FILE, backup)
    tmp_cfg = model_dir / f".{CONFIG_FILE}.tmp"
    tmp_cfg.write_text(text, encoding="utf-8")
    # Back to back, so that a polling server sees the new folder and config together.
    os.replace(staging, model_dir / str(new))
    os.replace(tmp_cfg, model_dir / CONFIG_FILE)
    return new, note


def rollback(model_dir: Path) -> str:
    """Undo the newest optimize-written version: delete it and restore the config it replaced."""
    versions = [v for v in version_dirs(model_dir) if (model_dir / str(v) / PROVENANCE).is_file()]
    if not versions:
        raise PublishError(f"{model_dir}: no version written by torchtide optimize to roll back")
    newest = max(versions)
    if newest != max(version_dirs(model_dir)):
        raise PublishError(
            f"{model_dir}: version {max(version_dirs(model_dir))} is newer than the optimized "
            f"version {newest}; remove it first"
        )
    info = json.loads((model_dir / str(newest) / PROVENANCE).read_text())
    source = int(info["source_version"])
    backup = model_dir / f"{CONFIG_FILE}.v{source}"
    if not backup.is_file():
        raise PublishError(f"{backup}: missing; cannot restore the previous config")
    tmp_cfg = model_dir / f".{CONFIG_FILE}.tmp"
    shutil.copy2(backup, tmp_cfg)
    trash = model_dir / f".optimize-removed-{newest}"
    os.replace(model_dir / str(newest), trash)
    os.replace(tmp_cfg, model_dir / CONFIG_FILE)
    shutil.rmtree(trash)
    backup.unlink()
    return f"removed version {newest} ({info.get('variant')}); {CONFIG_FILE} restored"
