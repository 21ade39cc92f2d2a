"""Estimate the size of the torchtide images from the wheels installed in this environment.

No Docker engine is needed: the image's /opt/venv holds exactly the dependency closure of
`torchtide[<extras>]`, so its size is the sum of those distributions' installed files (as their
RECORD lists them, measured on disk here). Add the base image (python:3.11-slim-bookworm is
about 125 MB uncompressed) for the image total.

    python deploy/docker/image_size.py [--extras onnx] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from importlib import metadata

BASE_IMAGE_MB = 125  # python:3.11-slim-bookworm, uncompressed (Docker Hub's figure for amd64)


def _name(req: str) -> tuple[str, str, str]:
    """(normalised name, extras, marker) of a requirement string."""
    m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(\[[^\]]*\])?[^;]*(;.*)?", req)
    assert m, req
    return _norm(m.group(1)), (m.group(2) or "").strip("[]"), (m.group(3) or "").lstrip(";")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _marker_ok(marker: str, extras: set[str]) -> bool:
    """Evaluates a requirement's environment marker for this interpreter and these extras."""
    if not marker.strip():
        return True
    try:
        from packaging.markers import Marker
    except ImportError:  # pragma: no cover - packaging ships with pip and setuptools
        return "extra" not in marker
    m = Marker(marker)
    return any(m.evaluate({"extra": e}) for e in (extras or {""}))


def closure(root: str, extras: set[str]) -> dict[str, metadata.Distribution]:
    """Every installed distribution `root[extras]` needs, by normalised name."""
    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, set[str]]] = [(root, extras)]
    while todo:
        name, want = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a marker-excluded or optional dependency not installed here
        key = _norm(dist.metadata["Name"])
        if key in found and not want:
            continue
        found[key] = dist
        for req in dist.requires or []:
            dep, dep_extras, marker = _name(req)
            if _marker_ok(marker, want):
                todo.append((dep, {e.strip() for e in dep_extras.split(",") if e.strip()}))
    return found


def installed_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        path = dist.locate_file(f)
        with contextlib.suppress(OSError):  # listed in RECORD but not on disk
            total += path.stat().st_size  # type: ignore[union-attr]
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--extras", default="onnx", help="torchtide extras in the image")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    extras = {e for e in args.extras.split(",") if e}
    dists = closure("torchtide", extras)
    sizes = {name: installed_bytes(d) for name, d in dists.items()}
    venv_mb = sum(sizes.values()) / 1e6
    report = {
        "extras": sorted(extras),
        "distributions": len(sizes),
        "venv_mb": round(venv_mb),
        "base_image_mb": BASE_IMAGE_MB,
        "image_mb": round(venv_mb + BASE_IMAGE_MB),
        "largest_mb": {
            n: round(s / 1e6) for n, s in sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
        },
        "versions": {n: d.version for n, d in sorted(dists.items())},
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"/opt/venv: {report['venv_mb']} MB in {len(sizes)} distributions")
        print(f"image (with a {BASE_IMAGE_MB} MB base): about {report['image_mb']} MB")
        for n, mb in report["largest_mb"].items():
            print(f"  {n:<28} {mb:>5} MB  {report['versions'][n]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
