"""In-process engine benchmark on W1 add_sub (WORKLOADS.md): requests/s through InferenceServer at
concurrency 1 and 64 versus calling the model's execute() directly, and the engine's own cost per
request. Run: `python -m benchmarks.engine [--seconds 3] [--rounds 3]`. Prints a markdown table."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.models import write_add_sub  # noqa: E402

from torchtide.server import InferenceServer, ServerOptions  # noqa: E402
from torchtide.types import InferRequest, InferTensor  # noqa: E402


def direct_rate(model_dir: Path, batch: int, seconds: float) -> float:
    """Requests/s calling TritonPythonModel.execute() on `batch` prebuilt requests per call."""
    import triton_python_backend_utils as pb_utils

    spec = importlib.util.spec_from_file_location("w1_direct", model_dir / "1" / "model.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    cfg = {
        "output": [
            {"name": "OUTPUT0", "data_type": "TYPE_INT32"},
            {"name": "OUTPUT1", "data_type": "TYPE_INT32"},
        ]
    }
    model.initialize({"model_config": json.dumps(cfg)})
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    reqs = [
        pb_utils.InferenceRequest(
            inputs=[pb_utils.Tensor("INPUT0", a), pb_utils.Tensor("INPUT1", a)],
            requested_output_names=["OUTPUT0", "OUTPUT1"],
        )
        for _ in range(batch)
    ]
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(50):
            model.execute(reqs)
        n += 50 * batch
    return n / (seconds + (time.perf_counter() - end))


async def engine_rate(
    server: InferenceServer, concurrency: int, seconds: float
) -> tuple[float, float, float]:
    """Closed-loop requests/s through the engine, the mean batch size it formed, and this
    process's CPU time per request in µs (all threads: the loop and the model's), which other
    load on a shared machine disturbs far less than throughput."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    req = InferRequest(
        "add_sub", [InferTensor("INPUT0", "INT32", a), InferTensor("INPUT1", "INT32", a)]
    )
    before = server.statistics("add_sub")[0]
    stop = time.perf_counter() + seconds
    count = 0

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await server.infer(req)
            count += 1

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = server.statistics("add_sub")[0]
    execs = after["execution_count"] - before["execution_count"]
    rows = after["inference_count"] - before["inference_count"]
    return count / elapsed, rows / max(execs, 1), cpu / max(count, 1) * 1e6


async def run(seconds: float, rounds: int) -> list[dict[str, Any]]:
    repo = Path(tempfile.mkdtemp(prefix="tt-bench-"))
    write_add_sub(repo)
    server = InferenceServer(ServerOptions([repo]))
    await server.start()
    await engine_rate(server, 64, 0.5)  # warm-up
    rows = []
    for conc in (1, 64):
        eng, direct, batch_sizes = [], [], []
        for _ in range(rounds):
            r, b, _ = await engine_rate(server, conc, seconds)
            eng.append(r)
            batch_sizes.append(b)
            # the model alone at the batch size the engine formed (1 at concurrency 1)
            direct.append(direct_rate(repo / "add_sub", max(1, round(b)), seconds))
        e, d = statistics.median(eng), statistics.median(direct)
        rows.append(
            {
                "concurrency": conc,
                "engine_rps": e,
                "direct_rps": d,
                "mean_batch": statistics.median(batch_sizes),
                "ratio": e / d,
                "engine_cost_us": (1 / e - 1 / d) * 1e6,
            }
        )
    await server.stop()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=3, help="rounds per point (median reported)")
    args = p.parse_args()
    try:
        import uvloop

        rows = uvloop.run(run(args.seconds, args.rounds))
    except ImportError:
        rows = asyncio.run(run(args.seconds, args.rounds))
    print(
        "\n| concurrency | engine req/s | model alone req/s (same batch) | mean batch | "
        "engine/model | engine cost per request |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['engine_rps']:,.0f} | {r['direct_rps']:,.0f} | "
            f"{r['mean_batch']:.1f} | {r['ratio']:.2f} | {r['engine_cost_us']:.1f} µs |"
        )


if __name__ == "__main__":
    main()
