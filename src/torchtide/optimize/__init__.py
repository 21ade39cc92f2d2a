"""`torchtide optimize`: make a served model faster without changing what it answers.

    from torchtide.optimize import optimize, OptimizeOptions
    result = optimize("repo/resnet18", OptimizeOptions(candidates=["onnx", "openvino"]))

builds the variants, gates their accuracy against the served version, times them against it
in one process, and writes the winner as a new version folder (see README, "Optimizing a
model").
"""

from __future__ import annotations

from torchtide.optimize.candidates import CANDIDATES, Candidate
from torchtide.optimize.gates import THRESHOLDS, Tier
from torchtide.optimize.pipeline import (
    OptimizeError,
    OptimizeOptions,
    OptimizeResult,
    Progress,
    Status,
    Variant,
    optimize,
)
from torchtide.optimize.timing import TimingOptions
from torchtide.optimize.writer import rollback

__all__ = [
    "CANDIDATES",
    "THRESHOLDS",
    "Candidate",
    "OptimizeError",
    "OptimizeOptions",
    "OptimizeResult",
    "Progress",
    "Status",
    "Tier",
    "TimingOptions",
    "Variant",
    "optimize",
    "rollback",
]
