"""The `torchtide` command (and a `tritonserver` alias that takes tritonserver's flags)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path

from torchtide import __version__

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

# tritonserver flags we accept and ignore, so KServe-style invocations start unchanged.
_IGNORED_FLAGS = frozenset(
    (
        "--allow-gpu-metrics",
        "--allow-cpu-metrics",
        "--http-thread-count",
        "--grpc-infer-thread-count",
        "--http-header-forward-pattern",
        "--grpc-header-forward-pattern",
        "--http-restricted-api",
        "--grpc-restricted-protocol",
        "--grpc-use-ssl",
        "--grpc-use-ssl-mutual",
        "--grpc-server-cert",
        "--grpc-server-key",
        "--grpc-root-cert",
        "--metrics-interval-ms",
        "--metrics-config",
        "--trace-config",
        "--cache-config",
        "--rate-limit",
        "--rate-limit-resource",
        "--pinned-memory-pool-byte-size",
        "--cuda-memory-pool-byte-size",
        "--backend-config",
        "--backend-directory",
        "--repoagent-directory",
        "--model-config-name",
        "--id",
        "--buffer-manager-thread-count",
        "--model-load-thread-count",
        "--min-supported-compute-capability",
        "--grpc-keepalive-time",
        "--grpc-keepalive-timeout",
        "--grpc-http2-max-pings-without-data",
        "--grpc-infer-allocation-pool-size",
        "--reuse-http-port",
        "--reuse-grpc-port",
        "--allow-sagemaker",
        "--allow-vertex-ai",
        "--sagemaker-port",
        "--vertex-ai-port",
    )
)


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def _add_bool(p: argparse.ArgumentParser, flag: str, default: bool, help: str) -> None:
    p.add_argument(
        flag,
        type=_bool,
        nargs="?",
        const=True,
        default=default,
        metavar="BOOL",
        help=f"{help} (default: {str(default).lower()})",
    )


def serve_parser(prog: str = "torchtide serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve Triton model repositories over HTTP and gRPC (KServe V2). "
        "Takes tritonserver's flags with the same meaning and defaults.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model-repository",
        "--model-store",
        dest="repositories",
        action="append",
        type=Path,
        metavar="PATH",
        help="model repository (repeatable)",
    )
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none")
    p.add_argument("--repository-poll-secs", type=float, default=15.0)
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="model to load at start in explicit mode (repeatable, '*' = all)",
    )
    _add_bool(p, "--strict-readiness", True, "ready only when every model is ready")
    _add_bool(p, "--exit-on-error", False, "exit if a model fails to load at start")
    p.add_argument(
        "--exit-timeout-secs",
        type=float,
        default=30.0,
        help="how long shutdown waits for in-flight requests",
    )
    _add_bool(p, "--disable-auto-complete-config", False, "do not fill config from model files")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    _add_bool(p, "--allow-http", True, "serve HTTP")
    _add_bool(p, "--allow-grpc", True, "serve gRPC")
    _add_bool(p, "--allow-metrics", True, "serve Prometheus metrics")
    p.add_argument("--http-address", default="0.0.0.0")
    p.add_argument("--grpc-address", default="0.0.0.0")
    p.add_argument("--metrics-address", default="0.0.0.0")
    p.add_argument("--http-max-input-size", type=int, default=64 * 2**20, metavar="BYTES")
    _add_bool(p, "--allow-client-shm", False, "allow clients to register shared memory")
    p.add_argument("--log-verbose", type=int, default=0, metavar="LEVEL")
    _add_bool(p, "--log-info", True, "log info messages")
    _add_bool(p, "--log-warning", True, "log warnings")
    _add_bool(p, "--log-error", True, "log errors")
    p.add_argument(
        "--log-format",
        choices=["default", "ISO8601", "json"],
        default="default",
        help="'json' (ours) writes JSON lines",
    )
    p.add_argument("--log-file", default="", metavar="PATH")
    return p


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def setup_logging(args: argparse.Namespace) -> logging.Logger:
    logger = logging.getLogger("torchtide")
    handler: logging.Handler = (
        logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    )
    if args.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    elif args.log_format == "ISO8601":
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s] %(message)s", "%Y-%m-%dT%H:%M:%SZ"
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(levelname).1s%(asctime)s %(name)s] %(message)s", "%m%d %H:%M:%S")
        )
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger


def cmd_serve(argv: list[str], prog: str = "torchtide serve") -> int:
    parser = serve_parser(prog)
    args, unknown = parser.parse_known_args(argv)
    log = setup_logging(args)
    if unknown:
        known = [u for u in unknown if u.split("=")[0] in _IGNORED_FLAGS]
        other = [u for u in unknown if u not in known]
        if known:
            log.warning("accepted but not implemented tritonserver flags: %s", " ".join(known))
        if other:
            log.warning("unknown flags ignored: %s", " ".join(other))
    if not args.repositories:
        parser.error("--model-repository is required")
    missing = [r for r in args.repositories if not r.is_dir()]
    if missing:
        log.error("model repository '%s' does not exist", missing[0])
        return EXIT_USAGE

    from torchtide.app import App, AppOptions
    from torchtide.logsettings import LogSettings
    from torchtide.server import ServerOptions

    fmt = args.log_format if args.log_format != "json" else "default"
    options = AppOptions(
        server=ServerOptions(
            repositories=args.repositories,
            control_mode=args.model_control_mode,
            startup_models=args.load_model,
            strict_readiness=args.strict_readiness,
            auto_complete=not args.disable_auto_complete_config,
            exit_timeout_s=args.exit_timeout_secs,
            poll_secs=args.repository_poll_secs,
        ),
        http_port=args.http_port if args.allow_http else None,
        grpc_port=args.grpc_port if args.allow_grpc else None,
        metrics_port=args.metrics_port if args.allow_metrics else None,
        http_address=args.http_address,
        grpc_address=args.grpc_address,
        metrics_address=args.metrics_address,
        http_max_input_size=args.http_max_input_size,
        allow_client_shm=args.allow_client_shm,
    )

    async def main() -> int:
        app = App(options)
        app.server.log_settings = LogSettings(
            log,
            verbose=args.log_verbose,
            info=args.log_info,
            warning=args.log_warning,
            error=args.log_error,
            fmt=fmt,
            file=args.log_file,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await app.start()
        for name, fe in app.frontends.items():
            log.info("started %s on port %d", name, fe.port)
        failed = [e for e in app.server.repository_index() if e.get("state") == "UNAVAILABLE"]
        for e in failed:
            log.error(
                "model '%s' version %s is UNAVAILABLE: %s",
                e["name"],
                e.get("version"),
                e.get("reason"),
            )
        if failed and args.exit_on_error:
            await app.stop(0)
            return EXIT_FAIL
        await stop.wait()
        log.info("shutting down: draining in-flight requests (up to %ss)", args.exit_timeout_secs)
        drained = await app.stop(args.exit_timeout_secs)
        if not drained:
            log.warning("exit timeout reached with requests still in flight")
        return EXIT_OK if drained else EXIT_FAIL

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())


def cmd_check(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="torchtide check",
        description="Validate model repositories without serving them: load every model, print "
        "each model's state and problems. Exit code 1 when any model is broken.",
    )
    p.add_argument("repositories", nargs="+", type=Path, metavar="REPOSITORY")
    _add_bool(p, "--disable-auto-complete-config", False, "do not fill config from model files")
    args = p.parse_args(argv)
    logging.getLogger("torchtide").addHandler(logging.NullHandler())
    logging.getLogger("torchtide").propagate = False
    from torchtide.check import run_check

    return run_check(args.repositories, auto_complete=not args.disable_auto_complete_config)


def cmd_bench(argv: list[str]) -> int:
    from torchtide.bench.command import cmd_bench as run_bench

    return run_bench(argv)


def cmd_optimize(argv: list[str]) -> int:
    from torchtide.optimize.command import cmd_optimize as run_optimize

    return run_optimize(argv)


COMMANDS = {
    "serve": ("serve model repositories over HTTP and gRPC", cmd_serve),
    "check": ("validate model repositories without serving them", cmd_check),
    "bench": ("load-test a KServe V2 server (HTTP or gRPC), like perf_analyzer", cmd_bench),
    "optimize": ("make a model faster: build, gate, time variants; write the winner", cmd_optimize),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"usage: torchtide <command> [options]\n\ntorchtide {__version__}: a Triton-compatible "
            "inference server for PyTorch, ONNX and Python models.\n\ncommands:"
        )
        for name, (text, _) in COMMANDS.items():
            print(f"  {name:<8} {text}")
        print("\nRun 'torchtide <command> --help' for a command's options.")
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] in ("-V", "--version"):
        print(f"torchtide {__version__}")
        return EXIT_OK
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        print(f"torchtide: unknown command '{argv[0]}' (see 'torchtide --help')", file=sys.stderr)
        return EXIT_USAGE
    result: int = cmd[1](argv[1:])  # type: ignore[operator]
    return result


def tritonserver_main() -> int:
    """`tritonserver --model-store=... --grpc-port=...` as KServe's Triton runtime starts it."""
    return cmd_serve(sys.argv[1:], prog="tritonserver")


if __name__ == "__main__":
    sys.exit(main())
