"""A model repository on a real S3-compatible server: moto's standalone server on a loopback
port, with IAM authentication on, read through s3fs with credentials from botocore's own chain.
Object GETs are counted from the server's request log, not from our code."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import free_port
from tests.models import write_model
from torchtide.app import AppOptions, AppThread
from torchtide.repository_remote import RemoteRepository
from torchtide.server import ServerOptions

pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "models"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

PLUS_CONFIG = """
backend: "python"
max_batch_size: 4
input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [1] }]
version_policy { all {} }
"""


def plus_py(k: float) -> str:
    return f"""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() + {k})]
            )
            for r in requests
        ]
"""


def write_plus(repo: Path, name: str, versions: dict[int, float]) -> None:
    write_model(repo, name, PLUS_CONFIG, {f"{v}/model.py": plus_py(k) for v, k in versions.items()})


@dataclass
class Moto:
    port: int
    log: Path
    key: str
    secret: str
    role: str  # a role that a web identity may assume, with S3 rights

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        return f"s3://127.0.0.1:{self.port}/{BUCKET}/{prefix}"  # Triton's host:port form

    def object_gets(self, prefix: str) -> int:
        """GETs of objects under the prefix that the server answered (listings excluded)."""
        line = re.compile(rf'"GET /{BUCKET}/{re.escape(prefix)}/\S* HTTP/1\.1" 200 ')
        return sum(1 for x in self.log.read_text().splitlines() if line.search(_ANSI.sub("", x)))

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
        )

    def upload(self, local: Path, prefix: str) -> int:
        s3 = self.client()
        paths = [p for p in sorted(local.rglob("*")) if p.is_file()]
        for p in paths:
            s3.put_object(
                Bucket=BUCKET, Key=f"{prefix}/{p.relative_to(local)}", Body=p.read_bytes()
            )
        return len(paths)


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("moto server did not start listening")


def reset_auth(endpoint: str, free_requests: int) -> None:
    """Authentication on, after `free_requests` more requests that need none."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=str(free_requests).encode(),
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=30).read()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto's standalone server; an IAM user with S3 rights; authentication then switched on,
    so a wrong key or secret is refused as AWS refuses it."""
    import boto3

    log = tmp_path_factory.mktemp("moto") / "requests.log"
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait_for_port(proc, port, log)
        endpoint = f"http://127.0.0.1:{port}"
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        admin |= {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="torchtide")
        policy = {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(
            UserName="torchtide",
            PolicyName="s3",
            PolicyDocument=json.dumps({"Version": "2012-10-17", **policy}),
        )
        key = iam.create_access_key(UserName="torchtide")["AccessKey"]
        trust = {
            "Effect": "Allow",
            "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.example"},
            "Action": "sts:AssumeRoleWithWebIdentity",
        }
        role = iam.create_role(
            RoleName="serving",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]}),
        )["Role"]["Arn"]
        iam.put_role_policy(
            RoleName="serving",
            PolicyName="s3",
            PolicyDocument=json.dumps({"Version": "2012-10-17", **policy}),
        )
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        reset_auth(endpoint, 0)  # from now on every request must be signed by a known key
        yield Moto(port, log, key["AccessKeyId"], key["SecretAccessKey"], role)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def aws_env(moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the environment, where botocore's chain looks first; nothing of the
    machine's own AWS configuration."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "TRITON_CLOUD_CREDENTIAL_PATH":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def start(cache: Path, remote: list[str], local: list[Path] | None = None, **kw: Any) -> AppThread:
    opts = AppOptions(
        server=ServerOptions(
            local or [], remote_repositories=remote, model_cache_dir=cache, poll_secs=3600, **kw
        ),
        http_port=free_port(),
        grpc_port=None,
        metrics_port=None,
        http_address="127.0.0.1",
    )
    return AppThread(opts).start()


def infer(app: AppThread, model: str, version: str = "") -> float:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{app.app.port('http')}")
    try:
        x = httpclient.InferInput("IN", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        return float(client.infer(model, [x], model_version=version).as_numpy("OUT")[0, 0])
    finally:
        client.close()


@pytest.mark.usefixtures("aws_env")
def test_load_poll_change_one_version_restart(moto: Moto, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_plus(src, "plus", {1: 1.0, 2: 2.0})
    write_plus(src, "other", {1: 5.0})
    objects = moto.upload(src, "repo1")
    cache = tmp_path / "cache"
    app = start(cache, [moto.url("repo1")], control_mode="poll")
    try:
        server = app.app.server
        assert moto.object_gets("repo1") == objects  # each object read once
        assert (infer(app, "plus", "1"), infer(app, "plus", "2"), infer(app, "other")) == (
            2.0,
            3.0,
            6.0,
        )
        assert server.is_ready()
        plus, other = dict(server.models["plus"].served), dict(server.models["other"].served)

        app.call(server.poll_once())  # nothing changed: no object GET, nothing reloads
        assert moto.object_gets("repo1") == objects
        assert server.models["plus"].served == plus and server.models["other"].served == other

        moto.client().put_object(Bucket=BUCKET, Key="repo1/plus/2/model.py", Body=plus_py(20.0))
        app.call(server.poll_once())
        assert moto.object_gets("repo1") == objects + 1  # the changed object alone
        assert (infer(app, "plus", "2"), infer(app, "plus", "1")) == (21.0, 2.0)
        assert server.models["other"].served == other  # the other model did not reload
        remote = server.remotes.items[0]
        assert remote.stats.downloads == objects + 1 and remote.error == ""
    finally:
        app.stop()

    app = start(cache, [moto.url("repo1")])  # a restart with a warm cache downloads nothing
    try:
        assert moto.object_gets("repo1") == objects + 1
        assert app.app.server.remotes.items[0].stats.downloads == 0
        assert (infer(app, "plus", "2"), infer(app, "other")) == (21.0, 6.0)
    finally:
        app.stop()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.lines.append(record.getMessage())


@pytest.mark.usefixtures("aws_env")
def test_bad_credentials_other_repositories_keep_serving(
    moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    write_plus(src, "remote_plus", {1: 7.0})
    moto.upload(src, "repo2")
    local = tmp_path / "local"
    write_plus(local, "local_plus", {1: 3.0})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    records = _Records()
    logger = logging.getLogger("torchtide.repository")
    logger.addHandler(records)
    app = start(tmp_path / "cache", [moto.url("repo2")], [local], control_mode="poll")
    try:
        server = app.app.server
        assert infer(app, "local_plus") == 4.0  # the local repository serves
        expected = (
            f"model repository '{moto.url('repo2')}' is unavailable: PermissionError: The "
            "request signature we calculated does not match the signature you provided."
        )
        assert [line[: len(expected)] for line in records.lines] == [expected]
        assert "\n" not in records.lines[0]
        assert not server.is_ready()  # strict readiness: a repository never read
        assert [e["name"] for e in server.repository_index()] == ["local_plus"]
        assert moto.object_gets("repo2") == 0

        app.call(server.poll_once())  # the same failure is not logged again
        assert len(records.lines) == 1 and infer(app, "local_plus") == 4.0

        # Triton's credential file names the right key for this bucket: the next poll reads it
        creds = tmp_path / "creds.json"
        entry = {"key_id": moto.key, "secret_key": moto.secret, "region": "us-east-1"}
        creds.write_text(json.dumps({"s3": {f"s3://127.0.0.1:{moto.port}/{BUCKET}": entry}}))
        monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(creds))
        app.call(server.poll_once())
        assert infer(app, "remote_plus") == 8.0 and server.is_ready()
        assert server.remotes.errors() == []
    finally:
        logger.removeHandler(records)
        app.stop()


@pytest.mark.usefixtures("aws_env")
def test_credentials_from_a_profile(
    moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    write_plus(src, "m", {1: 1.0})
    objects = moto.upload(src, "repo3")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / "no-aws-credentials").write_text(
        f"[serving]\naws_access_key_id = {moto.key}\naws_secret_access_key = {moto.secret}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "serving")
    repo = RemoteRepository(moto.url("repo3"), tmp_path / "cache")
    assert repo.sync(), repo.error
    assert repo.stats.downloads == objects == moto.object_gets("repo3")
    assert (repo.local / "m" / "1" / "model.py").read_text().strip().startswith("import")


@pytest.mark.usefixtures("aws_env")
def test_credentials_from_a_web_identity(
    moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Kubernetes service-account roles (IRSA, workload identity) give a pod: a token file
    and a role, no key. botocore exchanges the token at STS (moto's, on the same port)."""
    src = tmp_path / "src"
    write_plus(src, "m", {1: 1.0})
    objects = moto.upload(src, "repo4")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln")
    monkeypatch.setenv("AWS_ROLE_ARN", moto.role)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto.endpoint)
    # moto's STS fails on an unsigned AssumeRoleWithWebIdentity while authentication is on;
    # that one call goes through unchecked, every S3 call after it is checked
    reset_auth(moto.endpoint, 1)
    repo = RemoteRepository(moto.url("repo4"), tmp_path / "cache")
    assert repo.sync(), repo.error
    assert repo.stats.downloads == objects == moto.object_gets("repo4")
    log = _ANSI.sub("", moto.log.read_text())
    assert '"POST / HTTP/1.1" 200' in log.rsplit("reset-auth", 1)[1]  # the STS exchange


@pytest.mark.usefixtures("aws_env")
def test_serve_process_explicit_mode_load_reads_the_remote(moto: Moto, tmp_path: Path) -> None:
    """`torchtide serve --model-repository=s3://host:port/bucket/path` as a process, in
    explicit mode: a load request syncs that model first, fetching only what changed."""
    src = tmp_path / "src"
    write_plus(src, "m", {1: 1.0})
    write_plus(src, "n", {1: 2.0})
    objects = moto.upload(src, "repo5")
    http = free_port()
    proc = serve_process(
        f"--model-repository={moto.url('repo5')}",
        f"--model-cache-dir={tmp_path / 'cache'}",
        "--model-control-mode=explicit",
        "--load-model=m",
        f"--http-port={http}",
    )
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    try:
        deadline = time.monotonic() + 90
        while not _ready(client):
            assert proc.poll() is None and time.monotonic() < deadline, _output(proc)
            time.sleep(0.1)
        x = httpclient.InferInput("IN", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        assert client.infer("m", [x]).as_numpy("OUT")[0, 0] == 2.0
        assert not client.is_model_ready("n")
        assert moto.object_gets("repo5") == objects

        moto.client().put_object(Bucket=BUCKET, Key="repo5/m/1/model.py", Body=plus_py(10.0))
        client.load_model("m")
        assert client.infer("m", [x]).as_numpy("OUT")[0, 0] == 11.0
        client.load_model("n")
        assert client.infer("n", [x]).as_numpy("OUT")[0, 0] == 3.0
        assert moto.object_gets("repo5") == objects + 1
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


def _ready(client: httpclient.InferenceServerClient) -> bool:
    try:
        return bool(client.is_server_ready())
    except Exception:
        return False


def _output(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None or proc.stdout is None:
        return "server still starting"
    return proc.stdout.read().decode(errors="replace")[-3000:]


def serve_process(*args: str) -> subprocess.Popen[bytes]:
    """`torchtide serve` from this checkout's sources, HTTP only, on loopback."""
    root = Path(__file__).parent.parent
    fixed = ["--http-address=127.0.0.1", "--allow-grpc=false", "--allow-metrics=false"]
    return subprocess.Popen(
        [sys.executable, "-m", "torchtide.cli", "serve", *args, *fixed],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"},
    )


@pytest.mark.usefixtures("aws_env")
def test_exit_on_error_counts_a_repository_never_read(
    moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    write_plus(src, "m", {1: 1.0})
    moto.upload(src, "repo6")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    proc = serve_process(
        f"--model-repository={moto.url('repo6')}",
        f"--model-cache-dir={tmp_path / 'cache'}",
        f"--http-port={free_port()}",
        "--exit-on-error=true",
    )
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1
    assert (
        f"model repository '{moto.url('repo6')}' is unavailable: PermissionError: The AWS Access "
        "Key Id you provided does not exist in our records."
    ) in out.decode()
    assert "Traceback" not in out.decode()
