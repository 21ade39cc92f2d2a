"""Access control: Triton's restricted API groups (`--http-restricted-api`,
`--grpc-restricted-protocol`, as tritonserver 2.51's command_line_parser.cc parses them and
http_server.cc / grpc_server.cc enforce them), our bearer tokens (`--auth-token-file`), and the
logging extension refusing a new log file over the network. Real servers on loopback, the real
tritonclient (HTTP, gRPC, aio)."""

from __future__ import annotations

import asyncio
import hmac
import http.client
import logging
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from tests.conftest import start_app
from tests.http_util import request
from tests.models import write_add_sub
from torchtide.access import (
    GRPC_METHOD_GROUPS,
    AccessPolicy,
    ApiGroup,
    Refusal,
    Restriction,
    TokenFile,
    TokenFileError,
    parse_restriction,
)
from torchtide.app import AppThread
from torchtide.cli import security_options, serve_parser

ADMIN = {"admin-key": "secret"}
GRPC_ADMIN = {"triton-grpc-protocol-admin-key": "secret"}
HTTP_RESTRICTED = "This API is restricted, expecting header '{}'"
GRPC_RESTRICTED = "This protocol is restricted, expecting header 'triton-grpc-protocol-{}'"


def add_sub_inputs(mod: Any) -> list[Any]:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = mod.InferInput(name, [1, 16], "INT32")
        i.set_data_from_numpy(data)
        inputs.append(i)
    return inputs


def http_status_of(call: Any) -> tuple[str | None, str]:
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.status(), e.value.message()


# ---------------------------------------------------------------------------- parsing the flags


def test_restriction_flag_parses_as_tritonserver() -> None:
    r = parse_restriction("model-repository,statistics:admin-key=secret", "x", grpc=False)
    assert r == {
        ApiGroup.MODEL_REPOSITORY: Restriction("admin-key", "secret"),
        ApiGroup.STATISTICS: Restriction("admin-key", "secret"),
    }
    # Split at the first ':' and the first '=' after it: the value keeps later '=' and ':'.
    r = parse_restriction("inference:k:x=a=b:c", "x", grpc=False)
    assert r == {ApiGroup.INFERENCE: Restriction("k:x", "a=b:c")}
    # gRPC: Triton's metadata key prefix.
    r = parse_restriction("health:k=v", "x", grpc=True)
    assert r[ApiGroup.HEALTH] == Restriction("triton-grpc-protocol-k", "v")


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("inference", "--http-restricted-api option format is '<config name>:<setting>=<value>'"),
        ("inference:k", "option format is"),
        (":k=v", "option format is"),
        ("inference:=v", "option format is"),
        ("inference:k=", "option format is"),
        ("inference=k:v", "option format is"),  # no '=' after the ':'
        ("infer:k=v", "unknown restricted api 'infer'"),
        ("health,:k=v", "unknown restricted api ''"),
        ("health,health:k=v", "restricted api 'health' can not be specified in multiple"),
    ],
)
def test_restriction_flag_errors_are_tritonservers(arg: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_restriction(arg, "http-restricted-api", grpc=False)


def test_a_group_restricted_by_two_flags_is_an_error_on_grpc() -> None:
    r = parse_restriction("inference:a=b", "grpc-restricted-protocol", grpc=True)
    with pytest.raises(ValueError, match="restricted protocol 'inference' can not be specified"):
        parse_restriction("health,inference:c=d", "grpc-restricted-protocol", grpc=True, into=r)


@given(
    groups=st.lists(st.sampled_from(list(ApiGroup)), min_size=1, unique=True),
    key=st.text(min_size=1).filter(lambda k: "=" not in k),
    value=st.text(min_size=1),
)
def test_any_key_and_value_round_trip(groups: list[ApiGroup], key: str, value: str) -> None:
    arg = ",".join(g.value for g in groups) + f":{key}={value}"
    assert parse_restriction(arg, "x", grpc=False) == {g: Restriction(key, value) for g in groups}


def test_cli_flags_and_safe_defaults() -> None:
    args = serve_parser().parse_args(["--model-repository=/x"])
    opts = security_options(args, logging.getLogger("test"))
    assert args.model_control_mode == "none" and args.allow_client_shm is False
    assert opts["http_restricted"] == {} and opts["grpc_restricted"] == {}
    assert opts["http_tls"] is None and opts["grpc_tls"] is None
    assert opts["auth_token_file"] is None and opts["auth_open_apis"] == {ApiGroup.HEALTH}
    args = serve_parser().parse_args(
        [
            "--http-restricted-api=inference:k=v",
            "--http-restricted-api",
            "statistics,trace:k2=v2",
            "--grpc-restricted-protocol=shared-memory:k=v",
            "--auth-open-api=health,metadata",
        ]
    )
    opts = security_options(args, logging.getLogger("test"))
    assert set(opts["http_restricted"]) == {  # type: ignore[call-overload]
        ApiGroup.INFERENCE,
        ApiGroup.STATISTICS,
        ApiGroup.TRACE,
    }
    assert opts["auth_open_apis"] == {ApiGroup.HEALTH, ApiGroup.METADATA}
    bad = serve_parser().parse_args(["--grpc-restricted-protocol=nope:k=v"])
    with pytest.raises(ValueError, match="unknown restricted protocol 'nope'"):
        security_options(bad, logging.getLogger("test"))


def test_every_grpc_method_has_a_group() -> None:
    from tritonclient.grpc import service_pb2 as pb

    names = {m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    names |= {"Check", "Watch"}
    assert names == set(GRPC_METHOD_GROUPS)


# ---------------------------------------------------------------------------- Triton's restrictions


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("repo")
    write_add_sub(r)
    write_add_sub(r, "add_sub_2")
    return r


@pytest.fixture(scope="module")
def restricted(repo: Path) -> Iterator[AppThread]:
    """As observed on tritonserver (triton-observed.md §14), plus inference with its own key."""
    http = parse_restriction("model-repository,statistics:admin-key=secret", "h", grpc=False)
    parse_restriction("inference:infer-key=ik", "h", grpc=False, into=http)
    grpc_r = parse_restriction("model-repository:admin-key=secret", "g", grpc=True)
    parse_restriction("inference,health:infer-key=ik", "g", grpc=True, into=grpc_r)
    app = start_app(
        repo,
        control_mode="explicit",
        startup_models=["add_sub"],
        http_restricted=http,
        grpc_restricted=grpc_r,
    )
    yield app
    app.stop()


# Every HTTP route and its group (http_server.cc); the model paths use the loaded add_sub.
HTTP_ROUTES = [
    ("GET", "/v2/health/live", ApiGroup.HEALTH),
    ("GET", "/v2/health/ready", ApiGroup.HEALTH),
    ("GET", "/v2/models/add_sub/ready", ApiGroup.HEALTH),
    ("GET", "/v2", ApiGroup.METADATA),
    ("GET", "/v2/models/add_sub", ApiGroup.METADATA),
    ("GET", "/v2/models/add_sub/versions/1", ApiGroup.METADATA),
    ("GET", "/v2/models/add_sub/config", ApiGroup.MODEL_CONFIG),
    ("GET", "/v2/models/add_sub/stats", ApiGroup.STATISTICS),
    ("GET", "/v2/models/stats", ApiGroup.STATISTICS),
    ("POST", "/v2/models/add_sub/infer", ApiGroup.INFERENCE),
    ("GET", "/v2/logging", ApiGroup.LOGGING),
    ("GET", "/v2/systemsharedmemory/status", ApiGroup.SHARED_MEMORY),
    ("GET", "/v2/cudasharedmemory/region/r/status", ApiGroup.SHARED_MEMORY),
    ("POST", "/v2/repository/index", ApiGroup.MODEL_REPOSITORY),
    ("POST", "/v2/repository/models/add_sub/load", ApiGroup.MODEL_REPOSITORY),
]
HTTP_KEYS = {
    ApiGroup.MODEL_REPOSITORY: ("admin-key", "secret"),
    ApiGroup.STATISTICS: ("admin-key", "secret"),
    ApiGroup.INFERENCE: ("infer-key", "ik"),
}
INFER_BODY = {
    "inputs": [
        {"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
        for n in ("INPUT0", "INPUT1")
    ]
}


@pytest.mark.parametrize(("method", "path", "group"), HTTP_ROUTES)
def test_http_restriction_per_route(
    restricted: AppThread, method: str, path: str, group: ApiGroup
) -> None:
    port = restricted.app.port("http")
    body = INFER_BODY if path.endswith("/infer") else None
    key = HTTP_KEYS.get(group)
    plain = request(port, method, path, body)
    if key is None:  # not restricted here: served (or refused on its own merits, never 403)
        assert plain.status != 403
        return
    assert plain.status == 403
    assert plain.json() == {"error": HTTP_RESTRICTED.format(key[0])}
    wrong = request(port, method, path, body, {key[0]: key[1] + "x"})
    assert wrong.status == 403 and wrong.error == HTTP_RESTRICTED.format(key[0])
    other = request(port, method, path, body, {"x-" + key[0]: key[1]})
    assert other.status == 403
    # Header names are case-insensitive; the value is compared exactly.
    ok = request(port, method, path, body, {key[0].upper(): key[1]})
    assert ok.status == 200, ok.body


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v2/trace/setting", "admin-key"),
        ("/v2/models/add_sub/trace/setting", "admin-key"),
        ("/v2/models/add_sub/versions/1/generate", "infer-key"),
        ("/v2/models/add_sub/generate_stream", "infer-key"),
    ],
)
def test_http_routes_we_do_not_serve_keep_their_group(repo: Path, path: str, key: str) -> None:
    """Observed on tritonserver 2.51: a restricted group answers 403 on these routes too."""
    http = parse_restriction("trace:admin-key=secret", "h", grpc=False)
    parse_restriction("inference:infer-key=ik", "h", grpc=False, into=http)
    app = start_app(repo, grpc=False, startup_models=["add_sub"], http_restricted=http)
    try:
        port = app.app.port("http")
        r = request(port, "POST", path, b"{}")
        assert r.status == 403 and r.error == HTTP_RESTRICTED.format(key)
        allowed = {"admin-key": "secret", "infer-key": "ik"}
        assert request(port, "POST", path, b"{}", allowed).status == 404  # not served
    finally:
        app.stop()


def test_http_restriction_comes_before_the_method_check(restricted: AppThread) -> None:
    """As in Triton's handlers: RETURN_AND_RESPOND_IF_RESTRICTED is their first line."""
    port = restricted.app.port("http")
    assert request(port, "GET", "/v2/models/add_sub/infer").status == 403
    assert request(port, "GET", "/v2/models/add_sub/infer", None, {"infer-key": "ik"}).status == 405
    assert request(port, "GET", "/v2/nope").status == 404  # unknown paths: 404, no group


def test_http_refusal_keeps_the_connection_and_runs_nothing(restricted: AppThread) -> None:
    """A refused request's body is read and dropped (never buffered or parsed), the connection
    stays open, and the handler never runs: the refused load leaves the model unloaded."""
    port = restricted.app.port("http")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = b"{" + b" " * 100_000 + b"}"
        r = request(port, "POST", "/v2/repository/models/add_sub_2/load", body, conn=conn)
        assert r.status == 403
        r = request(port, "POST", "/v2/models/add_sub/infer", b"not json", conn=conn)
        assert r.status == 403  # refused before the body would have failed to parse
        assert request(port, "GET", "/v2/health/ready", conn=conn).status == 200
    finally:
        conn.close()
    index = request(port, "POST", "/v2/repository/index", None, ADMIN).json()
    assert {m["name"]: m.get("state") for m in index}["add_sub_2"] != "READY"


def test_http_restriction_with_tritonclient(restricted: AppThread) -> None:
    c = httpclient.InferenceServerClient(f"127.0.0.1:{restricted.app.port('http')}")
    try:
        assert c.is_server_ready()
        status, message = http_status_of(lambda: c.infer("add_sub", add_sub_inputs(httpclient)))
        assert status == "403" and message == HTTP_RESTRICTED.format("infer-key")
        out = c.infer("add_sub", add_sub_inputs(httpclient), headers={"infer-key": "ik"})
        assert out.as_numpy("OUTPUT0")[0, 3] == 6
        status, _ = http_status_of(lambda: c.get_model_repository_index())
        assert status == "403"
        assert c.get_model_repository_index(headers=ADMIN)
        c.get_model_metadata("add_sub")  # metadata is not restricted here
    finally:
        c.close()


def test_grpc_restriction(restricted: AppThread) -> None:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{restricted.app.port('grpc')}")
    try:
        with pytest.raises(InferenceServerException) as e:
            c.get_model_repository_index()
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        assert e.value.message() == GRPC_RESTRICTED.format("admin-key")
        with pytest.raises(InferenceServerException) as e:
            c.get_model_repository_index(headers=ADMIN)  # over gRPC the key has the prefix
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        assert c.get_model_repository_index(headers=GRPC_ADMIN)
        with pytest.raises(InferenceServerException) as e:
            c.unload_model("add_sub_2")  # RepositoryModelUnload is model-repository too
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        # statistics is restricted on HTTP only: open over gRPC (restrictions are per protocol)
        assert c.get_inference_statistics("add_sub")
        with pytest.raises(InferenceServerException) as e:
            c.is_server_live()  # health is restricted on gRPC here
        assert e.value.message() == GRPC_RESTRICTED.format("infer-key")
        key = {"triton-grpc-protocol-infer-key": "ik"}
        assert c.is_server_live(headers=key)
        with pytest.raises(InferenceServerException) as e:
            c.infer("add_sub", add_sub_inputs(grpcclient))
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        out = c.infer("add_sub", add_sub_inputs(grpcclient), headers=key)
        assert out.as_numpy("OUTPUT1")[0, 3] == 0
    finally:
        c.close()


def test_grpc_health_service_is_in_the_health_group(restricted: AppThread) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{restricted.app.port('grpc')}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        md = (("triton-grpc-protocol-infer-key", "ik"),)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=30, metadata=md)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_restricted_stream_is_refused_at_open(restricted: AppThread) -> None:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{restricted.app.port('grpc')}")
    results: queue.Queue[Any] = queue.Queue()
    try:
        # Refused when the stream opens, before any request is sent (as Triton: at START).
        c.start_stream(callback=lambda result, error: results.put((result, error)))
        result, error = results.get(timeout=30)
        assert result is None and error.message() == GRPC_RESTRICTED.format("infer-key")
        with pytest.raises(InferenceServerException, match="no longer in valid state"):
            c.async_stream_infer("add_sub", add_sub_inputs(grpcclient))
        c.stop_stream()
        headers = {"triton-grpc-protocol-infer-key": "ik"}
        c.start_stream(callback=lambda result, error: results.put((result, error)), headers=headers)
        c.async_stream_infer("add_sub", add_sub_inputs(grpcclient))
        result, error = results.get(timeout=30)
        assert error is None and result.as_numpy("OUTPUT0")[0, 2] == 4
        c.stop_stream()
    finally:
        c.close()


# ---------------------------------------------------------------------------- bearer tokens

TOKENS = """
# comments and blank lines are skipped

inference, metadata : tok-infer
*: tok-admin
model-config: tok-infer
"""


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(TOKENS)
    return path


@pytest.fixture(scope="module")
def tokened(repo: Path, token_file: Path) -> Iterator[AppThread]:
    app = start_app(repo, startup_models=["add_sub"], auth_token_file=token_file)
    yield app
    app.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_http_tokens(tokened: AppThread) -> None:
    port = tokened.app.port("http")
    assert request(port, "GET", "/v2/health/ready").status == 200  # health is open by default
    r = request(port, "GET", "/v2")
    assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "requires a bearer token" in r.error
    r = request(port, "GET", "/v2", None, bearer("tok-nope"))
    assert r.status == 401 and r.error == "the bearer token is not valid"
    r = request(port, "GET", "/v2", None, {"Authorization": "Basic dG9rLWFkbWlu"})
    assert r.status == 401
    assert request(port, "GET", "/v2", None, bearer("tok-infer")).status == 200
    assert request(port, "GET", "/v2", None, {"authorization": "bearer  tok-infer "}).status == 200
    r = request(port, "POST", "/v2/models/add_sub/infer", INFER_BODY, bearer("tok-infer"))
    assert r.status == 200
    # a token's groups add up over its lines
    assert (
        request(port, "GET", "/v2/models/add_sub/config", None, bearer("tok-infer")).status == 200
    )
    r = request(port, "GET", "/v2/models/add_sub/stats", None, bearer("tok-infer"))
    assert r.status == 403 and r.error == "the bearer token is not granted the 'statistics' API"
    assert request(port, "GET", "/v2/models/add_sub/stats", None, bearer("tok-admin")).status == 200


def test_grpc_tokens(tokened: AppThread) -> None:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{tokened.app.port('grpc')}")
    try:
        assert c.is_server_ready()
        with pytest.raises(InferenceServerException) as e:
            c.get_server_metadata()
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as e:
            c.get_server_metadata(headers={"authorization": "Bearer tok-nope"})
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        assert c.get_server_metadata(headers={"authorization": "Bearer tok-infer"})
        with pytest.raises(InferenceServerException) as e:
            c.get_inference_statistics("add_sub", headers={"authorization": "Bearer tok-infer"})
        assert e.value.status() == "StatusCode.PERMISSION_DENIED"
        out = c.infer(
            "add_sub", add_sub_inputs(grpcclient), headers={"authorization": "Bearer tok-admin"}
        )
        assert out.as_numpy("OUTPUT0")[0, 1] == 2
    finally:
        c.close()


def test_aio_clients_send_tokens(tokened: AppThread) -> None:
    async def main() -> None:
        h = httpaio.InferenceServerClient(f"127.0.0.1:{tokened.app.port('http')}")
        g = grpcaio.InferenceServerClient(f"127.0.0.1:{tokened.app.port('grpc')}")
        try:
            with pytest.raises(InferenceServerException):
                await h.infer("add_sub", add_sub_inputs(httpclient))
            out = await h.infer("add_sub", add_sub_inputs(httpclient), headers=bearer("tok-infer"))
            assert out.as_numpy("OUTPUT0")[0, 5] == 10
            with pytest.raises(InferenceServerException) as e:
                await g.infer("add_sub", add_sub_inputs(grpcclient))
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            headers = {"authorization": "Bearer tok-infer"}
            out = await g.infer("add_sub", add_sub_inputs(grpcclient), headers=headers)
            assert out.as_numpy("OUTPUT0")[0, 5] == 10
        finally:
            await h.close()
            await g.close()

    asyncio.run(main())


def test_tokens_are_never_logged(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("inference: sekrit-one\n")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger("torchtide")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        app = start_app(repo, startup_models=["add_sub"], auth_token_file=path)
        try:
            port = app.app.port("http")
            for token in ("sekrit-one", "sekrit-wrong"):
                request(port, "POST", "/v2/models/add_sub/infer", INFER_BODY, bearer(token))
        finally:
            app.stop()
        tf = TokenFile(path, check_s=0)
        path.write_text("inference sekrit-broken-line\n")  # invalid on reload: logged
        assert tf.granted("sekrit-one") is not None
        with pytest.raises(TokenFileError) as e:
            TokenFile(path)
        records.append(str(e.value))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert any("keeping the previous tokens" in r for r in records)
    assert any("line 1: expected" in r for r in records)
    assert not [r for r in records if "sekrit" in r]


def test_token_file_reload_keeps_the_last_good_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("inference: first\n")
    tf = TokenFile(path, check_s=0)
    assert tf.granted("first") == {ApiGroup.INFERENCE}
    path.write_text("inference,statistics: second\n")
    assert tf.granted("first") is None
    assert tf.granted("second") == {ApiGroup.INFERENCE, ApiGroup.STATISTICS}
    path.write_text("nonsense: third\n")  # invalid: the previous tokens stay
    assert tf.granted("second") is not None and tf.granted("third") is None
    path.write_bytes(b"inference: \xff\xfe\n")  # not text: the previous tokens stay
    assert tf.granted("second") is not None
    path.unlink()  # gone: the previous tokens stay
    assert tf.granted("second") is not None
    with pytest.raises(TokenFileError, match="cannot read the token file"):
        TokenFile(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inference\n", "line 1: expected"),
        ("\n# c\ninference:\n", "line 3: expected"),
        ("inferense: t\n", "line 1: unknown API group 'inferense'"),
        (" , : t\n", "line 1: no API group"),
    ],
)
def test_token_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(TokenFileError, match=message):
        TokenFile(path)


def test_token_compared_against_every_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stored token is compared, with hmac.compare_digest, whichever matches."""
    path = tmp_path / "tokens"
    path.write_text("inference: a\nhealth: b\nlogging: c\n")
    tf = TokenFile(path)
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("torchtide.access.hmac.compare_digest", counting)
    assert tf.granted("a") == {ApiGroup.INFERENCE}
    assert len(calls) == 3


def test_token_file_change_applies_without_restart(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("inference: old-token\n")
    app = start_app(repo, grpc=False, startup_models=["add_sub"], auth_token_file=path)
    try:
        port = app.app.port("http")

        def status(token: str) -> int:
            return request(port, "GET", "/v2/models/add_sub", None, bearer(token)).status

        assert status("old-token") == 403  # inference only
        tmp = tmp_path / "tokens.new"
        tmp.write_text("inference,metadata: new-token\n")
        os.replace(tmp, path)  # atomic, as a mounted Secret is updated
        deadline = time.monotonic() + 30
        while status("new-token") != 200:
            assert time.monotonic() < deadline, "the new token file was not picked up"
            time.sleep(0.1)
        assert status("old-token") == 401
    finally:
        app.stop()


def test_open_groups_and_policy_order() -> None:
    """Triton's restriction is checked first; then the token, unless the group is open."""
    tokens = None
    p = AccessPolicy({ApiGroup.HEALTH: Restriction("k", "v")}, tokens, frozenset({ApiGroup.HEALTH}))
    assert p.check(ApiGroup.HEALTH, {}) == p.check(ApiGroup.HEALTH, {"k": "w"})
    d = p.check(ApiGroup.HEALTH, {})
    assert d is not None and d.reason is Refusal.RESTRICTED
    assert p.check(ApiGroup.HEALTH, {"k": "v"}) is None
    assert p.check(ApiGroup.INFERENCE, {}) is None


# ---------------------------------------------------------------------------- logging extension


def test_log_file_cannot_be_changed_over_the_network(repo: Path, tmp_path: Path) -> None:
    app = start_app(repo)
    target = str(tmp_path / "elsewhere.log")
    try:
        port = app.app.port("http")
        before = request(port, "GET", "/v2/logging").json()
        r = request(port, "POST", "/v2/logging", {"log_file": target})
        assert r.status == 400 and "log_file cannot be changed over the network" in r.error
        r = request(port, "POST", "/v2/logging", {"log_file": target, "log_verbose_level": 1})
        assert r.status == 400  # nothing of a refused request is applied
        assert request(port, "GET", "/v2/logging").json() == before
        r = request(port, "POST", "/v2/logging", {"log_verbose_level": 1})
        assert r.status == 200 and r.json()["log_verbose_level"] == 1  # the rest still works
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{app.app.port('grpc')}")
        try:
            with pytest.raises(InferenceServerException) as e:
                c.update_log_settings({"log_file": target})
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "log_file cannot be changed over the network" in (e.value.message() or "")
            settings = c.update_log_settings({"log_verbose_level": 0}, as_json=True)
            assert settings["settings"]["log_verbose_level"]["uint32_param"] == 0
        finally:
            c.close()
        assert not Path(target).exists()
    finally:
        app.stop()


def test_cli_refuses_a_bad_token_file(repo: Path, tmp_path: Path) -> None:
    from tests.test_tls import serve

    s = serve(repo, f"--auth-token-file={tmp_path / 'missing'}")
    assert s.proc.wait(120) == 2
    out = s.output()
    assert "cannot read the token file" in out and "Traceback" not in out
    bad = tmp_path / "tokens"
    bad.write_text("inference: sekrit\nnope: other-sekrit\n")
    s = serve(repo, f"--auth-token-file={bad}")
    assert s.proc.wait(120) == 2
    out = s.output()
    assert "line 2: unknown API group 'nope'" in out and "sekrit" not in out
    s = serve(repo, "--http-restricted-api=inference")
    assert s.proc.wait(120) == 2
    assert "--http-restricted-api option format is" in s.output()
