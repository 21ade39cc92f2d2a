#!/usr/bin/env python3
"""In-process throughput of the example models (no server): ResNet-18 and all-MiniLM-L6-v2.

    .venv/bin/python -m benchmarks.zoo_throughput [--threads 2] [--seconds 2]

ResNet-18 runs as the TorchScript module that scripts/build_examples.py writes (seed 0); MiniLM
embeds random 5-60-word sentences, both as one padded batch and length-bucketed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_VOCAB = (
    "the a of to and in is for on with as by at from that this it model server request batch "
    "latency throughput queue tensor python triton cpu memory fast slow data image text token "
    "river mountain city music light dark quickly slowly green blue market weather bread food"
)
WORDS = _VOCAB.split()


def bench(fn: Callable[[], object], seconds: float, windows: int = 7) -> float:
    """Calls per second of ``fn``: best of ``windows`` timing windows of ``seconds / windows``.

    Best-of is used because small shared VMs are noisy; one warm-up call comes first.
    """
    fn()
    best = 0.0
    for _ in range(windows):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / windows and n >= 2:
                break
        best = max(best, n / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")

    if not args.skip_resnet:
        from torchtide.zoo.resnet import resnet18

        built = ROOT / "examples/model_repository/resnet18/1/model.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if built.is_file():  # what the server loads (scripts/build_examples.py)
                model = torch.jit.load(str(built), map_location="cpu")
            else:
                model = torch.jit.script(resnet18(seed=0))
        print("\nresnet18 (TorchScript)\n batch   img/s   ms/batch")
        for b in (1, 2, 4, 8, 16, 32):
            x = torch.randn(b, 3, 224, 224)

            def run(x: torch.Tensor = x) -> object:
                with torch.inference_mode():
                    return model(x)

            rate = bench(run, args.seconds)
            print(f" {b:5d} {rate * b:7.1f} {1000 / rate:9.1f}")

    if not args.skip_minilm:
        from torchtide.zoo.minilm import MiniLMEmbedder

        emb = MiniLMEmbedder()
        rng = random.Random(0)
        pool = [" ".join(rng.choices(WORDS, k=rng.randint(5, 60))) for _ in range(4096)]
        print("\nminilm (random 5-60-word sentences)\n batch  padded sent/s  bucketed sent/s")
        for b in (1, 2, 4, 8, 16, 32, 64):
            batches = [pool[i : i + b] for i in range(0, len(pool) - b, b)]
            it1, it2 = iter(batches * 100), iter(batches * 100)
            r1 = bench(lambda it=it1: emb.embed(next(it)), args.seconds)
            r2 = bench(lambda it=it2: emb.embed_bucketed(next(it)), args.seconds)
            print(f" {b:5d} {r1 * b:14.1f} {r2 * b:16.1f}")


if __name__ == "__main__":
    main()
