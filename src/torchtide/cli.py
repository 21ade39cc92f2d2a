"""The `torchtide` command (and a `tritonserver` alias that takes tritonserver's flags)."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import errno
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from torchtide import __version__
from torchtide.frontends.limits import GrpcLimits, HttpLimits

if TYPE_CHECKING:
    from torchtide.app import ListenError
    from torchtide.tracing import TraceOptions

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
        "--metrics-interval-ms",
        "--metrics-config",
        "--cache-config",
        "--rate-limit",
        "--rate-limit-resource",
        "--pinned-memory-pool-byte-size",
        "--cuda-memory-pool-byte-size",
        "--backend-config",
        "--backend-directory",
        "--repoagent-directory",
        "--model-config-name",
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

# tritonserver's security flags. One that serve_parser does not define is refused: a deployment
# copied from Triton that relies on it must not run open. Defining it in the parser accepts it.
_SECURITY_FLAGS = frozenset(
    (
        "--http-restricted-api",
        "--grpc-restricted-protocol",
        "--grpc-use-ssl",
        "--grpc-use-ssl-mutual",
        "--grpc-server-cert",
        "--grpc-server-key",
        "--grpc-root-cert",
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


def _repository(text: str) -> Path | str:
    """A local folder, or an s3://, gs:// or as:// URL (checked here, synced by the server)."""
    from torchtide.repository_remote import RemoteError, is_remote, parse_url

    if not is_remote(text):
        return Path(text)
    try:
        parse_url(text)
    except RemoteError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _count(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{value}'")
    return n


def _seconds(value: str) -> float:
    t = float(value)
    if not t >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0 (0: no limit), got '{value}'")
    return t


def _add_limits(p: argparse.ArgumentParser) -> None:
    """Ours (tritonserver has none of these): what one client may hold; README "Limits"."""
    h, g = HttpLimits(), GrpcLimits()
    for flag, default, text in (
        ("header", h.header_timeout_s, "for a request's headers (or a first request), else 408"),
        ("body", h.body_timeout_s, "for more of a request body after a pause, else 408"),
        ("idle", h.idle_timeout_s, "before an idle keep-alive connection is closed"),
    ):
        p.add_argument(
            f"--http-{flag}-timeout-secs", type=_seconds, default=default, help=f"wait {text}"
        )
    p.add_argument(
        "--http-max-connections",
        type=_count,
        default=h.max_connections,
        help="open HTTP connections; more are answered 503 and closed",
    )
    for flag, default, text in (
        ("message-size", g.max_message_size, "bytes of a request message, also decompressed"),
        ("header-list-size", g.max_header_list_size, "bytes of a request's header block"),
        ("concurrent-streams", g.max_concurrent_streams, "open streams per connection"),
        ("control-frames", g.max_control_frames, "SETTINGS/PING/... frames per connection/10 s"),
        ("resets", g.max_resets, "streams a client resets while served, beyond those answered"),
        (
            "connection-buffer-size",
            g.max_connection_buffer_size,
            "request bytes a connection may hold beyond its streams' 1 MiB windows (at least "
            "one message); more wait",
        ),
        ("connections", g.max_connections, "open gRPC connections; more get GOAWAY and close"),
    ):
        p.add_argument(f"--grpc-max-{flag}", type=_count, default=default, help=text)
    for flag, default, text in (
        ("handshake", g.handshake_timeout_s, "for a new connection's HTTP/2 preface and SETTINGS"),
        ("idle", g.idle_timeout_s, "before a connection with no call open gets GOAWAY"),
    ):
        p.add_argument(
            f"--grpc-{flag}-timeout-secs", type=_seconds, default=default, help=f"wait {text}"
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
        type=_repository,
        metavar="PATH",
        help="model repository: a folder, or s3://, gs://, as:// (repeatable)",
    )
    p.add_argument(
        "--model-cache-dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="where remote repositories are mirrored (ours; default: $TORCHTIDE_MODEL_CACHE_DIR, "
        "$XDG_CACHE_HOME/torchtide/models or /tmp/torchtide-cache)",
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
    _add_limits(p)
    _add_bool(p, "--allow-client-shm", False, "allow clients to register shared memory")
    _add_bool(
        p,
        "--allow-profiling",
        False,
        "ours: let clients profile a model's next executions (`torchtide profile`, HTTP "
        "POST /v2/models/M/profile, API group 'profile')",
    )
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
    p.add_argument(
        "--server-name",
        "--id",
        dest="server_name",
        default="triton",
        metavar="NAME",
        help="the 'name' server metadata reports (ours; tritonserver's --id). Clients and "
        "Triton's example scripts check for 'triton'; torchtide's version is in 'version'",
    )
    _add_security_flags(p)
    p.add_argument(
        "--trace-config",
        action="append",
        default=[],
        metavar="[MODE,]SETTING=VALUE",
        help="tracing, as tritonserver takes it (repeatable): rate=N, level=OFF|TIMESTAMPS|"
        "TENSORS, count=N, mode=triton|opentelemetry, triton,file=PATH, triton,log-frequency=N, "
        "opentelemetry,url=URL, opentelemetry,resource=KEY=VALUE, opentelemetry,bsp_*=N",
    )
    # tritonserver's older spellings, still accepted (and deprecated) by 2.51
    p.add_argument("--trace-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--trace-level", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--trace-rate", default=None, help=argparse.SUPPRESS)
    p.add_argument("--trace-count", default=None, help=argparse.SUPPRESS)
    p.add_argument("--trace-log-frequency", default=None, help=argparse.SUPPRESS)
    return p


def _add_security_flags(p: argparse.ArgumentParser) -> None:
    from torchtide.access import GROUP_NAMES

    groups = ", ".join(GROUP_NAMES)
    p.add_argument(
        "--http-restricted-api",
        action="append",
        default=[],
        metavar="APIS:KEY=VALUE",
        help="as tritonserver: the comma-separated API groups need header KEY with VALUE "
        f"(else 403); repeatable, a group at most once. Groups: {groups}",
    )
    p.add_argument(
        "--grpc-restricted-protocol",
        action="append",
        default=[],
        metavar="APIS:KEY=VALUE",
        help="as tritonserver: the groups need metadata 'triton-grpc-protocol-KEY' with VALUE "
        "(else UNAVAILABLE); repeatable",
    )
    p.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="PATH",
        help="bearer tokens, lines '<api>[,<api>...]:<token>' ('*' = all groups); every group "
        "not in --auth-open-api then needs 'Authorization: Bearer <token>'. Re-read on change",
    )
    p.add_argument(
        "--auth-open-api",
        default="health",
        metavar="APIS",
        help="API groups that need no bearer token ('' for none)",
    )
    for proto, ours in (("grpc", ""), ("http", " (ours; tritonserver has no HTTP TLS)")):
        _add_bool(p, f"--{proto}-use-ssl", False, f"serve {proto.upper()} over TLS{ours}")
        _add_bool(
            p,
            f"--{proto}-use-ssl-mutual",
            False,
            f"{proto.upper()} over TLS, requiring client certificates signed by "
            f"--{proto}-root-cert (implies --{proto}-use-ssl)",
        )
        p.add_argument(f"--{proto}-server-cert", default="", metavar="PATH", help="PEM cert")
        p.add_argument(f"--{proto}-server-key", default="", metavar="PATH", help="PEM key")
        p.add_argument(
            f"--{proto}-root-cert", default="", metavar="PATH", help="PEM CAs for client certs"
        )


def security_options(args: argparse.Namespace, log: logging.Logger) -> dict[str, object]:
    """AppOptions' security fields from the flags; ValueError names a bad flag value."""
    from torchtide.access import Restrictions, parse_groups, parse_restriction

    http: Restrictions = {}
    for arg in args.http_restricted_api:
        parse_restriction(arg, "http-restricted-api", grpc=False, into=http)
    grpc: Restrictions = {}
    for arg in args.grpc_restricted_protocol:
        parse_restriction(arg, "grpc-restricted-protocol", grpc=True, into=grpc)
    return {
        "http_restricted": http,
        "grpc_restricted": grpc,
        "auth_token_file": args.auth_token_file,
        "auth_open_apis": parse_groups(args.auth_open_api),
        "http_tls": _tls(args, "http", log),
        "grpc_tls": _tls(args, "grpc", log),
    }


def _tls(args: argparse.Namespace, proto: str, log: logging.Logger) -> object:
    from torchtide.tls import TlsOptions

    mutual = getattr(args, f"{proto}_use_ssl_mutual")
    use = getattr(args, f"{proto}_use_ssl") or mutual  # mutual preempts, as in tritonserver
    cert, key, root = (
        getattr(args, f"{proto}_{n}") for n in ("server_cert", "server_key", "root_cert")
    )
    if not use:
        if cert or key or root:
            log.warning(
                "--%s-server-cert/-key/--%s-root-cert are ignored unless --%s-use-ssl is true",
                proto,
                proto,
                proto,
            )
        return None
    if not cert or not key:
        raise ValueError(f"--{proto}-use-ssl needs --{proto}-server-cert and --{proto}-server-key")
    if mutual and not root:
        raise ValueError(f"--{proto}-use-ssl-mutual needs --{proto}-root-cert")
    return TlsOptions(Path(cert), Path(key), Path(root) if root else None, mutual)


_DEPRECATED_TRACE = {
    "trace_file": "--trace-config triton,file=<filepath>",
    "trace_level": "--trace-config level=<OFF|TIMESTAMPS|TENSORS>",
    "trace_rate": "--trace-config rate=<rate value>",
    "trace_count": "--trace-config count=<count value>",
    "trace_log_frequency": "--trace-config triton,log-frequency=<log frequency value>",
}


def trace_options(args: argparse.Namespace, log: logging.Logger) -> TraceOptions:
    """The tracing flags → TraceOptions; raises TraceFlagError with tritonserver's message."""
    from torchtide.tracing import parse_trace_flags

    for dest, instead in _DEPRECATED_TRACE.items():
        if getattr(args, dest):
            flag = "--" + dest.replace("_", "-")
            log.warning("'%s' has been deprecated and will be removed; use '%s'", flag, instead)
    return parse_trace_flags(
        args.trace_config,
        file=args.trace_file,
        levels=args.trace_level,
        rate=args.trace_rate,
        count=args.trace_count,
        log_frequency=args.trace_log_frequency,
    )


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


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _sort_unknown(parser: argparse.ArgumentParser, unknown: list[str]) -> tuple[list[str], str]:
    """Splits what the parser did not know into tritonserver flags accepted with a warning, and
    the one-line error for the rest ('' when there is none)."""
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    ignored: list[str] = []
    problems: list[str] = []
    i = 0
    while i < len(unknown):
        token = unknown[i]
        name = token.split("=", 1)[0]
        i += 1
        if name in _IGNORED_FLAGS:
            if "=" not in token and i < len(unknown) and not unknown[i].startswith("-"):
                token, i = f"{token} {unknown[i]}", i + 1  # its value
            ignored.append(token)
        elif name in _SECURITY_FLAGS:
            problems.append(
                f"{name} is a tritonserver security flag that torchtide does not implement yet; "
                "refusing to start rather than serve without it"
            )
        elif name.startswith("-"):
            hint = _did_you_mean(name, sorted({*flags, *_IGNORED_FLAGS, *_SECURITY_FLAGS}))
            problems.append(f"unknown flag '{name}'{hint}")
        else:
            problems.append(f"unexpected argument '{token}'")
    return ignored, "; ".join(problems)


def _listen_error_line(e: ListenError) -> str:
    flag = f"--{e.frontend}"
    if e.errno == errno.EADDRINUSE:
        return (
            f"{e.frontend} port {e.port} is already in use on {e.host} (another server?); "
            f"choose another with {flag}-port, or turn it off with --allow-{e.frontend}=false"
        )
    return (
        f"cannot listen for {e.frontend} on {e.host}:{e.port}: {e.reason} "
        f"(see {flag}-address and {flag}-port)"
    )


def cmd_serve(argv: list[str], prog: str = "torchtide serve") -> int:
    parser = serve_parser(prog)
    args, unknown = parser.parse_known_args(argv)
    ignored, refused = _sort_unknown(parser, unknown)
    if refused:
        print(f"{prog}: error: {refused}", file=sys.stderr)
        return EXIT_USAGE
    log = setup_logging(args)
    if ignored:
        log.warning("accepted but not implemented tritonserver flags: %s", " ".join(ignored))
    if not args.repositories:
        parser.error("--model-repository is required")
    local = [r for r in args.repositories if isinstance(r, Path)]
    remote = [r for r in args.repositories if isinstance(r, str)]
    missing = [r for r in local if not r.is_dir()]
    if missing:
        log.error("model repository '%s' does not exist", missing[0])
        return EXIT_USAGE
    from torchtide.repository_remote import RemoteError, parse_url, require_package

    try:
        for url in remote:
            require_package(parse_url(url))
    except RemoteError as e:
        log.error("%s", e)
        return EXIT_USAGE

    from torchtide.access import TokenFileError
    from torchtide.app import App, AppOptions, ListenError
    from torchtide.logsettings import LogSettings, model_table
    from torchtide.server import ServerOptions
    from torchtide.tls import TlsError
    from torchtide.tracing import TraceFlagError

    try:
        trace = trace_options(args, log)
    except TraceFlagError as e:
        log.error("%s", e)
        return EXIT_USAGE

    try:
        security = security_options(args, log)
    except ValueError as bad:
        parser.error(str(bad))
    fmt = args.log_format if args.log_format != "json" else "default"
    options = AppOptions(
        server=ServerOptions(
            repositories=local,
            remote_repositories=remote,
            model_cache_dir=args.model_cache_dir,
            control_mode=args.model_control_mode,
            startup_models=args.load_model,
            strict_readiness=args.strict_readiness,
            auto_complete=not args.disable_auto_complete_config,
            exit_timeout_s=args.exit_timeout_secs,
            poll_secs=args.repository_poll_secs,
            server_name=args.server_name,
            trace=trace,
            allow_profiling=args.allow_profiling,
        ),
        http_port=args.http_port if args.allow_http else None,
        grpc_port=args.grpc_port if args.allow_grpc else None,
        metrics_port=args.metrics_port if args.allow_metrics else None,
        http_address=args.http_address,
        grpc_address=args.grpc_address,
        metrics_address=args.metrics_address,
        http_max_input_size=args.http_max_input_size,
        allow_client_shm=args.allow_client_shm,
        **security,  # type: ignore[arg-type]
        http_limits=HttpLimits(
            header_timeout_s=args.http_header_timeout_secs,
            body_timeout_s=args.http_body_timeout_secs,
            idle_timeout_s=args.http_idle_timeout_secs,
            max_connections=args.http_max_connections,
        ),
        grpc_limits=GrpcLimits(
            max_message_size=args.grpc_max_message_size,
            max_header_list_size=args.grpc_max_header_list_size,
            max_concurrent_streams=args.grpc_max_concurrent_streams,
            max_control_frames=args.grpc_max_control_frames,
            max_resets=args.grpc_max_resets,
            max_connection_buffer_size=args.grpc_max_connection_buffer_size,
            max_connections=args.grpc_max_connections,
            handshake_timeout_s=args.grpc_handshake_timeout_secs,
            idle_timeout_s=args.grpc_idle_timeout_secs,
        ),
    )

    async def main() -> int:
        try:
            app = App(options)
        except RuntimeError as err:  # e.g. tracing to OpenTelemetry without its SDK installed
            log.error("%s", err)
            return EXIT_USAGE
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
        try:
            await app.start()  # each listener and each model's load announce themselves
        except (TlsError, TokenFileError) as bad:
            log.error("%s", bad)
            return EXIT_USAGE
        except ListenError as listen_error:
            print(f"{prog}: error: {_listen_error_line(listen_error)}", file=sys.stderr)
            return EXIT_FAIL
        index = app.server.repository_index()
        log.info("\n%s", model_table(index))
        # Each failed load was logged once, when it failed.
        failed = [e for e in index if e.get("state") == "UNAVAILABLE"]
        if (failed or app.server.remotes.errors()) and args.exit_on_error:
            names = sorted({str(e["name"]) for e in failed}) or ["a model repository"]
            log.error("exiting: %s failed to load (--exit-on-error)", ", ".join(names))
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


def cmd_tune(argv: list[str]) -> int:
    from torchtide.tune.command import cmd_tune as run_tune

    return run_tune(argv)


def cmd_optimize(argv: list[str]) -> int:
    from torchtide.optimize.command import cmd_optimize as run_optimize

    return run_optimize(argv)


def cmd_profile(argv: list[str]) -> int:
    from torchtide.profile_command import cmd_profile as run_profile

    return run_profile(argv)


COMMANDS = {
    "serve": ("serve model repositories over HTTP and gRPC", cmd_serve),
    "check": ("validate model repositories without serving them", cmd_check),
    "bench": ("load-test a KServe V2 server (HTTP or gRPC), like perf_analyzer", cmd_bench),
    "tune": ("search a model's instances, threads and batching on a live server", cmd_tune),
    "optimize": ("make a model faster: build, gate, time variants; write the winner", cmd_optimize),
    "profile": ("profile a model's next executions on a running server", cmd_profile),
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
        hint = _did_you_mean(argv[0], list(COMMANDS))
        print(
            f"torchtide: unknown command '{argv[0]}'{hint} (see 'torchtide --help')",
            file=sys.stderr,
        )
        return EXIT_USAGE
    result: int = cmd[1](argv[1:])  # type: ignore[operator]
    return result


def tritonserver_main() -> int:
    """`tritonserver --model-store=... --grpc-port=...` as KServe's Triton runtime starts it."""
    return cmd_serve(sys.argv[1:], prog="tritonserver")


if __name__ == "__main__":
    sys.exit(main())
