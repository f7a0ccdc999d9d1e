"""The pipeline router's V2 gRPC server (`inference.GRPCInferenceService`), beside its REST one: a client such as
`tritonclient.grpc`, unmodified, calls the pipeline as one model.

    server = await start_grpc(router, "127.0.0.1", 8081, limits)     # in the router's event loop
    ...; await server.stop(grace)

Served: ServerLive, ServerReady (every stage has a ready replica), ModelReady, ServerMetadata, ModelMetadata
(the pipeline; its stages as a parameter-free platform string) and ModelInfer. The request's tensors stay raw
contents (`wire_tensors`) into the pipeline (`PipelineRouter.infer`, the same path as REST), and the answer's
go out raw. The absolute deadline is the `ipa-deadline` metadata (epoch ms), else `deadline_at_ms` /
`deadline_ms` parameters, else the gRPC deadline of the call (what the request says wins over the transport's
timeout). A relative budget counts from the arrival's stamp.

Arrivals are counted and stamped before the message is read, as REST's are when their headers are parsed
(`router.accept_arrivals`): `ArrivalInterceptor` sees each ModelInfer call's metadata first. In grpcio's aio
server (`_cygrpc/aio/server.pyx.pxi`) the serving loop takes a call from gRPC core with its metadata only and
starts a task for it, whose first step is the interceptors (`_handle_rpc` -> `_find_method_handler`); only after
them does `_handle_unary_unary_rpc` receive the message and deserialize it. So under overload the count is of
what arrives, and a message that is never read (over `max_body_bytes`, refused RESOURCE_EXHAUSTED; a call the
client gives up on) is counted too. The model name is inside the message, so every ModelInfer call counts as an
arrival of the pipeline (this router serves one model); one naming another model is answered NOT_FOUND and
counted as a 404. A `PipelineError`'s HTTP status is answered as its gRPC code with the reason (`v2_proto.grpc_code`:
504 DEADLINE_EXCEEDED, 503 UNAVAILABLE, 400 INVALID_ARGUMENT, ...). There is no repository API: the router's
table is written over REST with the pipeline's token. Messages are bounded by `RequestLimits.max_body_bytes`
and metadata by `max_header_bytes`, refused RESOURCE_EXHAUSTED by gRPC itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import grpc

from mlserver_ipa.deadlines import DEADLINE_HEADER, DEADLINE_PARAM, RELATIVE_PARAM, format_epoch_ms
from mlserver_ipa.limits import RequestLimits
from mlserver_ipa.pipeline_router import Arrival, PipelineError, PipelineRouter
from mlserver_ipa.v2_proto import (
    SERVICE,
    channel_options,
    grpc_code,
    handler,
    metadata_value,
    params_from_pb,
    params_to_pb,
    pb,
)
from mlserver_ipa.wire_tensors import fill_pb_outputs, from_pb_inputs

PLATFORM = "ipa-pipeline"
INFER_METHOD = f"/{SERVICE}/ModelInfer"


class RouterServicer:
    """V2 gRPC methods over one `PipelineRouter` (see module doc)."""

    def __init__(self, router: PipelineRouter) -> None:
        self.router = router

    async def _known(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if name != self.router.pipeline:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"model {name!r} not found; this router serves {self.router.pipeline!r}")

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.router.ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._known(request.name, context)
        return pb.ModelReadyResponse(ready=self.router.ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="ipa-router", version="", extensions=[])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._known(request.name, context)
        return pb.ModelMetadataResponse(name=self.router.pipeline, platform=PLATFORM)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext,
                         arrival: Arrival | None = None) -> Any:
        """Serve one request through the pipeline. `arrival`: its stamp and `ipa-deadline` metadata, taken by
        `ArrivalInterceptor` before the message was read; None (a server without it): stamped now."""
        if arrival is None:
            arrival = self.router.arrived(metadata_value(context, DEADLINE_HEADER))
        if request.model_name != self.router.pipeline:
            self.router.m_requests.labels(self.router.pipeline, "404").inc()  # it was counted as an arrival
            await self._known(request.model_name, context)
        params = params_from_pb(request.parameters)
        remaining = context.time_remaining()
        if (arrival.deadline_header is None and remaining is not None
                and not {DEADLINE_PARAM, RELATIVE_PARAM} & params.keys()):
            # The transport's timeout, when nothing else: grpc keeps it as an absolute deadline of the call.
            arrival = replace(arrival, deadline_header=format_epoch_ms(self.router.clocks.now_ms()
                                                                       + remaining * 1000.0))
        try:
            body: dict[str, Any] = {"inputs": from_pb_inputs(request), "parameters": params}
        except ValueError as e:
            self.router.m_requests.labels(self.router.pipeline, "400").inc()  # every arrival answered and counted
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if request.id:
            body["id"] = request.id
        try:
            result = await self.router.infer(body, arrival)
        except PipelineError as e:
            await context.abort(grpc_code(e.status), str(e))
        response = pb.ModelInferResponse(model_name=self.router.pipeline, id=request.id)
        try:
            fill_pb_outputs(response, result.get("outputs") or [])
        except ValueError as e:  # a stage answered a tensor that is not its datatype
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"a stage answered a bad tensor: {e}")
        params_to_pb(response.parameters, result.get("parameters") or {})
        return response


def _metadata_value(metadata: Sequence[Any] | None, key: str) -> str | None:
    """The first value of `key` in a call's invocation metadata (as `HandlerCallDetails` has it), as text."""
    for item in metadata or ():
        name, value = item
        if name == key:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


class ArrivalInterceptor(grpc.aio.ServerInterceptor):
    """Counts and stamps every ModelInfer call as its metadata comes in, before its message is read (see module
    doc), and hands the `Arrival` to `RouterServicer.ModelInfer`."""

    def __init__(self, servicer: RouterServicer) -> None:
        self.servicer = servicer

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method_handler = await continuation(handler_call_details)
        if method_handler is None or handler_call_details.method != INFER_METHOD:
            return method_handler
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        arrival = self.servicer.router.arrived(_metadata_value(metadata, DEADLINE_HEADER))
        servicer = self.servicer

        async def infer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await servicer.ModelInfer(request, context, arrival)

        return grpc.unary_unary_rpc_method_handler(infer, request_deserializer=method_handler.request_deserializer,
                                                   response_serializer=method_handler.response_serializer)


async def start_grpc(router: PipelineRouter, host: str, port: int, limits: RequestLimits) -> grpc.aio.Server:
    """Start serving `router` over V2 gRPC on host:port in the running event loop, arrivals counted before their
    message is read (`ArrivalInterceptor`); `RuntimeError` when it cannot listen there."""
    servicer = RouterServicer(router)
    server = grpc.aio.server(interceptors=[ArrivalInterceptor(servicer)],
                             options=channel_options(limits.max_body_bytes, limits.max_header_bytes))
    server.add_generic_rpc_handlers([handler(servicer)])
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server
