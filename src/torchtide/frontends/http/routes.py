"""Routes of Triton's HTTP API (KServe V2 + extensions) and their handlers over InferenceServer.

Paths are matched with the same regular expressions, in the same order, as tritonserver's
`http_server.cc`, so what is a 404 there is a 404 here. Every error leaves through
`_error_response`, the one place a `ServerError` becomes an HTTP reply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import zlib
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote

import orjson

from torchtide.access import AccessPolicy, ApiGroup, Denial, Refusal
from torchtide.config import to_json_dict
from torchtide.errors import ServerError, unsupported
from torchtide.frontends.http.decode import (
    OutputPlan,
    ShmAccess,
    decode_raw_request,
    decode_request,
    header_length,
)
from torchtide.frontends.http.encode import encode_response
from torchtide.frontends.http.errors import bad_request, http_status
from torchtide.frontends.http.protocol import Request, Response, compress_reply
from torchtide.frontends.limits import OFFLOAD_JSON_BYTES, OFFLOAD_OUTPUT_BYTES
from torchtide.server import InferenceServer
from torchtide.tracing import FILE_READONLY, Changes, Trace, now_ns
from torchtide.types import InferRequest, InferResponse

log = logging.getLogger("torchtide.http")

_MODEL = re.compile(
    r"/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/(infer|ready|config|stats|trace/setting))?"
)
_SHM = re.compile(
    r"/v2/(systemsharedmemory|cudasharedmemory)(?:/region/([^/]+))?/(status|register|unregister)"
)
# Ours: `torchtide profile` (HTTP only; Triton's gRPC service has no such RPC).
_PROFILE = re.compile(r"/v2/models/([^/]+)(?:/versions/([0-9]+))?/profile")
_REPO = re.compile(r"/v2/repository(?:/([^/]+))?/(?:(index)|models/([^/]+)/(load|unload))")
# Routes tritonserver has and torchtide does not serve (404). Their groups still apply, so that
# a restricted group answers 403 there, as tritonserver does.
_UNSERVED = re.compile(
    r"/v2(?:/models/[^/]+(?:/versions/[0-9]+)?/(generate|generate_stream|trace/setting)"
    r"|/trace/setting)"
)

_EMPTY_TEXT = Response(200, b"", b"text/plain")
_NOT_LIVE = Response(400, b"", b"text/plain")
_OCTET = b"application/octet-stream"
_NOT_FOUND = Response.error(404, "Not Found")
_NOT_ALLOWED = Response.error(405, "Method Not Allowed")

Reply = Response | Coroutine[Any, Any, Response]
Endpoint = Callable[..., Reply]
Route = tuple[ApiGroup, dict[str, Endpoint], tuple[Any, ...]]

# The one mapping from an access refusal to an HTTP status (Triton's restriction: 403).
REFUSAL_STATUS: dict[Refusal, int] = {
    Refusal.RESTRICTED: 403,
    Refusal.UNAUTHENTICATED: 401,
    Refusal.FORBIDDEN: 403,
}


def denial_response(denial: Denial) -> Response:
    resp = Response.error(REFUSAL_STATUS[denial.reason], denial.message)
    if denial.reason is Refusal.UNAUTHENTICATED:
        resp.headers.append((b"WWW-Authenticate", b'Bearer realm="torchtide"'))
    return resp


def error_response(e: BaseException) -> Response:
    """The one mapping from an exception to an HTTP reply."""
    if isinstance(e, ServerError):
        return Response.error(http_status(e), e.message)
    log.exception("internal error in the HTTP front-end", exc_info=e)
    return Response.error(500, f"internal error: {type(e).__name__}: {e}")


class Api:
    def __init__(
        self,
        server: InferenceServer,
        *,
        allow_client_shm: bool,
        max_input_size: int,
        access: AccessPolicy | None = None,
    ) -> None:
        self.server = server
        self.access = access if access is not None and access.active else None
        self.allow_client_shm = allow_client_shm
        self.max_input_size = max_input_size
        self.shm = ShmAccess(server.shm, allow_client_shm)
        # Each route's API group is Triton's (http_server.cc: RETURN_AND_RESPOND_IF_RESTRICTED).
        g = ApiGroup
        self._model_routes: dict[str | None, tuple[ApiGroup, dict[str, Endpoint]]] = {
            "infer": (g.INFERENCE, {"POST": self.infer}),
            "ready": (g.HEALTH, {"GET": self.model_ready}),
            "config": (g.MODEL_CONFIG, {"GET": self.model_config}),
            "stats": (g.STATISTICS, {"GET": self.stats}),
            "trace/setting": (g.TRACE, {"GET": self.trace_setting, "POST": self.trace_setting}),
            None: (g.METADATA, {"GET": self.model_metadata}),
        }
        self._shm_routes: dict[tuple[str, str], dict[str, Endpoint]] = {
            ("systemsharedmemory", "status"): {"GET": self.shm_status},
            ("systemsharedmemory", "register"): {"POST": self.shm_register},
            ("systemsharedmemory", "unregister"): {"POST": self.shm_unregister},
            ("cudasharedmemory", "status"): {"GET": self.cuda_status},
            ("cudasharedmemory", "register"): {"POST": self.cuda_register},
            ("cudasharedmemory", "unregister"): {"POST": self.cuda_unregister},
        }
        self._fixed: dict[str, tuple[ApiGroup, dict[str, Endpoint]]] = {
            "/v2": (g.METADATA, {"GET": self.server_metadata}),
            "/v2/health/live": (g.HEALTH, {"GET": self.live}),
            "/v2/health/ready": (g.HEALTH, {"GET": self.ready}),
            "/v2/logging": (g.LOGGING, {"GET": self.logging, "POST": self.logging}),
            "/v2/trace/setting": (g.TRACE, {"GET": self.trace_setting, "POST": self.trace_setting}),
        }

    # ------------------------------------------------------------------ dispatch

    def admit(self, path: str, headers: dict[str, str]) -> Response | None:
        """Access control, once the request's headers are in: a refusal, or None. Unknown paths
        pass (404 later); as in Triton, the check comes before the method's (403 before 405)."""
        if self.access is None:
            return None
        found = self._route(path)
        if found is not None:
            group = found[0]
        elif (m := _UNSERVED.fullmatch(path)) is not None:
            group = ApiGroup.INFERENCE if m[1] and m[1] != "trace/setting" else ApiGroup.TRACE
        else:
            return None
        denial = self.access.check(group, headers)
        return None if denial is None else denial_response(denial)

    def dispatch(self, req: Request) -> Reply:
        try:
            found = self._route(req.path)
            if found is None:
                return _NOT_FOUND
            _, methods, args = found
            handler = methods.get(req.method)
            if handler is None:
                return _NOT_ALLOWED
            result = handler(req, *args)
        except Exception as e:
            return error_response(e)
        return result  # a Response, or a coroutine whose errors the connection maps back here

    def _route(self, path: str) -> Route | None:
        if path == "/v2/models/stats":
            return *self._model_routes["stats"], ("", "")
        m = _MODEL.fullmatch(path)
        if m is not None:
            if m[3] == "trace/setting" and m[2]:
                return None  # trace settings are per model, not per version (Triton: 404)
            return *self._model_routes[m[3]], (unquote(m[1]), m[2] or "")
        fixed = self._fixed.get(path)
        if fixed is not None:
            return *fixed, ()
        m = _PROFILE.fullmatch(path)
        if m is not None:
            return ApiGroup.PROFILE, {"POST": self.profile}, (unquote(m[1]), m[2] or "")
        m = _SHM.fullmatch(path)
        if m is not None:
            return ApiGroup.SHARED_MEMORY, self._shm_routes[m[1], m[3]], (unquote(m[2] or ""),)
        m = _REPO.fullmatch(path)
        if m is not None:
            repo = unquote(m[1] or "")
            if m[2] == "index":
                return ApiGroup.MODEL_REPOSITORY, {"POST": self.repository_index}, (repo,)
            action = self.load if m[4] == "load" else self.unload
            return ApiGroup.MODEL_REPOSITORY, {"POST": action}, (repo, unquote(m[3]))
        return None

    # ------------------------------------------------------------------ bodies

    def _body(self, req: Request) -> bytes:
        """The request body, decompressed per Content-Encoding, never past max_input_size."""
        encoding = req.headers.get("content-encoding", "").strip().lower()
        if not encoding or encoding == "identity":
            return req.body
        if encoding not in ("gzip", "deflate"):
            raise bad_request(f"unsupported Content-Encoding '{encoding}'; use gzip or deflate")
        # gzip: wbits 31; deflate: the zlib format (what HTTP means), or raw deflate as a fallback.
        for wbits in (31,) if encoding == "gzip" else (15, -15):
            d = zlib.decompressobj(wbits)
            try:
                out = d.decompress(req.body, self.max_input_size + 1)
            except zlib.error:
                continue
            if len(out) > self.max_input_size:
                raise bad_request(
                    f"the decompressed request body exceeds the maximum allowed input size of "
                    f"{self.max_input_size} bytes. Use --http-max-input-size to increase the limit."
                )
            if not d.eof:
                raise bad_request(f"the {encoding} request body is truncated")
            return out
        raise bad_request(f"the request body is not valid {encoding} data")

    async def _json(self, req: Request, what: str) -> dict[str, Any]:
        """The body as a JSON object; decompressed and parsed in a worker thread when large."""
        if _offload(req):
            return await asyncio.to_thread(self._parse_json, req, what)
        return self._parse_json(req, what)

    def _parse_json(self, req: Request, what: str) -> dict[str, Any]:
        body = self._body(req)
        if not body.strip():
            return {}
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise bad_request(f"failed to parse the {what} JSON: {e}") from None
        if not isinstance(doc, dict):
            raise bad_request(f"the {what} JSON must be an object")
        return doc

    # ------------------------------------------------------------------ health and metadata

    def live(self, req: Request) -> Response:
        return _EMPTY_TEXT if self.server.is_live() else _NOT_LIVE

    def ready(self, req: Request) -> Response:
        return _EMPTY_TEXT if self.server.is_ready() else _NOT_LIVE

    def server_metadata(self, req: Request) -> Response:
        return Response(200, orjson.dumps(self.server.metadata()))

    def model_metadata(self, req: Request, name: str, version: str) -> Response:
        return Response(200, orjson.dumps(self.server.model_metadata(name, version)))

    def model_ready(self, req: Request, name: str, version: str) -> Response:
        if self.server.model_ready(name, version):
            return _EMPTY_TEXT
        return Response.error(400, "Model version not ready")  # Triton's status and message

    def model_config(self, req: Request, name: str, version: str) -> Response:
        return Response(200, orjson.dumps(to_json_dict(self.server.model_config(name, version))))

    def stats(self, req: Request, name: str, version: str) -> Response:
        return Response(200, orjson.dumps({"model_stats": self.server.statistics(name, version)}))

    async def logging(self, req: Request) -> Response:
        settings = self.server.log_settings
        if req.method == "POST":
            doc = await self._json(req, "logging request")
            changes = {k: v for k, v in doc.items() if v is not None}
            return Response(200, orjson.dumps(settings.update(changes)))
        return Response(200, orjson.dumps(settings.get()))

    async def trace_setting(self, req: Request, name: str = "", version: str = "") -> Response:
        changes = None
        if req.method == "POST":
            changes = trace_changes(await self._json(req, "trace setting request"))
        view = self.server.trace_settings(name, changes)
        # One value per setting is a string (the last, for a setting given several times, as
        # a JSON reader of tritonserver's repeated keys sees it); trace_level is an array.
        doc = {k: v if k == "trace_level" else v[-1] for k, v in view.items()}
        return Response(200, orjson.dumps(doc))

    # ------------------------------------------------------------------ profiling (ours)

    async def profile(self, req: Request, name: str, version: str) -> Response:
        """`{"executions": N, "timeout": S}` -> the report as JSON (profiling.py); waits for
        the model's next N executions without holding the loop."""
        self.server.profiler.check()  # disabled or busy: say so before parsing the body
        doc = await self._json(req, "profile request")
        report = await self.server.profile_with_parameters(name, version, doc)
        return Response(200, await asyncio.to_thread(orjson.dumps, report.as_dict()))

    # ------------------------------------------------------------------ inference

    async def infer(self, req: Request, name: str, version: str) -> Response:
        tracer = self.server.tracer
        if tracer.active:
            headers = req.headers
            trace = tracer.sample(name, headers.get("traceparent"), headers.get("tracestate"))
            if trace is not None:
                return await self._infer_traced(req, name, version, trace)
        return await self._infer(req, name, version, None)

    async def _infer_traced(self, req: Request, name: str, version: str, trace: Trace) -> Response:
        """Triton's HTTP timestamps around the core's; the trace is written once sent."""
        if req.recv_start_ns:
            trace.stamp("HTTP_RECV_START", req.recv_start_ns)
            trace.stamp("HTTP_RECV_END", req.recv_end_ns)
        tracer = self.server.tracer
        try:
            response = await self._infer(req, name, version, trace)
        except asyncio.CancelledError:
            tracer.finish(trace)  # the client went away
            raise
        except Exception as e:
            response = error_response(e)
        trace.stamp("INFER_RESPONSE_COMPLETE", now_ns())

        def sent(start: int, end: int) -> None:
            if start:
                trace.stamp("HTTP_SEND_START", start)
                trace.stamp("HTTP_SEND_END", end)
            tracer.finish(trace)

        response.sent = sent
        return response

    async def _infer(self, req: Request, name: str, version: str, trace: Trace | None) -> Response:
        if _offload(req):
            request, plan = await asyncio.to_thread(self._decode_infer, req, name, version)
        else:
            request, plan = self._decode_infer(req, name, version)
        request.trace = trace
        response = await self.server.infer(request)
        if sum(t.data.nbytes for t in response.outputs) < OFFLOAD_OUTPUT_BYTES:
            return self._reply(response, plan)
        # Large outputs: JSON text (at most 8x the binary size) and compression take long.
        accept = req.headers.get("accept-encoding")
        return await asyncio.to_thread(self._reply, response, plan, accept)

    def _reply(
        self, response: InferResponse, plan: OutputPlan, accept: str | None = None
    ) -> Response:
        """The infer reply; compressed here when `accept` is given (else when it is written)."""
        encoded = encode_response(response, plan, self.shm)
        if not encoded.blobs:
            reply = Response(200, encoded.header, compressible=True)
        else:
            reply = Response(
                200,
                encoded.header,
                _OCTET,
                encoded.blobs,
                [(b"Inference-Header-Content-Length", b"%d" % len(encoded.header))],
                compressible=True,
            )
        return compress_reply(reply, accept) if accept else reply

    def _decode_infer(
        self, req: Request, name: str, version: str
    ) -> tuple[InferRequest, OutputPlan]:
        body = self._body(req)
        length = header_length(req.headers.get("inference-header-content-length"), len(body))
        if length == 0:
            config = self.server.model_config(name, version)
            request, plan = decode_raw_request(body, name, version, config)
        else:
            request, plan = decode_request(body, length, name, version, self.shm)
        return request, plan

    # ------------------------------------------------------------------ repository

    async def repository_index(self, req: Request, repo: str) -> Response:
        doc = await self._json(req, "repository index request")
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise bad_request("Invalid value for 'ready': expected a boolean")
        return Response(200, orjson.dumps(self.server.repository_index(ready)))

    async def load(self, req: Request, repo: str, name: str) -> Response:
        if repo:
            raise unsupported("'repository_name' specification is not supported")
        params = await self._parameters(req, "load request")
        for key, value in params.items():
            if key.startswith("file:") and isinstance(value, str):  # file content: base64
                try:
                    params[key] = base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise bad_request(f"load parameter '{key}' is not valid base64") from None
        await self.server.load_with_parameters(name, params)
        return Response(200)

    async def unload(self, req: Request, repo: str, name: str) -> Response:
        if repo:
            raise unsupported("'repository_name' specification is not supported")
        params = await self._parameters(req, "unload request")
        await self.server.unload_with_parameters(name, params)
        return Response(200)

    async def _parameters(self, req: Request, what: str) -> dict[str, Any]:
        params = (await self._json(req, what)).get("parameters", {})
        if not isinstance(params, dict):
            raise bad_request(f"the {what}'s 'parameters' must be an object")
        return params

    # ------------------------------------------------------------------ shared memory

    def shm_status(self, req: Request, region: str) -> Response:
        return Response(200, orjson.dumps(self.server.shm.status(region)))

    async def shm_register(self, req: Request, region: str) -> Response:
        registry = self.shm.check()
        if not region:
            raise bad_request("missing region name in the register request path")
        doc = await self._json(req, "shared memory register request")
        key = doc.get("key")
        if not isinstance(key, str):  # what the key may name is the core's to say
            raise bad_request("the register request needs a string 'key' (the shm object name)")
        offset, size = _counts(doc, offset=0, byte_size=None)
        registry.register(region, key, offset, size)
        return Response(200)

    def shm_unregister(self, req: Request, region: str) -> Response:
        self.shm.check().unregister(region)
        return Response(200)

    def cuda_status(self, req: Request, region: str) -> Response:
        return Response(200, orjson.dumps(self.server.shm.cuda_status(region)))

    async def cuda_register(self, req: Request, region: str) -> Response:
        registry = self.shm.check()
        if not region:
            raise bad_request("missing region name in the register request path")
        doc = await self._json(req, "CUDA shared memory register request")
        handle = doc.get("raw_handle")
        b64 = handle.get("b64") if isinstance(handle, dict) else None
        if not isinstance(b64, str):
            raise bad_request('the register request needs "raw_handle": {"b64": "<base64>"}')
        try:
            raw = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise bad_request("'raw_handle' is not valid base64") from None
        device_id, size = _counts(doc, device_id=0, byte_size=None)
        registry.register_cuda(region, raw, device_id, size)
        return Response(200)

    def cuda_unregister(self, req: Request, region: str) -> Response:
        self.shm.check().unregister_cuda(region)  # unknown names are not an error (Triton)
        return Response(200)


def trace_changes(doc: dict[str, Any]) -> Changes:
    """A trace setting request body → the core's changes: `trace_level` an array of strings,
    the others strings; null clears a model's own value."""
    if "trace_file" in doc:
        raise unsupported(FILE_READONLY)
    changes: Changes = {}
    for key in ("trace_level", "trace_rate", "trace_count", "log_frequency"):
        if key not in doc:
            continue
        v = doc[key]
        if v is None:
            changes[key] = None
        elif key == "trace_level":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise bad_request("'trace_level' must be an array of strings")
            changes[key] = v
        elif isinstance(v, str):
            changes[key] = [v]
        else:
            raise bad_request(f"'{key}' must be a string, got {orjson.dumps(v).decode()}")
    return changes


def _counts(doc: dict[str, Any], **defaults: int | None) -> list[int]:
    """The register request's integer fields, in order; each must be a non-negative integer
    (a field whose default is None must be present)."""
    values = []
    for field_name, default in defaults.items():
        v = doc.get(field_name, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad_request(f"the register request needs a non-negative integer '{field_name}'")
        values.append(v)
    return values


def _offload(req: Request) -> bool:
    """Whether decoding this body may take milliseconds (a compressed body may inflate up to the
    input size limit; a large JSON text takes long to parse): then it is decoded in a worker
    thread, not on the event loop. Binary tensor data after a short JSON header does not count."""
    if len(req.body) < OFFLOAD_JSON_BYTES:
        return "content-encoding" in req.headers
    header = req.headers.get("inference-header-content-length", "").strip()
    return (
        not header.isdigit()
        or int(header) >= OFFLOAD_JSON_BYTES
        or "content-encoding" in req.headers
    )
