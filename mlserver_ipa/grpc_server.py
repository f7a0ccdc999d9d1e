"""A replica's V2 gRPC server (`inference.GRPCInferenceService`), in place of MLServer's own on its gRPC port.

Why ours, on MLServer's port (one gRPC port per replica, not two): MLServer 1.7.1's servicer turns every
tensor's contents into Python lists (`ModelInferRequestConverter`) before the runtime sees them, which is the
cost a gRPC hop is there to avoid, and its server takes no interceptor, so repository load/unload could not
ask for the pipeline's token. Keeping both would leave the unguarded one listening. `mlserver_ipa.server`
builds MLServer with this server in the place of its `GRPCServer` (same `start`/`stop`); the REST server,
the model registry and the data plane stay MLServer's, so both transports serve the same models.

Per call:

- `ModelInfer`: the arrival is stamped first; the absolute deadline is the `ipa-deadline` metadata (epoch ms,
  as the REST header, `mlserver_ipa.deadlines`), else the request's `deadline_at_ms` parameter, else its
  `deadline_ms` counted from the arrival, else the gRPC deadline of the call. A deadline that is gone, or that
  the runtime's queue and service-time estimate say cannot be met (`admission.ADMISSION`, the check the REST
  layer asks), is answered DEADLINE_EXCEEDED before any tensor is decoded. Then `raw_input_contents` go to the
  runtime as bytes (its decoder makes them numpy with `np.frombuffer`, no lists; `BYTES` tensors are split by
  `text`), through MLServer's data plane (`DataPlane.infer`), and outputs are answered as raw contents;
- `RepositoryModelLoad` / `RepositoryModelUnload` need the pipeline's token in the `authorization` metadata
  (`Bearer <token>`, `mlserver_ipa.auth`): UNAUTHENTICATED without it or with another, PERMISSION_DENIED on a
  server without a token. Health, metadata, index and inference stay open;
- a message over `RequestLimits.max_body_bytes`, or metadata over `max_header_bytes`, is refused by gRPC
  itself (RESOURCE_EXHAUSTED) before it is parsed;
- every error is a gRPC status with the reason as its details: the HTTP status our errors carry is mapped by
  `v2_proto.grpc_code` (400 INVALID_ARGUMENT, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE,
  504 DEADLINE_EXCEEDED, ...). The server keeps serving after any of them.

Outputs are raw contents, or typed `contents` when `$IPA_GRPC_OUTPUTS` is `typed` (`GRPC_OUTPUTS_ENV`: what the
Seldon rendering sets on every stage but the last of a gRPC graph, whose executor chains nodes by `contents`).

`ModelStreamInfer` is not served (UNIMPLEMENTED): MLServer's proto streams `ModelInferResponse`s out of one
model's `predict_stream` (generative models; our runtime has none), KServe/Triton's streams
`ModelStreamInferResponse`s, one per request message: the two are not wire-compatible, and neither is a cheaper
path for one-shot inference than ModelInfer.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import grpc
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, Parameters, RequestInput, RequestOutput

from mlserver_ipa.admission import ADMISSION, Admission
from mlserver_ipa.auth import TokenError, check
from mlserver_ipa.deadlines import (
    ARRIVAL_HEADER,
    DEADLINE_HEADER,
    DEADLINE_PARAM,
    RELATIVE_PARAM,
    BadDeadline,
    Clocks,
    format_epoch_ms,
    parse_epoch_ms,
)
from mlserver_ipa.limits import RequestLimits
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

log = logging.getLogger(__name__)
STOP_GRACE_S = 5.0
GRPC_OUTPUTS_ENV = "IPA_GRPC_OUTPUTS"
"""`raw` (the default) or `typed`: how a replica's gRPC server answers its outputs (see module doc)."""


def call_deadline(context: grpc.aio.ServicerContext, params: dict[str, Any], now_ms: float) -> float | None:
    """The call's absolute deadline, epoch ms: `ipa-deadline` metadata, else the `deadline_at_ms` parameter,
    else `deadline_ms` counted from now, else the gRPC deadline (what the request says wins over the
    transport's timeout); None without any. `BadDeadline` when an absolute one is not a number (a malformed
    `deadline_ms` is left to the runtime, which refuses it 400)."""
    at = parse_epoch_ms(metadata_value(context, DEADLINE_HEADER), f"metadata {DEADLINE_HEADER}")
    if at is None:
        at = parse_epoch_ms(params.get(DEADLINE_PARAM), f"parameters.{DEADLINE_PARAM}")
    if at is None:
        relative = params.get(RELATIVE_PARAM)
        if isinstance(relative, int | float) and not isinstance(relative, bool) and math.isfinite(relative):
            at = now_ms + relative
        elif relative is None and (remaining := context.time_remaining()) is not None:
            at = now_ms + remaining * 1000.0
    return at


class ReplicaServicer:
    """The V2 gRPC methods of a replica over MLServer's data plane and repository (see module doc)."""

    def __init__(self, data_plane: Any, repository: Any, token: str | None,
                 admission: Admission = ADMISSION, clocks: Clocks | None = None, typed_outputs: bool = False) -> None:
        """`typed_outputs`: answer outputs as typed `contents` instead of raw contents (see module doc)."""
        self.typed_outputs = typed_outputs
        self.data_plane = data_plane
        self.repository = repository
        self.token = token
        self.admission = admission
        self.clocks = clocks or Clocks()

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=await self.data_plane.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=await self.data_plane.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=await self.data_plane.model_ready(name=request.name,
                                                                             version=request.version or None))

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = await self.data_plane.metadata()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=list(meta.extensions))

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = await self.data_plane.model_metadata(name=request.name, version=request.version or None)
        except MLServerError as e:
            await context.abort(grpc_code(e.status_code), str(e))
        response = pb.ModelMetadataResponse(name=meta.name, versions=list(meta.versions or []),
                                            platform=meta.platform or "")
        for src, dst in ((meta.inputs or [], response.inputs), (meta.outputs or [], response.outputs)):
            for t in src:
                dst.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        return response

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        now_ms = self.clocks.now_ms()
        params = params_from_pb(request.parameters)
        params.pop("headers", None)  # ours to fill: the arrival stamp and the deadline
        name = request.model_name
        try:
            deadline = call_deadline(context, params, now_ms)
        except BadDeadline as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        headers = {ARRIVAL_HEADER: format_epoch_ms(now_ms)}
        if deadline is not None:
            reason = self.admission.check(name, deadline)
            if reason is None and not self.admission.knows(name) and deadline <= now_ms:
                reason = f"deadline exceeded on arrival at model {name!r} ({now_ms - deadline:.1f} ms late)"
            if reason is not None:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, reason)
            headers[DEADLINE_HEADER] = format_epoch_ms(deadline)
        try:
            inputs = [RequestInput(**t) for t in from_pb_inputs(request)]
        except (ValueError, TypeError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        payload = InferenceRequest(
            id=request.id or None, inputs=inputs, parameters=Parameters(**params, headers=headers),
            outputs=[RequestOutput(name=o.name) for o in request.outputs] or None)
        try:
            result = await self.data_plane.infer(payload=payload, name=name, version=request.model_version or None)
            response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version or "",
                                             id=result.id or "")
            fill_pb_outputs(response, [o.model_dump(include={"name", "datatype", "shape", "data"})
                                       for o in result.outputs], typed=self.typed_outputs)
        except MLServerError as e:
            await context.abort(grpc_code(e.status_code), str(e))
        except ValueError as e:  # an output the runtime built that is not its datatype: the model's fault
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        if result.parameters is not None:
            params_to_pb(response.parameters, result.parameters.model_dump(exclude={"headers"}, exclude_none=True))
        return response

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from mlserver.types import RepositoryIndexRequest

        index = await self.repository.index(RepositoryIndexRequest(ready=request.ready or None))
        response = pb.RepositoryIndexResponse()
        for m in index:
            response.models.add(name=m.name, version=m.version or "", state=str(getattr(m.state, "value", m.state)),
                                reason=m.reason or "")
        return response

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        await self._repository_call(context, "load", request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        await self._repository_call(context, "unload", request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        try:
            check(metadata_value(context, "authorization"), self.token)
        except TokenError as e:
            await context.abort(grpc_code(e.status), str(e))

    async def _repository_call(self, context: grpc.aio.ServicerContext, what: str, model: str) -> None:
        try:
            await getattr(self.repository, what)(model)
        except MLServerError as e:
            await context.abort(grpc_code(e.status_code), str(e))


class GrpcServer:
    """The server MLServer starts and stops on its gRPC port: `ReplicaServicer` with the request limits."""

    def __init__(self, settings: Any, data_plane: Any, repository: Any, *, limits: RequestLimits,
                 token: str | None) -> None:
        self.settings = settings
        typed = os.environ.get(GRPC_OUTPUTS_ENV, "raw").strip().lower() == "typed"
        self.servicer = ReplicaServicer(data_plane, repository, token, typed_outputs=typed)
        self.limits = limits
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(options=channel_options(self.limits.max_body_bytes, self.limits.max_header_bytes))
        server.add_generic_rpc_handlers([handler(self.servicer)])
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        server.add_insecure_port(address)
        self._server = server
        await server.start()
        log.info("V2 gRPC (mlserver_ipa) on %s", address)
        await server.wait_for_termination()

    async def stop(self, sig: int | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace=STOP_GRACE_S)
