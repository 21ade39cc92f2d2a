#!/usr/bin/env python3
"""`torchtide tune`'s quick search against brute force on the example models (W2 ResNet-18,
W3 MiniLM), each served alone by a torchtide server in explicit mode.

    HF_HUB_OFFLINE=1 python scripts/build_examples.py --repo /tmp/repo   # after copying examples
    PYTHONPATH=src python benchmarks/tune_figure.py --repo /tmp/repo --out /tmp/tune-figure

Per model: brute force over the space, then the quick search from the server's config, then
the two winners measured again in turn (A B B A ..., same concurrency each had) so that the
fraction of brute force's best is not one run's noise against another's. Prints a Markdown
table and writes figure.json; each run's own report and plot are kept under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from torchtide.bench.command import build_sets, prepare_requests  # noqa: E402
from torchtide.bench.httpclient import HttpTransport  # noqa: E402
from torchtide.bench.runner import Runner  # noqa: E402
from torchtide.tune import configedit as ce  # noqa: E402
from torchtide.tune.command import cmd_tune  # noqa: E402
from torchtide.tune.control import Control, ExplicitApplier, Setup  # noqa: E402
from torchtide.tune.measure import Measurer  # noqa: E402
from torchtide.tune.objective import Constraints, Objective  # noqa: E402
from torchtide.tune.space import Point  # noqa: E402

_VOCAB = (
    "the a of to and in is for on with as by at from that this it model server request batch "
    "latency throughput queue tensor python cpu memory fast slow data image text token river "
    "mountain city music light dark quickly slowly green blue market weather bread food"
)
WORDS = _VOCAB.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def start_server(repo: Path, model: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "torchtide.cli", "serve", "--model-repository", str(repo)]
    cmd += ["--model-control-mode", "explicit", "--load-model", model, "--http-port", str(port)]
    cmd += ["--allow-grpc", "false", "--allow-metrics", "false", "--http-address", "127.0.0.1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    url = f"http://127.0.0.1:{port}/v2/models/{model}/ready"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: see {log}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("the server did not get ready")


def tune(model_dir: Path, url: str, out: Path, strategy: str, args: argparse.Namespace) -> dict:
    argv = [str(model_dir), "-u", url, "--strategy", strategy, "--report-dir", str(out)]
    argv += ["--instances", args.instances, "--threads", args.threads]
    argv += ["--max-batch-sizes", args.max_batch_sizes, "--max-queue-delays", args.delays]
    argv += ["--concurrency", args.concurrency, "--duration", str(args.duration)]
    argv += ["--warmup", str(args.warmup), "-q"]
    if args.oversubscribe:
        argv.append("--oversubscribe")
    if args.text_file is not None:
        argv += ["--text-file", str(args.text_file)]
    load0 = load_average()
    rc = cmd_tune(argv)
    doc = orjson.loads((out / "tune-report.json").read_bytes())
    doc["rc"], doc["load_before"], doc["load_after"] = rc, load0, load_average()
    return doc


def point_of(trial: dict[str, Any]) -> Point:
    return Point(**trial["point"])


async def ab(
    model: str, host: str, port: int, a: dict, b: dict, rounds: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Both winners again, in turn, each at the concurrency where it was best."""
    control = Control(host, port, 60)
    served = await control.config(model)
    setup = Setup(model, served, ce.thread_key(served), ce.instance_kind(served, host), 2, 300)
    applier = ExplicitApplier(control, setup)
    transport = HttpTransport(host, port, timeout=60)
    ns = argparse.Namespace(
        model=model,
        model_version="",
        batch_size=None,
        shape=[],
        input_data=None,
        text_file=args.text_file,
        seed=0,
        string_length=16,
        output_shm_size=0,
    )
    info, batching, sets = await build_sets(ns, transport)
    requests = await prepare_requests(ns, transport, info, batching, sets, None)
    runner = Runner(transport, requests, model, warmup_s=args.warmup, duration_s=args.duration)
    measurer = Measurer(runner, [], 1, Objective.THROUGHPUT, Constraints())
    got: dict[str, list[float]] = {"quick": [], "brute": []}
    pair = [("quick", a), ("brute", b)]
    try:
        for r in range(rounds):
            for name, trial in pair if r % 2 == 0 else reversed(pair):
                await applier.apply(point_of(trial))
                m = await measurer.at(trial["best"]["concurrency"])
                got[name].append(m.throughput)
        await applier.restore(None, [])
    finally:
        await runner.close()
        await transport.close()
    q, b_ = statistics.median(got["quick"]), statistics.median(got["brute"])
    return {"quick": got["quick"], "brute": got["brute"], "fraction": q / b_ if b_ else None}


def sentences(path: Path, n: int = 400, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def one_model(model: str, args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / model
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args.text_file = sentences(out / "sentences.txt") if model == "minilm" else None
    server = start_server(args.repo, model, port, out / "server.log")
    url = f"127.0.0.1:{port}"
    try:
        runs = {}
        for strategy in args.order.split(","):
            runs[strategy] = tune(args.repo / model, url, out / strategy, strategy, args)
        q, b = runs["quick"], runs["brute"]
        same = q["best"] and b["best"] and q["best"]["label"] == b["best"]["label"]
        if same:
            check = {"fraction": 1.0, "same_config": True}
        else:
            check = asyncio.run(
                ab(model, "127.0.0.1", port, q["best"], b["best"], args.ab_rounds, args)
            )
    finally:
        server.terminate()
        server.wait(60)
    return {
        "model": model,
        "quick": _summary(q),
        "brute": _summary(b),
        "time_fraction": q["elapsed_s"] / b["elapsed_s"],
        "ab": check,
    }


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    best = doc["best"]
    return {
        "rc": doc["rc"],
        "best": None if best is None else best["label"],
        "throughput": None if best is None else best["best"]["throughput"],
        "p99_ms": None if best is None else best["best"]["p99_ms"],
        "concurrency": None if best is None else best["best"]["concurrency"],
        "configs": doc["configs_tried"],
        "points": doc["points_in_space"],
        "elapsed_s": doc["elapsed_s"],
        "start": doc["start"]["label"],
        "load": [doc["load_before"], doc["load_after"]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, required=True, help="examples/model_repository, built")
    p.add_argument("--out", type=Path, default=Path("tune-figure"))
    p.add_argument("--models", default="resnet18,minilm")
    p.add_argument("--instances", default="1,2")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--max-batch-sizes", default="8,16")
    p.add_argument("--delays", default="0,2000")
    p.add_argument(
        "--no-oversubscribe",
        dest="oversubscribe",
        action="store_false",
        help="keep instances x threads within the cores (default: the full grid)",
    )
    p.add_argument("--concurrency", default="1,2,4,8,16,32")
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--ab-rounds", type=int, default=4)
    p.add_argument("--order", default="brute,quick", help="which search runs first")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = [one_model(m, args) for m in args.models.split(",")]
    doc = {"space": vars(args) | {"repo": str(args.repo), "out": str(args.out)}, "results": results}
    doc["space"].pop("text_file", None)
    (args.out / "figure.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(
        "| model | brute force: best, infer/s, configs, s | quick: best, infer/s, configs, s "
        "| quick/brute best (A/B) | quick/brute time |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        b, q = r["brute"], r["quick"]
        frac = r["ab"]["fraction"]
        print(
            f"| {r['model']} | {b['best']}, {b['throughput']:.1f}, {b['configs']}, "
            f"{b['elapsed_s']:.0f} | {q['best']}, {q['throughput']:.1f}, {q['configs']}, "
            f"{q['elapsed_s']:.0f} | {frac:.3f} | {r['time_fraction']:.3f} |"
        )


if __name__ == "__main__":
    main()
