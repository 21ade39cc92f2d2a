"""`inference.GRPCInferenceService` over InferenceServer, on the stubs tritonclient ships.

Each RPC is a thin adapter: protobuf in, one core call, protobuf out. Errors leave through one
place (`_abort`, using convert.GRPC_CODES) with the core's message unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2 as pb

from torchtide.errors import ServerError, unavailable, unsupported
from torchtide.frontends.grpc.connection import AbortError
from torchtide.frontends.grpc.convert import (
    decode_request,
    encode_response,
    grpc_code,
    params_to_dict,
    parse_dict,
    shm_refused,
)
from torchtide.frontends.limits import (
    OFFLOAD_OUTPUT_BYTES,
    OFFLOAD_TYPED_ELEMENTS,
    STREAM_INFLIGHT,
)
from torchtide.server import InferenceServer
from torchtide.tracing import Changes, Trace, Tracer, now_ns
from torchtide.types import InferResponse

log = logging.getLogger("torchtide.grpc")

SHUTTING_DOWN = "server is shutting down; not accepting new requests"

_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def _message(exc: BaseException) -> str:
    """A ServerError's own message; anything else is unexpected: logged, named by its type."""
    if isinstance(exc, ServerError):
        return exc.message
    log.error("unexpected error serving a gRPC request", exc_info=exc)
    return f"{type(exc).__name__}: {exc}"


async def _abort(context: Any, exc: BaseException) -> None:
    """The one exit for unary errors: ServerError keeps its status and message; anything else
    is INTERNAL."""
    code = grpc_code(exc.status) if isinstance(exc, ServerError) else grpc.StatusCode.INTERNAL
    await context.abort(code, _message(exc))


def rpc(*, refuse: bool = True) -> Callable[[_F], _F]:
    """Wrap a unary handler: refuse while stopping (health RPCs excepted), map errors."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        async def handler(self: InferenceService, request: Any, context: Any) -> Any:
            if refuse and self.refusing():
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            try:
                return await fn(self, request, context)
            except AbortError:
                raise
            except Exception as e:
                await _abort(context, e)

        return handler  # type: ignore[return-value]

    return wrap


_WAKE = object()  # wakes a stream's writer when its reader ends


@dataclass(slots=True)
class _Traced:
    """A stream's answer whose request is traced."""

    item: Any
    trace: Trace


def _sample(tracer: Tracer, model: str, context: Any) -> Trace | None:
    if not tracer.propagates:
        return tracer.sample(model)
    meta = dict(context.invocation_metadata())
    return tracer.sample(model, meta.get("traceparent"), meta.get("tracestate"))


class InferenceService:
    def __init__(self, server: InferenceServer, *, allow_client_shm: bool = False) -> None:
        self.server = server
        self.shm = server.shm if allow_client_shm else None
        self.closing = False
        self._readers: set[asyncio.Task[None]] = set()

    def refusing(self) -> bool:
        return self.closing or not self.server.is_live()

    # ------------------------------------------------------------------ health and metadata

    @rpc(refuse=False)
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=not self.closing and self.server.is_live())

    @rpc(refuse=False)
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=not self.closing and self.server.is_ready())

    @rpc(refuse=False)
    async def ModelReady(self, request: Any, context: Any) -> Any:
        # a malformed name or version is an error, not False (the core raises it)
        ready = self.server.model_ready(request.name, request.version) and not self.closing
        return pb.ModelReadyResponse(ready=ready)

    @rpc()
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return parse_dict(self.server.metadata(), pb.ServerMetadataResponse())

    @rpc()
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.server.model_metadata(request.name, request.version)
        return parse_dict(meta, pb.ModelMetadataResponse())

    @rpc()
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        config = self.server.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=config)

    @rpc()
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = self.server.statistics(request.name, request.version)
        return parse_dict({"model_stats": stats}, pb.ModelStatisticsResponse())

    # ------------------------------------------------------------------ inference

    async def _infer(
        self, request: Any, trace: Trace | None = None, streamed: bool = False
    ) -> Any:
        """The response message; or, for large outputs, it serialized in a worker thread (a
        streamed one inside its ModelStreamInferResponse): copying takes long."""
        if self.refusing():
            raise unavailable(SHUTTING_DOWN)
        if request.raw_input_contents or _typed_elements(request) < OFFLOAD_TYPED_ELEMENTS:
            req, shm_out = decode_request(request, self.shm)
        else:  # typed contents become arrays element by element: long for many, off the loop
            req, shm_out = await asyncio.to_thread(decode_request, request, self.shm)
        req.trace = trace
        resp = await self.server.infer(req)
        if sum(t.data.nbytes for t in resp.outputs) < OFFLOAD_OUTPUT_BYTES:
            return encode_response(resp, shm_out, self.shm)
        return await asyncio.to_thread(self._serialized, resp, shm_out, streamed)

    def _serialized(self, resp: InferResponse, shm_out: Any, streamed: bool) -> bytes:
        message = encode_response(resp, shm_out, self.shm)
        if streamed:
            message = pb.ModelStreamInferResponse(infer_response=message)
        return bytes(message.SerializeToString())

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        # Not wrapped by @rpc: the hot path, one frame less. Same error mapping.
        try:
            tracer = self.server.tracer
            if tracer.active:
                trace = _sample(tracer, request.model_name, context)
                if trace is not None:
                    return await self._infer_traced(request, context, tracer, trace)
            return await self._infer(request)
        except Exception as e:
            await _abort(context, e)

    async def _infer_traced(self, request: Any, context: Any, tracer: Tracer, trace: Trace) -> Any:
        """Triton's gRPC timestamps around the core's; the trace is written once sent."""
        opened, read = context.received()
        if opened:
            trace.stamp("GRPC_WAITREAD_START", opened)
            trace.stamp("GRPC_WAITREAD_END", read)

        def sent(start: int, end: int) -> None:
            trace.stamp("GRPC_SEND_START", start)
            trace.stamp("GRPC_SEND_END", end)
            tracer.finish(trace)

        context.sent = sent
        try:
            return await self._infer(request, trace)
        finally:
            trace.stamp("INFER_RESPONSE_COMPLETE", now_ns())

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: Any) -> None:
        """Requests are served concurrently; each gets one response, in completion order.
        An error is an `error_message` in the stream (the stream stays open), unless the client
        sent the header `triton_grpc_error: true`: then, as Triton, the error closes the stream
        with its gRPC status. On stop() the stream stops reading, answers what it has, and ends.
        At most STREAM_INFLIGHT requests are read and not yet answered: then reading waits for
        answers to be written, which wait for a client that does not read them (Context.write),
        so a slow reader ends up blocked by flow control, not buffered without end."""
        strict = any(
            k == "triton_grpc_error" and v == "true" for k, v in context.invocation_metadata() or ()
        )
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        pending = 0  # requests read and not yet answered
        tracer = self.server.tracer
        room = asyncio.Event()  # set when an answer is written

        async def one(request: Any, waited: int, got: int) -> None:
            nonlocal pending
            trace = _sample(tracer, request.model_name, context) if tracer.active else None
            if trace is not None and waited:
                trace.stamp("GRPC_WAITREAD_START", waited)
                trace.stamp("GRPC_WAITREAD_END", got)
            try:
                item: Any = await self._infer(request, trace, streamed=True)
                if type(item) is not bytes:
                    item = pb.ModelStreamInferResponse(infer_response=item)
            except Exception as e:
                item = (e, request.id)
            finally:
                pending -= 1
            if trace is not None:
                trace.stamp("INFER_RESPONSE_COMPLETE", now_ns())
                item = _Traced(item, trace)
            out.put_nowait(item)

        async def read() -> None:
            nonlocal pending
            waited = context.received()[0]
            async for request in request_iterator:
                got = now_ns() if waited else 0
                pending += 1
                task = loop.create_task(one(request, waited, got))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                waited = now_ns() if tracer.active else 0
                while pending + out.qsize() >= STREAM_INFLIGHT:
                    room.clear()
                    await room.wait()

        reader = loop.create_task(read())
        reader.add_done_callback(lambda _: out.put_nowait(_WAKE))
        self._readers.add(reader)
        try:
            while not (reader.done() and pending == 0 and out.empty()):
                item = await out.get()
                if item is _WAKE:
                    continue
                trace = None
                if isinstance(item, _Traced):
                    item, trace = item.item, item.trace
                    start = now_ns()
                if isinstance(item, tuple):
                    exc, rid = item
                    if strict:
                        if trace is not None:
                            tracer.finish(trace)
                        await _abort(context, exc)
                    msg = _message(exc)
                    log.debug("gRPC ModelStreamInfer request '%s' failed: %s", rid, msg)
                    item = pb.ModelStreamInferResponse(
                        error_message=msg, infer_response=pb.ModelInferResponse(id=rid)
                    )
                await context.write(item)
                if trace is not None:
                    trace.stamp("GRPC_SEND_START", start)
                    trace.stamp("GRPC_SEND_END", now_ns())
                    tracer.finish(trace)
                room.set()
            if not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]  # the request stream itself failed
        finally:
            self._readers.discard(reader)
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    def close(self) -> None:
        """Refuse new RPCs; open streams stop reading and end once their requests are answered."""
        self.closing = True
        for reader in list(self._readers):
            reader.cancel()

    # ------------------------------------------------------------------ repository

    @staticmethod
    def _no_repository_name(name: str) -> None:
        if name:
            raise unsupported("'repository_name' specification is not supported")

    @rpc()
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        self._no_repository_name(request.repository_name)
        resp = pb.RepositoryIndexResponse()
        for e in self.server.repository_index(ready_only=request.ready):
            resp.models.add(
                name=e["name"],
                version=e.get("version", ""),
                state=e.get("state", ""),
                reason=e.get("reason", ""),
            )
        return resp

    @rpc()
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self._no_repository_name(request.repository_name)
        params = params_to_dict(request.parameters)
        await self.server.load_with_parameters(request.model_name, params)
        return pb.RepositoryModelLoadResponse()

    @rpc()
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self._no_repository_name(request.repository_name)
        params = params_to_dict(request.parameters)
        await self.server.unload_with_parameters(request.model_name, params)
        return pb.RepositoryModelUnloadResponse()

    # ------------------------------------------------------------------ shared memory

    @rpc()
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        # answered even when client shared memory is off (nothing is registered then), as
        # over HTTP and as tritonserver does on both protocols
        resp = pb.SystemSharedMemoryStatusResponse()
        for r in self.server.shm.status(request.name):
            resp.regions[r["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**r))
        return resp

    @rpc()
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        if self.shm is None:
            raise shm_refused()
        self.shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @rpc()
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        if self.shm is None:
            raise shm_refused()
        self.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @rpc()
    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        resp = pb.CudaSharedMemoryStatusResponse()
        for r in self.server.shm.cuda_status(request.name):
            resp.regions[r["name"]].CopyFrom(pb.CudaSharedMemoryStatusResponse.RegionStatus(**r))
        return resp

    @rpc()
    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        if self.shm is None:
            raise shm_refused()
        self.shm.register_cuda(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    @rpc()
    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        if self.shm is None:
            raise shm_refused()
        self.shm.unregister_cuda(request.name)  # unknown names are not an error (Triton)
        return pb.CudaSharedMemoryUnregisterResponse()

    # ------------------------------------------------------------------ trace and logging

    @rpc()
    async def TraceSetting(self, request: Any, context: Any) -> Any:
        changes: Changes | None = None
        if request.settings:
            # An empty value list clears a model's own value (falls back to the global one).
            changes = {k: list(v.value) or None for k, v in request.settings.items()}
        view = self.server.trace_settings(request.model_name, changes)
        resp = pb.TraceSettingResponse()
        for key, values in view.items():
            resp.settings[key].value.extend(values)
        return resp

    @rpc()
    async def LogSettings(self, request: Any, context: Any) -> Any:
        changes: dict[str, Any] = {}
        for key, v in request.settings.items():
            which = v.WhichOneof("parameter_choice")
            if which is not None:
                changes[key] = getattr(v, which)
        ls = self.server.log_settings
        values = ls.update(changes) if changes else ls.get()
        resp = pb.LogSettingsResponse()
        for key, value in values.items():
            s = resp.settings[key]
            if isinstance(value, bool):
                s.bool_param = value
            elif isinstance(value, int):
                s.uint32_param = value
            else:
                s.string_param = str(value)
        return resp


def _typed_elements(request: Any) -> int:
    """How many elements the request's typed `contents` hold (counting is cheap; converting is
    not)."""
    return sum(len(v) for t in request.inputs for _, v in t.contents.ListFields())
