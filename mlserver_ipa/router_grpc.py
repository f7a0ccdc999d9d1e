"""The pipeline router's V2 gRPC server (`inference.GRPCInferenceService`), beside its REST one: a client such as
`tritonclient.grpc`, unmodified, calls the pipeline as one model.

    server = await start_grpc(router, "127.0.0.1", 8081, limits)     # in the router's event loop
    ...; await server.stop(grace)

Served: ServerLive, ServerReady (every stage has a ready replica), ModelReady, ServerMetadata, ModelMetadata
(the pipeline; its stages as a parameter-free platform string) and ModelInfer. The request's tensors stay raw
contents (`wire_tensors`) into the pipeline (`PipelineRouter.infer`, the same path as REST), and the answer's
go out raw. The absolute deadline is the `ipa-deadline` metadata (epoch ms), else `deadline_at_ms` /
`deadline_ms` parameters, else the gRPC deadline of the call (what the request says wins over the transport's
timeout); the arrival is stamped and counted before anything
is read. A `PipelineError`'s HTTP status is answered as its gRPC code with the reason (`v2_proto.grpc_code`:
504 DEADLINE_EXCEEDED, 503 UNAVAILABLE, 400 INVALID_ARGUMENT, ...). There is no repository API: the router's
table is written over REST with the pipeline's token. Messages are bounded by `RequestLimits.max_body_bytes`
and metadata by `max_header_bytes`, refused RESOURCE_EXHAUSTED by gRPC itself.
"""

from __future__ import annotations

from typing import Any

import grpc

from mlserver_ipa.deadlines import DEADLINE_HEADER, DEADLINE_PARAM, RELATIVE_PARAM, format_epoch_ms
from mlserver_ipa.limits import RequestLimits
from mlserver_ipa.pipeline_router import PipelineError, PipelineRouter
from mlserver_ipa.v2_proto import (
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

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._known(request.model_name, context)
        now_ms = self.router.clocks.now_ms()
        params = params_from_pb(request.parameters)
        header = metadata_value(context, DEADLINE_HEADER)
        remaining = context.time_remaining()
        if header is None and remaining is not None and not {DEADLINE_PARAM, RELATIVE_PARAM} & params.keys():
            header = format_epoch_ms(now_ms + remaining * 1000.0)  # the transport's timeout, when nothing else
        arrival = self.router.arrived(header)
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


async def start_grpc(router: PipelineRouter, host: str, port: int, limits: RequestLimits) -> grpc.aio.Server:
    """Start serving `router` over V2 gRPC on host:port in the running event loop; `RuntimeError` when it cannot
    listen there."""
    server = grpc.aio.server(options=channel_options(limits.max_body_bytes, limits.max_header_bytes))
    server.add_generic_rpc_handlers([handler(RouterServicer(router))])
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server
