"""W3 with an unchanged, naive Python model: the dynamic batcher with and without BATCH_BY_LENGTH.

The model (written below into a temporary repository) embeds its whole batch as one call padded
to the longest sentence, the way a plain model does, and counts the tokens it pads. It is served
by `torchtide serve` under three configs that differ only in scheduling:

  padded         the example's scheduling: 1 ms delay, batches of whatever is queued
  padded_pref8   the same with preferred_batch_size [8] (arrival order)
  by_length      preferred_batch_size [8] and BATCH_BY_LENGTH "TEXT"

and loaded by `torchtide bench` (W3's sentences, closed loop) over HTTP and gRPC, configs
interleaved in each round. Each served figure is divided by the naive padded in-process limit as
benchmarks/suite.py defines it (a random batch of sentences padded to its longest, best batch
size), measured just before and just after the step. The padding fraction of each step is the
share of the encoder's tokens that were padding; the in-process limit's is computed from the
same sentences at its batch size.

    python -m benchmarks.length_batching [--rounds 3] [--seconds 12] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.suite import BIN, ROOT, InProcess, bench, free_port, sentences

MODEL_PY = '''
"""Naive W3: one encoder call per execute(), padded to the batch's longest sentence."""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import torch
        from torchtide.zoo.minilm import MiniLMEmbedder

        params = json.loads(args["model_config"]).get("parameters", {})
        self.threads = int(params.get("NUM_THREADS", {}).get("string_value", "0") or 0)
        self.torch = torch
        self.embedder = MiniLMEmbedder()
        self.stats_path = os.environ.get("TORCHTIDE_PADDING_STATS", "") + "." + args["model_name"]
        self.real = self.padded = self.calls = self.rows = 0

    def execute(self, requests):
        if self.threads and self.torch.get_num_threads() != self.threads:
            self.torch.set_num_threads(self.threads)
        texts = [
            pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy().reshape(-1)[0].decode()
            for r in requests
        ]
        tokens = self.embedder.tokenize(texts)
        mask = tokens["attention_mask"]
        self.real += int(mask.sum())
        self.padded += int(mask.numel())
        self.calls += 1
        self.rows += len(texts)
        emb = self.embedder.embed_tokens(tokens)
        with open(self.stats_path, "w") as f:
            json.dump(
                {"real": self.real, "total": self.padded, "calls": self.calls, "rows": self.rows},
                f,
            )
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", emb[i : i + 1])])
            for i in range(len(requests))
        ]
'''

CONFIG = """
backend: "python"
max_batch_size: 64
input [{{ name: "TEXT" data_type: TYPE_STRING dims: [1] }}]
output [{{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [384] }}]
dynamic_batching {{ {batching} max_queue_delay_microseconds: 1000 }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
parameters [
  {{ key: "NUM_THREADS" value {{ string_value: "{threads}" }} }}{extra}
]
"""

BY_LENGTH = ',\n  { key: "BATCH_BY_LENGTH" value { string_value: "TEXT" } }'
VARIANTS = {
    "padded": ("", ""),
    "padded_pref8": ("preferred_batch_size: [8]", ""),
    "by_length": ("preferred_batch_size: [8]", BY_LENGTH),
    "by_length16": ("preferred_batch_size: [16]", BY_LENGTH),
    "by_length4": ("preferred_batch_size: [4]", BY_LENGTH),
}


def write_repo(repo: Path, threads: int) -> None:
    for name, (batching, extra) in VARIANTS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(MODEL_PY)
        (repo / name / "config.pbtxt").write_text(
            CONFIG.format(batching=batching, extra=extra, threads=threads)
        )


def serve(repo: Path, stats: Path, http: int, grpc: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TORCHTIDE_PADDING_STATS=str(stats), PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [str(BIN / "torchtide"), "serve", "--model-repository", str(repo),
         "--http-port", str(http), "--grpc-port", str(grpc), "--allow-metrics", "false",
         "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--log-info", "false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited: {err}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready in 300 s")


def padding(stats: Path, name: str) -> tuple[int, int, int]:
    """(real tokens, encoded tokens, sentences) the model has seen so far."""
    p = Path(f"{stats}.{name}")
    if not p.exists():
        return 0, 0, 0
    d = json.loads(p.read_text())
    return int(d["real"]), int(d["total"]), int(d["rows"])


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def limit_rate(model: InProcess, config: tuple[int, int], seconds: float) -> tuple[float, float]:
    """The limit's configuration once more: (inferences/s, CPU ms per inference)."""
    c0, w0 = time.process_time(), time.perf_counter()
    rate = model.rate(config, seconds)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return rate, cpu * 1e3 / (rate * wall)


def limit_padding(texts: list[str], batch: int, samples: int = 400) -> float:
    """The padding share of random batches of `batch` sentences padded to their longest."""
    from torchtide.zoo.minilm import MiniLMEmbedder

    lengths = MiniLMEmbedder().token_lengths(texts)
    rng = random.Random(2)
    real = total = 0
    for _ in range(samples):
        b = rng.sample(lengths, batch)
        real += sum(b)
        total += max(b) * batch
    return 1 - real / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=12.0, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--variants", default="padded,padded_pref8,by_length")
    p.add_argument("--limit-seconds", type=float, default=3.0)
    p.add_argument(
        "--threads", type=int, default=2, help="torch threads, in-process and in the server"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "length_batching.json")
    args = p.parse_args()
    protocols = [x.strip() for x in args.protocols.split(",")]
    variants = [x.strip() for x in args.variants.split(",")]

    work = Path(tempfile.mkdtemp(prefix="tt-lenbatch-"))
    repo, stats = work / "repo", work / "padding"
    write_repo(repo, args.threads)
    pool = sentences()
    text = work / "sentences.txt"
    text.write_text("\n".join(pool) + "\n")
    print("[lenbatch] in-process naive padded limit ...", file=sys.stderr, flush=True)
    import torch

    torch.set_num_threads(args.threads)
    model = InProcess("minilm", [1, 2, 4, 8, 16, 32])
    limit = model.limit(args.limit_seconds)
    bracket_s = min(3 * args.limit_seconds, args.seconds)
    limit_cpu = [limit_rate(model, limit.config, bracket_s)[1]]
    ports = {"http": free_port(), "grpc": free_port()}
    server = serve(repo, stats, ports["http"], ports["grpc"])
    rows: list[dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            for proto in protocols:
                for name in variants:
                    tag = f"[lenbatch] round {rnd + 1} {name} {proto} ..."
                    print(tag, file=sys.stderr, flush=True)
                    r0, t0, n0 = padding(stats, name)
                    c0 = cpu_s(server.pid)
                    step = bench(name, ports[proto], proto, args.concurrency, args.seconds,
                                 args.warmup, text)  # fmt: skip
                    c1 = cpu_s(server.pid)
                    r1, t1, n1 = padding(stats, name)
                    before, cpu_before = limit.brackets[-1], limit_cpu[-1]
                    rate, cpu = limit_rate(model, limit.config, bracket_s)
                    limit.brackets.append(rate)
                    limit_cpu.append(cpu)
                    around = (before + rate) / 2
                    served_cpu = (c1 - c0) * 1e3 / (n1 - n0) if n1 > n0 else float("nan")
                    rows.append({
                        "round": rnd + 1, "variant": name, "protocol": proto,
                        "throughput": step["throughput"], "p50_ms": step["p50_ms"],
                        "p99_ms": step["p99_ms"], "errors": step["errors"],
                        "server_batch_size": step["server_batch_size"],
                        "limit_around": around, "of_limit": step["throughput"] / around,
                        # includes the warm-up's executions: the share is a property of the
                        # scheduling, not of the window
                        "padding": 1 - (r1 - r0) / (t1 - t0) if t1 > t0 else float("nan"),
                        # CPU per inference: steadier than wall time on a shared machine
                        "server_cpu_ms": served_cpu,
                        "limit_cpu_ms": (cpu_before + cpu) / 2,
                        "cpu_of_limit": (cpu_before + cpu) / 2 / served_cpu,
                    })  # fmt: skip
    finally:
        server.terminate()
        server.wait(60)
    lim_pad = limit_padding(pool, limit.config[1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"limit": limit.label, "limit_rate": limit.brackets, "limit_cpu_ms": limit_cpu,
             "limit_padding": lim_pad, "rows": rows}, indent=2,
        )
    )  # fmt: skip
    report(rows, limit.label, statistics.median(limit.brackets), lim_pad, args)


def report(
    rows: list[dict[str, Any]], label: str, rate: float, lim_pad: float, args: argparse.Namespace
) -> None:
    med = statistics.median
    print(
        f"\nW3, naive padded Python model, {args.threads} torch thread(s), concurrency "
        f"{args.concurrency}, {args.seconds:g} s per "
        f"step, {args.rounds} round(s), configs interleaved. In-process naive limit: {label}, "
        f"{rate:,.1f}/s (median of its measurements), padding {lim_pad:.0%}. `CPU of limit`: "
        "the limit's CPU time per inference over the server's, the steadier reading when "
        "the machine is shared.\n"
    )
    print("| config | protocol | infer/s | of limit (median) | of limit (rounds) | padding "
          "| server CPU ms/inf | CPU of limit (rounds) | mean batch | p50 ms | p99 ms "
          "| errors |")  # fmt: skip
    print("|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|")
    for proto in dict.fromkeys(r["protocol"] for r in rows):
        for name in dict.fromkeys(r["variant"] for r in rows):
            rs = [
                {k: float("nan") if v is None else v for k, v in r.items()}
                for r in rows
                if r["variant"] == name and r["protocol"] == proto
            ]
            fr = sorted(r["of_limit"] for r in rs)
            cr = sorted(r["cpu_of_limit"] for r in rs)
            print(
                f"| {name} | {proto} | {med(r['throughput'] for r in rs):,.1f} "
                f"| {med(fr):.2f} | {fr[0]:.2f}-{fr[-1]:.2f} "
                f"| {med(r['padding'] for r in rs):.0%} "
                f"| {med(r['server_cpu_ms'] for r in rs):.1f} "
                f"| {med(cr):.2f} ({cr[0]:.2f}-{cr[-1]:.2f}) "
                f"| {med(r['server_batch_size'] or 0 for r in rs):.1f} "
                f"| {med(r['p50_ms'] for r in rs):.0f} | {med(r['p99_ms'] for r in rs):.0f} "
                f"| {sum(r['errors'] for r in rs)} |"
            )
    print("\nover padded, same round (throughput ratios per round):")
    names = [n for n in dict.fromkeys(r["variant"] for r in rows) if n != "padded"]
    for proto in dict.fromkeys(r["protocol"] for r in rows):
        for name in names:
            ratios = []
            for rnd in sorted({r["round"] for r in rows}):
                get = {
                    r["variant"]: r for r in rows if r["round"] == rnd and r["protocol"] == proto
                }
                if "padded" in get and name in get:
                    ratios.append(get[name]["throughput"] / get["padded"]["throughput"])
            print(f"  {name} {proto}: " + ", ".join(f"{x:.2f}" for x in ratios))


if __name__ == "__main__":
    main()
