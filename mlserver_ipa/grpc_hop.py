"""The router's V2 gRPC calls to replicas (the hop of a stage whose route says `protocol: grpc`): tensors go as
raw contents, so what came raw (from a gRPC client or the previous stage's gRPC answer) is never turned into
Python numbers at the router, and nothing is JSON on the way (`wire_tensors`).

    hop = GrpcHop()
    status, payload = await hop.call("127.0.0.1:8081", "resnet", request, {"ipa-deadline": "..."}, timeout=0.2)
    await hop.aclose()

`request` is the router's V2 request dict (`inputs`, `parameters`, `id`); `payload` the answer in the same form
(`outputs` with `bytes` data, `parameters`, or `error`), and `status` the HTTP status the gRPC code stands for
(`v2_proto.http_status`: UNAVAILABLE, which a replica that is gone or overloaded answers, is 503; a call past
its `timeout` is 504), so the router judges both hops by one rule. One channel per replica address, opened on
first use and kept while the address is in the table (gRPC multiplexes every call on it); `prune` closes those
of replicas that left it once their last call is done, so channels stay as many as the replicas.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import grpc

from mlserver_ipa.limits import RequestLimits
from mlserver_ipa.v2_proto import Stub, channel_options, http_status, params_from_pb, params_to_pb, pb
from mlserver_ipa.wire_tensors import fill_pb_inputs, from_pb_outputs


class GrpcHop:
    """gRPC channels to a stage's replicas, by `host:port` (see module doc)."""

    def __init__(self, max_message_bytes: int = RequestLimits().max_body_bytes) -> None:
        self.max_message_bytes = max_message_bytes
        self._stubs: dict[str, tuple[grpc.aio.Channel, Stub]] = {}
        self._in_flight: dict[str, int] = {}

    def _stub(self, address: str) -> Stub:
        found = self._stubs.get(address)
        if found is None:
            channel = grpc.aio.insecure_channel(address, options=channel_options(self.max_message_bytes))
            found = self._stubs[address] = (channel, Stub(channel))
        return found[1]

    async def call(self, address: str, model: str, request: Mapping[str, Any], headers: Mapping[str, str],
                   timeout: float) -> tuple[int, dict[str, Any]]:
        """One `ModelInfer` on the replica at `address`; `headers` go as metadata (the deadline)."""
        message = pb.ModelInferRequest(model_name=model, id=str(request.get("id") or ""))
        params_to_pb(message.parameters, request.get("parameters") or {})
        try:
            fill_pb_inputs(message, request["inputs"])
        except ValueError as e:
            return 400, {"error": str(e)}
        metadata = tuple((k, v) for k, v in headers.items() if k != "content-type")
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        try:
            response = await self._stub(address).ModelInfer(message, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            return http_status(e.code()), {"error": e.details() or e.code().name}
        finally:
            self._in_flight[address] -= 1
        return 200, {"model_name": response.model_name, "id": response.id or None,
                     "parameters": params_from_pb(response.parameters), "outputs": from_pb_outputs(response)}

    async def prune(self, keep: Collection[str]) -> None:
        """Close the channels to addresses not in `keep` that have no call in flight."""
        for address in [a for a in self._stubs if a not in keep and not self._in_flight.get(a)]:
            channel, _ = self._stubs.pop(address)
            self._in_flight.pop(address, None)
            await channel.close()

    @property
    def addresses(self) -> list[str]:
        """The addresses a channel is open to."""
        return sorted(self._stubs)

    async def aclose(self) -> None:
        stubs, self._stubs = self._stubs, {}
        for channel, _ in stubs.values():
            await channel.close()
