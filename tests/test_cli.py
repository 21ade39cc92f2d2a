"""The command line: flags torchtide does not know are refused with a suggestion, tritonserver's
unimplemented security flags refuse to start, a busy port is one line naming the flag to change."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from torchtide import cli
from torchtide.cli import main

ROOT = Path(__file__).resolve().parent.parent
SECURITY_FLAGS = [
    "--http-restricted-api=model-repository:admin-key=secret",
    "--grpc-restricted-protocol=model-repository:admin-key=secret",
    "--grpc-use-ssl=true",
    "--grpc-use-ssl-mutual=true",
    "--grpc-server-cert=/certs/server.crt",
    "--grpc-server-key=/certs/server.key",
    "--grpc-root-cert=/certs/ca.crt",
]


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """`serve` points the torchtide logger at the stderr of the moment; put it back after."""
    logger = logging.getLogger("torchtide")
    handlers, propagate = logger.handlers[:], logger.propagate
    yield
    logger.handlers[:], logger.propagate = handlers, propagate


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--htpp-port=9000"], "unknown flag '--htpp-port' (did you mean '--http-port'?)"),
        (["--htpp-port", "9000"], "unknown flag '--htpp-port' (did you mean '--http-port'?)"),
        (["--model-repositry=x"], "(did you mean '--model-repository'?)"),
        (["--strict-readyness=false"], "(did you mean '--strict-readiness'?)"),
        (["--backend-confg=python,x=y"], "(did you mean '--backend-config'?)"),
        (["--zzz"], "unknown flag '--zzz'"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_unknown_flags_are_refused_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    # A missing repository: were the flags accepted, serve would stop there, never start.
    assert main(["serve", f"--model-repository={tmp_path / 'nope'}", *flags]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("torchtide serve: error: ") and expected in err


def test_unknown_flag_under_the_tritonserver_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_serve(["--model-store=/x", "--grcp-port=9000"], prog="tritonserver") == 2
    assert one_line(capsys.readouterr().err) == (
        "tritonserver: error: unknown flag '--grcp-port' (did you mean '--grpc-port'?)"
    )


def test_every_tritonserver_security_flag_is_implemented() -> None:
    """None of tritonserver's security flags is refused any more: the parser defines them all."""
    parser = cli.serve_parser()
    defined = {s for action in parser._actions for s in action.option_strings}
    assert {f.split("=")[0] for f in SECURITY_FLAGS} <= defined
    assert defined >= cli._SECURITY_FLAGS


def test_a_security_flag_the_parser_lacks_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A security flag serve_parser does not define (say, one tritonserver adds later) must
    refuse to start, never run open."""
    monkeypatch.setattr(cli, "_SECURITY_FLAGS", cli._SECURITY_FLAGS | {"--grpc-ssl-future"})
    assert main(["serve", f"--model-repository={tmp_path / 'nope'}", "--grpc-ssl-future=1"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "--grpc-ssl-future is a tritonserver security flag" in err
    assert "refusing to start" in err


@pytest.mark.parametrize("flag", SECURITY_FLAGS)
def test_security_flags_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    # Past the flag check: the next problem is the missing repository.
    assert main(["serve", f"--model-repository={tmp_path / 'nope'}", flag]) == 2
    err = capsys.readouterr().err
    assert "security flag" not in err and "does not exist" in err


def test_unimplemented_tritonserver_flags_still_only_warn() -> None:
    ignored, refused = cli._sort_unknown(
        cli.serve_parser(), ["--backend-config", "python,x=y", "--rate-limit=off"]
    )
    assert refused == "" and ignored == ["--backend-config python,x=y", "--rate-limit=off"]


@pytest.mark.parametrize(
    "word,expected",
    [("serv", "did you mean 'serve'?"), ("chekc", "did you mean 'check'?"), ("xyz", None)],
)
def test_unknown_subcommand(capsys: pytest.CaptureFixture[str], word: str, expected: str) -> None:
    assert main([word]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"unknown command '{word}'" in err
    assert (expected in err) if expected else "did you mean" not in err


@pytest.mark.parametrize("listener", ["http", "grpc", "metrics"])
def test_a_busy_port_is_one_line_naming_the_flag(tmp_path: Path, listener: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = {name: free_port() for name in ("http", "grpc", "metrics")}
        ports[listener] = taken
        args = [sys.executable, "-m", "torchtide.cli", "serve", f"--model-repository={tmp_path}"]
        for name, port in ports.items():
            args += [f"--{name}-port={port}", f"--{name}-address=127.0.0.1"]
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"},
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [
        f"torchtide serve: error: {listener} port {taken} is already in use on 127.0.0.1 "
        f"(another server?); choose another with --{listener}-port, "
        f"or turn it off with --allow-{listener}=false"
    ], done.stderr
