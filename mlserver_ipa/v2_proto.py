"""The V2 gRPC protocol (KServe/Triton `inference.GRPCInferenceService`) as this project speaks it: the message
classes, the service's method table for servers and clients, parameters to and from Python, and the mapping
between HTTP statuses (what our errors carry) and gRPC status codes.

The messages are MLServer 1.7.1's own generated descriptors (`mlserver.grpc.dataplane_pb2`), built again into a
descriptor pool of their own with the two `InferParameter` kinds MLServer's copy lacks and KServe's has
(`double_param` = 4, `uint64_param` = 5): without them a float parameter sent by `tritonclient.grpc`
(`deadline_ms: 200.0`) would arrive as nothing. No generated code is committed, and tritonclient's own
`service_pb2` (which collides with MLServer's in the default pool) is never imported by a server.

    pb.ModelInferRequest(model_name="resnet", ...)        # any message of the service
    server.add_generic_rpc_handlers([handler(servicer)])  # a servicer: `async def ModelInfer(request, context)`
    stub = Stub(channel); await stub.ModelInfer(request, timeout=0.2, metadata=[("ipa-deadline", "...")])
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from mlserver.grpc import dataplane_pb2 as _mlserver_pb

SERVICE = "inference.GRPCInferenceService"
METHODS: dict[str, tuple[str, str]] = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse"),
    "RepositoryModelLoad": ("RepositoryModelLoadRequest", "RepositoryModelLoadResponse"),
    "RepositoryModelUnload": ("RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse"),
}
"""The unary methods served (`ModelStreamInfer` is not: UNIMPLEMENTED)."""


def _build() -> SimpleNamespace:
    proto = descriptor_pb2.FileDescriptorProto()
    _mlserver_pb.DESCRIPTOR.CopyToProto(proto)
    proto.name = "ipa/v2_dataplane.proto"
    for message in proto.message_type:
        if message.name == "InferParameter" and not any(f.number == 4 for f in message.field):
            for name, number, kind in (("double_param", 4, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
                                       ("uint64_param", 5, descriptor_pb2.FieldDescriptorProto.TYPE_UINT64)):
                message.field.add(name=name, number=number, type=kind, oneof_index=0,
                                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    file = pool.Add(proto)
    del file
    names = {m.name for m in proto.message_type}
    return SimpleNamespace(**{
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{n}")) for n in names})


pb = _build()
"""The message classes, by name (`pb.ModelInferRequest`, `pb.InferParameter`, ...)."""


def handler(servicer: object) -> grpc.GenericRpcHandler:
    """The generic handler serving every method of `METHODS` that `servicer` has (as an async method)."""
    handlers = {}
    for method, (request, response) in METHODS.items():
        fn = getattr(servicer, method, None)
        if fn is not None:
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=getattr(pb, request).FromString,
                response_serializer=getattr(pb, response).SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class Stub:
    """A client of the service on a `grpc.aio` channel: `await stub.ModelInfer(request, timeout=..., metadata=...)`."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        for method, (request, response) in METHODS.items():
            setattr(self, method, channel.unary_unary(
                f"/{SERVICE}/{method}", request_serializer=getattr(pb, request).SerializeToString,
                response_deserializer=getattr(pb, response).FromString))

    ModelInfer: Callable[..., Awaitable[Any]]
    ModelReady: Callable[..., Awaitable[Any]]
    ServerLive: Callable[..., Awaitable[Any]]
    ServerReady: Callable[..., Awaitable[Any]]
    ModelMetadata: Callable[..., Awaitable[Any]]
    RepositoryModelLoad: Callable[..., Awaitable[Any]]
    RepositoryModelUnload: Callable[..., Awaitable[Any]]


def channel_options(max_message_bytes: int, max_metadata_bytes: int | None = None) -> list[tuple[str, int]]:
    """Options bounding what a server (or channel) accepts: messages over `max_message_bytes` are refused
    RESOURCE_EXHAUSTED before they are parsed."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    if max_metadata_bytes is not None:
        options.append(("grpc.max_metadata_size", max_metadata_bytes))
    return options


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The first value of a call's invocation metadata `key` (lower case), as text."""
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


# -- parameters ------------------------------------------------------------------------------------------

def params_from_pb(entries: Mapping[str, Any]) -> dict[str, Any]:
    """A message's `parameters` map as Python values (bool, int, float, str)."""
    out: dict[str, Any] = {}
    for key, value in entries.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is not None:
            out[key] = getattr(value, kind)
    return out


def params_to_pb(target: MutableMapping[str, Any], values: Mapping[str, Any]) -> None:
    """Fill a message's `parameters` map from Python values; None and non-scalar values are left out."""
    for key, value in values.items():
        entry = target[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.int64_param = value
        elif isinstance(value, float) and math.isfinite(value):
            entry.double_param = value
        elif isinstance(value, str):
            entry.string_param = value
        else:
            del target[key]


# -- statuses --------------------------------------------------------------------------------------------

_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.FAILED_PRECONDITION,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status (500 and anything unknown: INTERNAL)."""
    return _TO_GRPC.get(http_status, grpc.StatusCode.INTERNAL)


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status a gRPC code is reported as (anything unknown: 502, the upstream failed)."""
    return _TO_HTTP.get(code, 502)
