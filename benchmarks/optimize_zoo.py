#!/usr/bin/env python3
"""`torchtide optimize` on W2 (ResNet-18) and W3 (MiniLM's encoder), one run each, in a
scratch copy of the example repository; prints every variant's ratio to the served fp32
version measured in the same run (and writes each run's optimize-report.* beside it).

    PYTHONPATH=src python benchmarks/optimize_zoo.py [--out DIR] [--workloads w2,w3]
        [--precision int8] [--candidates ...] [--block-seconds 1]

W2: the TorchScript ResNet-18 of scripts/build_examples.py (seed 0) with its example config
(2 instances x 1 thread, so every variant is timed at 1 thread), samples = seeded random
images given as a file (they count as the user's data: the gate judges int8 on them, and a
random-weight net's top-1 is nearly tied, so expect int8 to fail top-1 agreement).
W3: all-MiniLM-L6-v2's encoder + mean pooling + L2 norm as an nn.Module (input_ids and
attention_mask -> EMBEDDING), written as a new model `minilm_encoder` (version 1 = its
torch.export program, eager) through the Python API, with real tokenized sentences as samples.
The example `minilm` itself is a Python-backend model (TEXT in), which the optimizer cannot
convert.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from torchtide.optimize import OptimizeOptions, OptimizeResult, TimingOptions, optimize  # noqa: E402
from torchtide.optimize.command import RichProgress, _table  # noqa: E402

_VOCAB = (
    "the a of to and in is for on with as by at from that this it model server request batch "
    "latency throughput queue tensor python triton cpu memory fast slow data image text token "
    "river mountain city music light dark quickly slowly green blue market weather bread food "
    "children walked along quiet streets while rain fell softly over old houses near harbour"
)
WORDS = _VOCAB.split()

MINILM_CONFIG = """name: "minilm_encoder"
max_batch_size: 16
input [{ name: "input_ids" data_type: TYPE_INT64 dims: [-1] },
       { name: "attention_mask" data_type: TYPE_INT64 dims: [-1] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [384] }]
dynamic_batching {}
instance_group [{ count: 1 kind: KIND_CPU }]
parameters { key: "NUM_THREADS" value { string_value: "2" } }
"""


class Encoder(torch.nn.Module):
    """BERT + attention-mask mean pooling + L2 normalisation (sentence-transformers' pipeline)."""

    def __init__(self, bert: Any) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        w = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(n)]


def w2(out: Path, opts: OptimizeOptions, n: int) -> OptimizeResult:
    from scripts.build_examples import build_resnet18  # type: ignore[import-not-found]

    repo = out / "w2"
    shutil.rmtree(repo, ignore_errors=True)
    d = repo / "resnet18"
    (d / "1").mkdir(parents=True)
    shutil.copy2(ROOT / "examples/model_repository/resnet18/config.pbtxt", d / "config.pbtxt")
    build_resnet18(d / "1" / "model.pt", seed=0)
    rng = np.random.default_rng(0)
    np.savez(out / "w2-images.npz", INPUT__0=rng.random((n, 3, 224, 224), dtype=np.float32))
    opts.samples = out / "w2-images.npz"
    from torchtide.zoo.resnet import resnet18

    return optimize(d, opts, module=resnet18(seed=0), progress=RichProgress(_console()))


def w3(out: Path, opts: OptimizeOptions, n: int) -> OptimizeResult:
    from torchtide.zoo.minilm import MiniLMEmbedder

    emb = MiniLMEmbedder()
    encoder = Encoder(emb._model).eval()
    repo = out / "w3"
    shutil.rmtree(repo, ignore_errors=True)
    d = repo / "minilm_encoder"
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(MINILM_CONFIG)
    items = []
    for text in sentences(n):
        tok = emb.tokenize([text])
        items.append(
            {"input_ids": tok["input_ids"].numpy(), "attention_mask": tok["attention_mask"].numpy()}
        )
    example = emb.tokenize(sentences(2, seed=1))
    args = (example["input_ids"], example["attention_mask"])
    seq = torch.export.Dim.AUTO
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(encoder, args, dynamic_shapes=({0: seq, 1: seq}, {0: seq, 1: seq}))
        torch.export.save(ep, str(d / "1" / "model.pt2"))
    opts.sample_items = items
    return optimize(d, opts, module=encoder, progress=RichProgress(_console()))


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/torchtide-optimize-zoo"))
    p.add_argument("--workloads", default="w2,w3")
    p.add_argument("--precision", default="int8")
    p.add_argument("--candidates", default="")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--block-seconds", type=float, default=1.0)
    p.add_argument("--max-rounds", type=int, default=6)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for w in args.workloads.split(","):
        opts = OptimizeOptions(
            precision=args.precision,
            candidates=[c for c in args.candidates.split(",") if c] or None,
            timing=TimingOptions(block_s=args.block_seconds, max_rounds=args.max_rounds),
            time_failed=True,
        )
        result = {"w2": w2, "w3": w3}[w](args.out, opts, args.samples)
        _console().print(_table(result))
        print(
            f"{w}: winner {result.winner}, version {result.new_version}; reports "
            f"{', '.join(map(str, result.reports))}; {result.elapsed_s:.0f} s"
        )
        for v in result.variants:
            speeds = " ".join(
                f"b{s.batch} {s.ratio:.2f}x ({s.spread[0]:.2f}-{s.spread[1]:.2f}, "
                f"{s.items_s:.0f}/s vs {s.base_items_s:.0f}/s)"
                for s in v.speed
            )
            acc = ""
            if v.accuracy and v.accuracy.outputs:
                o = v.accuracy.outputs[0]
                acc = f"cos {o.cos_mean:.5f}/{o.cos_min:.5f} max|d| {o.max_abs:.1e}"
                acc += f" top1 {o.top1:.1%}" if o.top1 is not None else ""
            print(f"  {v.name:<14} {v.status.value:<8} {speeds} {acc} | {v.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
