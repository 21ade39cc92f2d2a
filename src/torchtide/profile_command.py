"""`torchtide profile`: ask a server (started with --allow-profiling) to profile a model's next
executions, then write the Chrome trace (or cProfile's .prof) and print the top operators."""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from torchtide.profiling import DEFAULT_EXECUTIONS, DEFAULT_TIMEOUT_S, MAX_EXECUTIONS

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
PROG = "torchtide profile"
REPLY_MARGIN_S = 60.0  # beyond the profile's own timeout: building and sending the report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Profile a model's next executions on a running torchtide server (started "
        "with --allow-profiling) while it keeps serving: torch.profiler for PyTorch models "
        "(a Chrome trace for Perfetto / chrome://tracing, and the top operators by self CPU "
        "time with input shapes), cProfile for Python-backend models (a .prof file and the top "
        "functions). Send the model traffic while this waits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Exit status: 0 the profile was written, 1 the server refused or could not be "
        "reached, 2 usage error.",
    )
    p.add_argument("model", help="model name")
    p.add_argument(
        "-u",
        "--url",
        default="localhost:8000",
        help="the server's HTTP endpoint: HOST:PORT, or http(s)://HOST:PORT",
    )
    p.add_argument("-x", "--model-version", default="", help="model version ('' = latest)")
    p.add_argument(
        "-n",
        "--requests",
        type=_executions,
        default=DEFAULT_EXECUTIONS,
        metavar="N",
        help="how many executions to profile (one request each, or one batch of requests "
        f"under dynamic batching); 1 to {MAX_EXECUTIONS}",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="how long the server waits for those executions; it reports what it got by then",
    )
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="where to write")
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP header to send, e.g. 'Authorization: Bearer <token>' (repeatable)",
    )
    return p


def _executions(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_EXECUTIONS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_EXECUTIONS}")
    return n


def _seconds(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        t = 0.0
    if not t > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got '{text}'")
    return t


def _headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for h in values:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header expects 'NAME: VALUE', got '{h}'")
        headers[name.strip()] = value.strip()
    return headers


def _endpoint(url: str, model: str, version: str) -> str:
    base = url if re.match(r"https?://", url) else f"http://{url}"
    path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
    if version:
        path += f"/versions/{version}"
    return base.rstrip("/") + path + "/profile"


def request_profile(
    url: str, model: str, version: str, executions: int, timeout_s: float, headers: dict[str, str]
) -> dict[str, Any]:
    """POST the profile request; the report, or RuntimeError with the server's one line."""
    body = json.dumps({"executions": executions, "timeout": timeout_s}).encode()
    req = urllib.request.Request(
        _endpoint(url, model, version),
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s + REPLY_MARGIN_S) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"the server answered {e.code}: {_error_text(e)}") from None
    except urllib.error.URLError as e:
        raise RuntimeError(f"cannot reach {url}: {e.reason}") from None
    except TimeoutError:
        raise RuntimeError(
            f"no answer from {url} within {timeout_s + REPLY_MARGIN_S:g} s"
        ) from None


def _error_text(e: urllib.error.HTTPError) -> str:
    raw = e.read()
    try:
        message = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else (raw.decode(errors="replace").strip() or str(e.reason))


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """The trace (Chrome JSON or .prof) and the table, named after the model, version and time."""
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]", "_", str(report.get("model_name", "model")))
    stem = f"{name}-v{report.get('model_version', '')}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths: list[Path] = []
    if "chrome_trace" in report:
        trace = out / f"{stem}.trace.json"
        trace.write_text(json.dumps(report["chrome_trace"]))
        paths.append(trace)
    if "pstats" in report:
        prof = out / f"{stem}.prof"
        prof.write_bytes(base64.b64decode(report["pstats"]))
        paths.append(prof)
    table = out / f"{stem}.txt"
    table.write_text(str(report.get("table", "")))
    paths.append(table)
    return paths


def cmd_profile(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        headers = _headers(args.header)
    except ValueError as e:
        p.error(str(e))
    print(
        f"profiling the next {args.requests} executions of '{args.model}' at {args.url} "
        f"(waiting up to {args.timeout:g} s; send it requests)...",
        file=sys.stderr,
    )
    try:
        report = request_profile(
            args.url, args.model, args.model_version, args.requests, args.timeout, headers
        )
        paths = write_report(report, args.out)
    except (RuntimeError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    print(str(report.get("table", "")).rstrip("\n"))
    print(
        f"\n{report.get('profiler')}: {report.get('executions')} of {report.get('requested')} "
        f"executions of '{report.get('model_name')}' version {report.get('model_version')}"
    )
    if report.get("note"):
        print(f"note: {report['note']}")
    for path in paths:
        print(f"{_what(path)}: {path}")
    return EXIT_OK


def _what(path: Path) -> str:
    if path.name.endswith(".trace.json"):
        return "Chrome trace (open in https://ui.perfetto.dev or chrome://tracing)"
    if path.suffix == ".prof":
        return "cProfile stats (python -m pstats, or snakeviz)"
    return "table"
