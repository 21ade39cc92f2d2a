"""Locust load test for a KServe V2 server (torchtide, Triton, MLServer): V2 JSON inference
requests to the `add_sub` model (INT32 [1,16] + [1,16]), each response checked.

    pip install -c constraints.txt -e ".[loadtest]"      # Locust, from the repository root
    locust -f examples/locustfile.py --host http://localhost:8000 \
        --headless --users 32 --spawn-rate 32 --run-time 30s

Each Locust user is one closed-loop client (`--users` is the concurrency). Environment:
MODEL (default add_sub), MODEL_VERSION (default: the server's choice), RATE (requests/s per
user; default 0 = back to back).

`torchtide bench add_sub --concurrency 32` measures the same with far less client CPU (one
asyncio process, pre-serialised binary requests); use Locust for its web UI, distributed
workers or custom user flows."""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, constant, constant_throughput, task

MODEL = os.environ.get("MODEL", "add_sub")
VERSION = os.environ.get("MODEL_VERSION", "")
RATE = float(os.environ.get("RATE", "0"))
PATH = f"/v2/models/{MODEL}" + (f"/versions/{VERSION}" if VERSION else "") + "/infer"
HEADERS = {"Content-Type": "application/json"}


def _payload(rng: random.Random) -> tuple[bytes, list[int], list[int]]:
    a = [rng.randint(0, 99) for _ in range(16)]
    b = [rng.randint(0, 99) for _ in range(16)]
    body = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b},
        ],
        "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT1"}],
    }
    return json.dumps(body).encode(), a, b


class V2InferUser(FastHttpUser):
    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)

    def on_start(self) -> None:
        rng = random.Random(id(self))
        # serialise a few requests once; sending them costs no JSON encoding per request
        self.payloads = [_payload(rng) for _ in range(32)]
        self.i = 0

    @task
    def infer(self) -> None:
        body, a, b = self.payloads[self.i]
        self.i = (self.i + 1) % len(self.payloads)
        with self.client.post(
            PATH, data=body, headers=HEADERS, name=f"{MODEL} infer", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            try:
                outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
            except (ValueError, KeyError, TypeError) as e:
                resp.failure(f"bad V2 response: {e}")
                return
            if outputs.get("OUTPUT0") != [x + y for x, y in zip(a, b, strict=True)] or outputs.get(
                "OUTPUT1"
            ) != [x - y for x, y in zip(a, b, strict=True)]:
                resp.failure("wrong add_sub result")
            else:
                resp.success()
