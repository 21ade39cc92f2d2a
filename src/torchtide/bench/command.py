"""`torchtide bench`: argument parsing and the run, from metadata to report."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from torchtide import __version__
from torchtide.bench import inputs as inp
from torchtide.bench.runner import Mode, Runner, Step, StepResult
from torchtide.bench.transport import Transport, TransportError, Unreachable

if TYPE_CHECKING:
    from torchtide.bench.shm import SharedMemory

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a SIGINT
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


class UsageError(Exception):
    pass


def say(console: Console, message: str) -> None:
    """A plain message: no markup, no wrapping (error texts carry brackets and long paths)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got '{text}'"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got '{text}'")
    return values


def _ints(text: str) -> list[int]:
    values = _floats(text)
    if any(v != int(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected whole numbers, got '{text}'")
    return [int(v) for v in values]


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchtide bench",
        description="Load generator for any KServe V2 server (torchtide, Triton, MLServer), in "
        "the spirit of perf_analyzer: sweeps closed-loop concurrency or open-loop Poisson "
        "request rates and reports throughput, latency percentiles, errors, the server-side "
        "time split (statistics extension) and this tool's own CPU cost per request.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Exit status: 0 success, 1 a step had errors or the server was lost during a "
        "step, 2 usage error or unreachable server, 130 interrupted (Ctrl-C).",
    )
    p.add_argument("model", help="model name")
    p.add_argument("-u", "--url", help="HOST:PORT (default localhost:8000 http, :8001 grpc)")
    p.add_argument("-i", "--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("-x", "--model-version", default="", help="model version ('' = server's)")
    load = p.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        type=_ints,
        metavar="N[,N...]",
        help="closed loop: N requests in flight, one step per value (default 1)",
    )
    load.add_argument(
        "--request-rate",
        type=_floats,
        metavar="R[,R...]",
        help="open loop: Poisson arrivals at R requests/s, one step per value",
    )
    p.add_argument(
        "--duration", type=_positive, default=5.0, metavar="S", help="seconds measured per step"
    )
    p.add_argument(
        "--warmup", type=_positive, default=1.0, metavar="S", help="seconds of warm-up per step"
    )
    p.add_argument(
        "-b",
        "--batch-size",
        type=int,
        default=None,
        help="batch size for batched models (default 1)",
    )
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2",
        help="dims of an input's -1 dims (without the batch dim); others -1 become 1",
    )
    data = p.add_mutually_exclusive_group()
    data.add_argument(
        "--input-data",
        type=Path,
        metavar="FILE",
        help='perf_analyzer JSON data file {"data": [{"INPUT0": [...]}, ...]}, cycled',
    )
    data.add_argument(
        "--text-file",
        type=Path,
        metavar="FILE",
        help="text for BYTES inputs, one request per line, cycled",
    )
    p.add_argument("--string-length", type=int, default=16, help="length of random BYTES")
    p.add_argument(
        "--input-tensor-format",
        choices=["binary", "json"],
        default="binary",
        help="HTTP tensors: binary tensor extension or JSON",
    )
    p.add_argument(
        "--json-tensors",
        dest="input_tensor_format",
        action="store_const",
        const="json",
        help="same as --input-tensor-format json",
    )
    p.add_argument(
        "--shared-memory",
        choices=["none", "system"],
        default="none",
        help="place inputs and outputs in registered system shared memory",
    )
    p.add_argument(
        "--output-shm-size",
        type=int,
        default=102400,
        metavar="BYTES",
        help="shared memory per output whose size the metadata does not fix",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open loop: most requests in flight (HTTP connections)",
    )
    p.add_argument("--grpc-channels", type=int, default=1, help="gRPC channels shared by workers")
    p.add_argument(
        "--grpc-client",
        choices=["native", "grpcio"],
        default="native",
        help="infer calls on torchtide's lean HTTP/2 client (native: ~5x less client CPU per "
        "request) or on grpc.aio",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random data and arrivals")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=30.0,
        metavar="S",
        help="control calls' timeout and how long a step waits for requests in flight",
    )
    p.add_argument("--csv", type=Path, metavar="FILE", help="write one row per step")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the run as JSON")
    p.add_argument(
        "--plot", type=Path, metavar="FILE", help="plot p50/p90/p99 latency vs throughput (PNG)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no live progress display")
    return p


def parse_url(url: str | None, protocol: str) -> tuple[str, int]:
    if not url:
        return "localhost", DEFAULT_PORTS[protocol]
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    url = url.rstrip("/")
    host, sep, port = url.rpartition(":")
    if not sep or "]" in port:  # no port given
        host, port = url, str(DEFAULT_PORTS[protocol])
    host = host.strip("[]") or "localhost"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"-u expects HOST:PORT, got '{url}'")
    return host, int(port)


def make_transport(args: argparse.Namespace, host: str, port: int) -> Transport:
    if args.protocol == "grpc":
        from torchtide.bench.grpcclient import GrpcTransport

        return GrpcTransport(
            host,
            port,
            channels=args.grpc_channels,
            timeout=args.timeout,
            native=args.grpc_client == "native",
        )
    from torchtide.bench.httpclient import HttpTransport

    return HttpTransport(
        host, port, binary=args.input_tensor_format == "binary", timeout=args.timeout
    )


def steps_of(args: argparse.Namespace) -> list[Step]:
    if args.request_rate:
        return [Step(Mode.RATE, r) for r in args.request_rate]
    return [Step(Mode.CONCURRENCY, c) for c in (args.concurrency or [1])]


def check_args(args: argparse.Namespace) -> None:
    if args.protocol == "grpc" and args.input_tensor_format == "json":
        raise UsageError("JSON tensors are an HTTP format; gRPC always sends raw tensors")
    for f in (args.input_data, args.text_file):
        if f is not None and not f.is_file():
            raise UsageError(f"no such file: {f}")
    if args.max_connections < 1 or args.grpc_channels < 1:
        raise UsageError("--max-connections and --grpc-channels must be at least 1")
    if args.string_length < 0 or args.output_shm_size < 1:
        raise UsageError("--string-length must be >= 0 and --output-shm-size >= 1")
    for out in (args.csv, args.json, args.plot):
        if out is not None and not out.parent.is_dir():
            raise UsageError(f"cannot write {out}: no such directory")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib (pip install 'torchtide[plot]')")


async def build_sets(
    args: argparse.Namespace, transport: Transport
) -> tuple[inp.ModelInfo, inp.Batching, list[inp.InputSet]]:
    meta = await transport.model_metadata(args.model, args.model_version)
    mbs = await transport.max_batch_size(args.model, args.model_version)
    info = inp.ModelInfo.from_metadata(meta, args.model_version, mbs)
    if not info.inputs:
        raise inp.WorkloadError(f"model '{args.model}' has no inputs in its metadata")
    batching = inp.Batching.decide(info, args.batch_size, inp.parse_shape_overrides(args.shape))
    if args.input_data is not None:
        sets = inp.data_file_sets(info, batching, args.input_data)
    elif args.text_file is not None:
        sets = inp.text_sets(
            info, batching, args.text_file, seed=args.seed, string_length=args.string_length
        )
    else:
        sets = inp.random_sets(info, batching, seed=args.seed, string_length=args.string_length)
    return info, batching, sets


async def prepare_requests(
    args: argparse.Namespace,
    transport: Transport,
    info: inp.ModelInfo,
    batching: inp.Batching,
    sets: list[inp.InputSet],
    shm: SharedMemory | None,
) -> list[Any]:
    placements: list[Any] = [None] * len(sets)
    if shm is not None:
        placements = await shm.place(sets, info.outputs, batching, args.output_shm_size)
    return [
        transport.prepare(args.model, args.model_version, s, pl)
        for s, pl in zip(sets, placements, strict=True)
    ]


async def run_steps(
    args: argparse.Namespace,
    transport: Transport,
    requests: list[Any],
    batch_size: int,
    err: Console,
) -> tuple[list[StepResult], str | None]:
    """Every step in turn; a lost server ends the step, and the sweep with the steps done so
    far."""
    runner = Runner(
        transport,
        requests,
        args.model,
        args.model_version,
        warmup_s=args.warmup,
        duration_s=args.duration,
        max_connections=args.max_connections,
        grace_s=args.timeout,
        seed=args.seed,
        batch_size=batch_size,
    )
    results: list[StepResult] = []
    live = None
    if not args.quiet:
        from torchtide.bench.report import LiveProgress

        live = LiveProgress(err, args.warmup, args.duration)
        runner.on_tick = live.tick
        live.__enter__()
    label = ""
    try:
        for step in steps_of(args):
            label = step.label
            result = await runner.run_step(step)
            results.append(result)
            if live is not None:
                live.finish(step, result)
    except Unreachable as e:
        return results, f"lost the server during {label}: {e}"
    except (OSError, TransportError) as e:
        return results, f"{type(e).__name__}: {e}"
    finally:
        if live is not None:
            live.__exit__()
        await runner.close()
    return results, None


def run_info(
    args: argparse.Namespace, url: str, batch_size: int, input_sets: int, loop_name: str
) -> dict[str, Any]:
    if args.shared_memory == "system":
        tensor_format = "system shared memory"
    else:
        tensor_format = "raw" if args.protocol == "grpc" else args.input_tensor_format
    return {
        "tool": f"torchtide bench {__version__}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": args.model,
        "model_version": args.model_version,
        "protocol": args.protocol,
        "url": url,
        "batch_size": batch_size,
        "input_sets": input_sets,
        "tensor_format": tensor_format,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "loop": loop_name,
    }


async def run(args: argparse.Namespace, out: Console, err: Console, loop_name: str) -> int:
    host, port = parse_url(args.url, args.protocol)
    transport = make_transport(args, host, port)
    shm = None
    if args.shared_memory == "system":
        from torchtide.bench.shm import SharedMemory

        shm = SharedMemory(transport)
    try:
        try:
            info, batching, sets = await build_sets(args, transport)
            requests = await prepare_requests(args, transport, info, batching, sets, shm)
        except (TransportError, inp.WorkloadError, OSError) as e:
            say(err, f"torchtide bench: {e}")
            return EXIT_USAGE
        results, failure = await run_steps(args, transport, requests, batching.batch_size, err)
    finally:
        if shm is not None:
            await shm.release()
        await transport.close()

    from torchtide.bench import report as rep

    info_doc = run_info(args, f"{host}:{port}", batching.batch_size, len(sets), loop_name)
    if results:
        rep.render(out, results, info_doc)
        if args.csv is not None:
            rep.write_csv(args.csv, results)
        if args.json is not None:
            rep.write_json(args.json, results, info_doc)
        if args.plot is not None:
            rep.plot(args.plot, results, info_doc)
    if failure is not None:
        say(err, f"torchtide bench: the run stopped: {failure}")
        return EXIT_ERRORS
    return EXIT_ERRORS if any(r.errors for r in results) else EXIT_OK


def cmd_bench(argv: list[str]) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    out, err = Console(), Console(stderr=True)
    if not out.is_terminal:  # files and pipes get the whole table, not 80 columns
        out = Console(width=160)
    try:
        check_args(args)
        parse_url(args.url, args.protocol)
    except UsageError as e:
        p.print_usage(sys.stderr)
        say(err, f"torchtide bench: error: {e}")
        return EXIT_USAGE
    try:
        import uvloop

        return uvloop.run(run(args, out, err, "uvloop"))
    except ImportError:
        return asyncio.run(run(args, out, err, "asyncio"))
    except Unreachable as e:  # pragma: no cover - build_sets reports these itself
        say(err, f"torchtide bench: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        say(err, "torchtide bench: interrupted")
        return EXIT_INTERRUPTED
