"""pyproject.toml's dependencies: compatible ranges for installing beside other code, the exact
versions in constraints.txt, and metadata that setuptools builds without deprecation warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("torchtide[")]
    return reqs


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: '{line}' is not an exact pin"
            pins[Requirement(name).name.lower().replace("_", "-")] = version
    return pins


def test_dependencies_are_ranges_pinned_in_constraints() -> None:
    pins = _pins()
    for req in _requirements():
        assert all(s.operator not in ("==", "===") for s in req.specifier), (
            f"pyproject.toml pins {req}; pin it in constraints.txt and give a range"
        )
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt's {name}=={pins[name]} is outside pyproject.toml's {req}"
        )


def test_setup_installs_with_the_constraints() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if "pip install" in line and "-e" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
    torch_first = [line for line in setup.splitlines() if line.rstrip().endswith(" torch")]
    assert torch_first and "-c constraints.txt" in torch_first[0]
    assert setup.index(torch_first[0]) < setup.index(installs[0])


def test_metadata_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="77")  # pyproject's build-system requirement
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    out = tmp_path / "meta"
    out.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "always",
            "-c",
            "import sys, setuptools.build_meta as b; b.prepare_metadata_for_build_wheel(sys.argv[1])",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Deprecat" not in done.stdout + done.stderr, done.stdout + done.stderr
    metadata = next(out.glob("*.dist-info")).joinpath("METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
