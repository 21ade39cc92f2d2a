"""TLS on both listeners: gRPC with Triton's SSL options (ALPN h2, mutual TLS), HTTPS (ours).
Certificates are made per run with trustme; the clients are the real tritonclient (sync and aio,
HTTP and gRPC), curl and Python's ssl module."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import trustme
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port, start_app
from tests.models import write_add_sub
from torchtide.app import AppThread
from torchtide.tls import TlsError, TlsOptions

CURL = shutil.which("curl")
SRC = Path(__file__).resolve().parent.parent / "src"


@dataclass
class Pki:
    ca: Path  # the CA that signs the server's and the good client's certificates
    cert: Path  # server certificate chain (127.0.0.1, localhost)
    key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _write_cert(cert: trustme.LeafCert, d: Path, name: str) -> tuple[Path, Path]:
    chain, key = d / f"{name}.pem", d / f"{name}.key"
    chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert, key = _write_cert(ca.issue_cert("127.0.0.1", "localhost"), d, "server")
    client_cert, client_key = _write_cert(ca.issue_cert("client.example"), d, "client")
    rogue_cert, rogue_key = _write_cert(rogue_ca.issue_cert("rogue.example"), d, "rogue")
    return Pki(d / "ca.pem", cert, key, client_cert, client_key, rogue_cert, rogue_key)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("repo")
    write_add_sub(r)
    return r


@pytest.fixture(scope="module")
def tls(repo: Path, pki: Pki) -> Iterator[AppThread]:
    opts = TlsOptions(pki.cert, pki.key)
    app = start_app(repo, http_tls=opts, grpc_tls=opts)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def mtls(repo: Path, pki: Pki) -> Iterator[AppThread]:
    opts = TlsOptions(pki.cert, pki.key, pki.ca, mutual=True)
    app = start_app(repo, http_tls=opts, grpc_tls=opts)
    yield app
    app.stop()


def inputs(mod: Any) -> list[Any]:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    out = []
    for name in ("INPUT0", "INPUT1"):
        i = mod.InferInput(name, [1, 16], "INT32")
        i.set_data_from_numpy(data)
        out.append(i)
    return out


def check_result(result: Any) -> None:
    assert result.as_numpy("OUTPUT0").tolist() == [[2 * i for i in range(16)]]


def grpc_client(app: AppThread, pki: Pki, **kw: Any) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        f"127.0.0.1:{app.app.port('grpc')}", ssl=True, root_certificates=str(pki.ca), **kw
    )


def http_client(app: AppThread, pki: Pki, **options: Any) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(
        f"127.0.0.1:{app.app.port('http')}",
        ssl=True,
        ssl_options={"ca_certs": str(pki.ca), **options},
    )


def tls_connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


# ---------------------------------------------------------------------------- gRPC


def test_grpc_over_tls(tls: AppThread, pki: Pki) -> None:
    c = grpc_client(tls, pki)
    try:
        assert c.is_server_ready()
        check_result(c.infer("add_sub", inputs(grpcclient)))
        assert c.get_model_config("add_sub").config.name == "add_sub"
    finally:
        c.close()


def test_grpc_tls_negotiates_h2(tls: AppThread, pki: Pki) -> None:
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(tls.app.port("grpc"), ctx) as s:
        assert s.selected_alpn_protocol() == "h2"
        assert s.version() in ("TLSv1.2", "TLSv1.3")


def test_grpc_tls_refuses_plaintext_and_untrusted_clients(tls: AppThread, pki: Pki) -> None:
    plain = grpcclient.InferenceServerClient(f"127.0.0.1:{tls.app.port('grpc')}")
    try:
        with pytest.raises(InferenceServerException) as e:
            plain.is_server_live(client_timeout=30)
        assert e.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        plain.close()
    untrusting = grpcclient.InferenceServerClient(
        f"127.0.0.1:{tls.app.port('grpc')}", ssl=True, root_certificates=str(pki.client_cert)
    )
    try:
        with pytest.raises(InferenceServerException) as e:
            untrusting.is_server_live(client_timeout=30)
        assert e.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        untrusting.close()


def test_grpc_aio_and_stream_over_tls(tls: AppThread, pki: Pki) -> None:
    async def main() -> None:
        c = grpcaio.InferenceServerClient(
            f"127.0.0.1:{tls.app.port('grpc')}", ssl=True, root_certificates=str(pki.ca)
        )
        try:
            check_result(await c.infer("add_sub", inputs(grpcclient)))

            async def requests() -> Any:
                for _ in range(3):
                    yield {"model_name": "add_sub", "inputs": inputs(grpcclient)}

            n = 0
            async for result, error in c.stream_infer(requests()):
                assert error is None
                check_result(result)
                n += 1
            assert n == 3
        finally:
            await c.close()

    asyncio.run(main())


def test_grpc_mutual_tls(mtls: AppThread, pki: Pki) -> None:
    good = grpc_client(
        mtls, pki, private_key=str(pki.client_key), certificate_chain=str(pki.client_cert)
    )
    try:
        check_result(good.infer("add_sub", inputs(grpcclient)))
    finally:
        good.close()
    for kw in ({}, {"private_key": str(pki.rogue_key), "certificate_chain": str(pki.rogue_cert)}):
        bad = grpc_client(mtls, pki, **kw)
        try:
            with pytest.raises(InferenceServerException) as e:
                bad.is_server_live(client_timeout=30)
            assert e.value.status() == "StatusCode.UNAVAILABLE"
        finally:
            bad.close()


# ---------------------------------------------------------------------------- HTTP


def test_https_with_tritonclient(tls: AppThread, pki: Pki) -> None:
    c = http_client(tls, pki)
    try:
        assert c.is_server_ready()
        check_result(c.infer("add_sub", inputs(httpclient)))
        assert c.get_model_metadata("add_sub")["name"] == "add_sub"
    finally:
        c.close()


def test_https_with_aio_client(tls: AppThread, pki: Pki) -> None:
    async def main() -> None:
        ctx = ssl.create_default_context(cafile=pki.ca)
        c = httpaio.InferenceServerClient(
            f"127.0.0.1:{tls.app.port('http')}", ssl=True, ssl_context=ctx
        )
        try:
            assert await c.is_server_live()
            check_result(await c.infer("add_sub", inputs(httpclient)))
        finally:
            await c.close()

    asyncio.run(main())


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "-sS", "--max-time", "60", *args], capture_output=True, text=True, timeout=90
    )


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_https_with_curl(tls: AppThread, pki: Pki) -> None:
    base = f"https://127.0.0.1:{tls.app.port('http')}"
    r = curl(
        "--cacert", str(pki.ca), "-o", "/dev/null", "-w", "%{http_code}", f"{base}/v2/health/ready"
    )
    assert r.stdout == "200", r.stderr
    body = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    r = curl("--cacert", str(pki.ca), "-d", json.dumps(body), f"{base}/v2/models/add_sub/infer")
    assert r.returncode == 0, r.stderr
    outputs = {o["name"]: o["data"] for o in json.loads(r.stdout)["outputs"]}
    assert outputs["OUTPUT0"] == [2 * i for i in range(16)]
    # Not trusted without the CA; plain HTTP on the TLS port gets no answer.
    assert curl(f"{base}/v2/health/ready").returncode != 0
    plain = curl("-o", "/dev/null", f"http://127.0.0.1:{tls.app.port('http')}/v2/health/ready")
    assert plain.returncode != 0


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_https_mutual_tls(mtls: AppThread, pki: Pki) -> None:
    url = f"https://127.0.0.1:{mtls.app.port('http')}/v2/health/ready"
    ok = curl(
        "--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key),
        "-o", "/dev/null", "-w", "%{http_code}", url,
    )  # fmt: skip
    assert ok.stdout == "200", ok.stderr
    assert curl("--cacert", str(pki.ca), url).returncode != 0
    rogue = curl(
        "--cacert", str(pki.ca), "--cert", str(pki.rogue_cert), "--key", str(pki.rogue_key), url
    )
    assert rogue.returncode != 0
    c = http_client(mtls, pki, certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    try:
        check_result(c.infer("add_sub", inputs(httpclient)))
    finally:
        c.close()


# ---------------------------------------------------------------------------- configuration


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    http: int
    grpc: int

    def output(self) -> str:
        return self.proc.stdout.read().decode() if self.proc.stdout else ""


def serve(repo: Path, *flags: str) -> Served:
    """`torchtide serve` from this checkout's sources in a child process."""
    http, grpc = free_port(), free_port()
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchtide.cli", "serve", f"--model-repository={repo}",
         f"--http-port={http}", f"--grpc-port={grpc}", "--allow-metrics=false",
         "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    return Served(proc, http, grpc)


def test_unusable_certificates_stop_the_start(repo: Path, pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsError, match=f"cannot use the TLS certificate '{missing}'"):
        start_app(repo, grpc_tls=TlsOptions(missing, pki.key))
    with pytest.raises(TlsError, match="cannot use the TLS certificate"):
        start_app(repo, http_tls=TlsOptions(pki.cert, pki.rogue_key))  # key of another cert
    with pytest.raises(TlsError, match="mutual TLS needs a root certificate"):
        start_app(repo, http_tls=TlsOptions(pki.cert, pki.key, mutual=True))


def test_cli_flags_serve_tls(repo: Path, pki: Pki) -> None:
    """`torchtide serve` with Triton's gRPC SSL flags and ours for HTTP."""
    s = serve(
        repo,
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={pki.cert}",
        f"--grpc-server-key={pki.key}",
        f"--grpc-root-cert={pki.ca}",
        "--http-use-ssl",
        f"--http-server-cert={pki.cert}",
        f"--http-server-key={pki.key}",
    )
    try:
        ctx = ssl.create_default_context(cafile=pki.ca)

        def https_ready() -> bool:
            try:
                with tls_connect(s.http, ctx) as tls_sock:
                    tls_sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                    return tls_sock.recv(64).startswith(b"HTTP/1.1 200")
            except OSError:
                assert s.proc.poll() is None, "the server exited"
                return False

        deadline = time.monotonic() + 120
        while not https_ready():
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.1)
        c = grpcclient.InferenceServerClient(
            f"127.0.0.1:{s.grpc}",
            ssl=True,
            root_certificates=str(pki.ca),
            private_key=str(pki.client_key),
            certificate_chain=str(pki.client_cert),
        )
        try:
            check_result(c.infer("add_sub", inputs(grpcclient)))
        finally:
            c.close()
    finally:
        s.proc.kill()
        s.proc.wait(30)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grpc-use-ssl"], "--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key"),
        (["--http-use-ssl-mutual", "--http-server-cert=a", "--http-server-key=b"],
         "--http-use-ssl-mutual needs --http-root-cert"),
        (["--http-use-ssl", "--http-server-cert=/nonexistent.pem", "--http-server-key=/x.key"],
         "cannot use the TLS certificate '/nonexistent.pem'"),
    ],
)  # fmt: skip
def test_cli_refuses_bad_tls_flags(repo: Path, flags: list[str], message: str) -> None:
    s = serve(repo, *flags)
    assert s.proc.wait(120) == 2
    out = s.output()
    assert message in out
    assert "Traceback" not in out
