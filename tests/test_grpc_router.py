"""The router over V2 gRPC, both ways: `tritonclient.grpc` unmodified against a real router process, the hop to
replicas over gRPC with raw tensor contents (`StageRoute.protocol`), the same answer as REST, errors as gRPC
statuses, and a replica's gRPC address held to the allow-list. Real replica and router processes on loopback."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from conftest import AUTH, SMALL_RESOLUTION, TEST_TOKEN, MLServer, free_port, image_request
from test_grpc_replica import triton

from adapter.control.router_process import RouterProcess
from mlserver_ipa.deadlines import DEADLINE_HEADER
from mlserver_ipa.limits import RequestLimits
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute
from mlserver_ipa.router import PipelineRouter, serve
from mlserver_ipa.router_grpc import INFER_METHOD, start_grpc
from mlserver_ipa.v2_proto import Stub, params_from_pb, pb
from mlserver_ipa.wire_tensors import fill_pb_inputs, from_pb_outputs

SHAPE = [2, 3, SMALL_RESOLUTION, SMALL_RESOLUTION]


@pytest.fixture(scope="module")
def replica(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    return start_mlserver(variant_repo)


def grpc_only(replica: MLServer, protocol: str = "grpc") -> StageRoute:
    """A route whose replica's REST URL is a port nobody listens on: only the gRPC hop can answer."""
    return StageRoute(model="resnet", protocol=protocol, groups=[RouteGroup(variant="resnet18", replicas=[
        ReplicaRoute(id="c-0", url=f"http://127.0.0.1:{free_port()}", grpc_port=replica.grpc_port, batch_size=2)])])


@pytest.fixture
async def router_process(tmp_path: Path, replica: MLServer) -> AsyncIterator[RouterProcess]:
    async with RouterProcess("pipe", ["classifier"], port=0, token_file=Path(os.environ["IPA_TOKEN_FILE"]),
                             log=tmp_path / "router.log") as r:
        assert r.client is not None
        await r.client.update_stage("classifier", grpc_only(replica))
        yield r


async def test_tritonclient_grpc_against_the_router_process(router_process: RouterProcess) -> None:
    spec = {"address": router_process.grpc_address, "model": "pipe", "parameters": {"deadline_ms": 30000.0},
            "timeout_s": 120, "inputs": [{"name": "input", "datatype": "FP32", "shape": SHAPE, "seed": 3}]}
    got = triton(spec)
    assert got["live"] and got["ready"] and "error" not in got, got
    assert got["outputs"]["output"]["shape"] == [2, 1000]
    assert got["parameters"]["variants"] == "classifier=resnet18" and 0 < got["parameters"]["deadline_ms"] < 30000
    # The same request over REST, through the same gRPC hop: the same answer, as JSON.
    x = np.random.default_rng(3).random(SHAPE, dtype=np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": SHAPE, "data": x.ravel().tolist()}]}
    async with httpx.AsyncClient(base_url=router_process.url, timeout=60) as c:
        rest = await c.post("/v2/models/pipe/infer", json=body)
        assert rest.status_code == 200, rest.text
        assert sum(rest.json()["outputs"][0]["data"]) == pytest.approx(got["outputs"]["output"]["sum"], rel=1e-4)
        metrics = (await c.get("/metrics")).text
    assert 'ipa_router_arrivals_total{pipeline="pipe"} 2.0' in metrics


async def test_errors_come_back_as_grpc_statuses(router_process: RouterProcess) -> None:
    def call(**changes: object) -> dict:
        spec = {"address": router_process.grpc_address, "model": "pipe",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": SHAPE}], **changes}
        return triton(spec)

    past = f"{time.time() * 1000 - 50:.3f}"
    assert call(headers={DEADLINE_HEADER: past})["error"]["code"] == "StatusCode.DEADLINE_EXCEEDED"
    bad = call(inputs=[{"name": "input", "datatype": "FP32", "shape": [1, 3, 5, 5]}])["error"]
    assert bad["code"] == "StatusCode.INVALID_ARGUMENT" and "classifier" in bad["details"]
    async with grpc.aio.insecure_channel(router_process.grpc_address) as channel:
        stub = Stub(channel)
        request = pb.ModelInferRequest(model_name="other")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ModelInfer(request, timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # The router has no repository API (its table is written over REST with the token).
        with pytest.raises(grpc.aio.AioRpcError) as none:
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="pipe"), timeout=30)
        assert none.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "error" not in call()  # and it keeps serving


async def test_the_hop_protocol_is_the_routes(replica: MLServer) -> None:
    router = PipelineRouter("pipe", ["classifier"])
    await router.update_stage("classifier", grpc_only(replica, protocol="rest"))
    async with serve(router, port=0, token=TEST_TOKEN) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        over_rest = await c.post("/v2/models/pipe/infer", json=image_request())
        assert over_rest.status_code == 502 and "unreachable" in over_rest.json()["error"]
        put = await c.put("/router/stages/classifier", json=grpc_only(replica).model_dump(), headers=AUTH)
        assert put.status_code == 200, put.text
        assert (await c.post("/v2/models/pipe/infer", json=image_request())).status_code == 200
        assert router.grpc_channels == [f"127.0.0.1:{replica.grpc_port}"]
        # The gRPC address is held to the allow-list like the REST one.
        allowed = await c.put("/router/upstreams", json={"addresses": [f"127.0.0.1:{replica.http_port}"]},
                              headers=AUTH)
        assert allowed.status_code == 200
        route = grpc_only(replica).model_dump()
        route["groups"][0]["replicas"][0]["url"] = replica.http_url
        refused = await c.put("/router/stages/classifier", json=route, headers=AUTH)
        assert refused.status_code == 403 and f"127.0.0.1:{replica.grpc_port}" in refused.json()["error"]
        # A route without the replica: its channel is closed (channels stay as many as the replicas).
        await router.update_stage("classifier", StageRoute(model="resnet"))
        assert router.grpc_channels == []


@pytest.fixture(scope="module")
def detector(start_mlserver: Callable[..., MLServer], tmp_path_factory: pytest.TempPathFactory) -> MLServer:
    from mlserver_ipa.zoo import build_repository

    repo = build_repository("yolo", tmp_path_factory.mktemp("yolo") / "yolo", variants=["yolov5n"], resolution=64,
                            crop=SMALL_RESOLUTION, model_name="detector")
    return start_mlserver(repo)


async def test_a_two_stage_chain_answers_the_same_over_grpc_as_over_rest(detector: MLServer,
                                                                         replica: MLServer) -> None:
    x = np.random.default_rng(7).random((1, 3, 64, 64), dtype=np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": x.ravel().tolist()}],
            "parameters": {"deadline_ms": 30000.0}}
    answers = {}
    for protocol in ("rest", "grpc"):
        router = PipelineRouter("video", ["detector", "classifier"])
        for stage, model, variant, server in (("detector", "detector", "yolov5n", detector),
                                              ("classifier", "resnet", "resnet18", replica)):
            await router.update_stage(stage, StageRoute(model=model, protocol=protocol, groups=[RouteGroup(
                variant=variant, replicas=[ReplicaRoute(id=f"{stage}-0", url=server.http_url,
                                                        grpc_port=server.grpc_port)])]))
        async with serve(router, port=0) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
            resp = await c.post("/v2/models/video/infer", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["parameters"]["variants"] == "detector=yolov5n,classifier=resnet18"
        answers[protocol] = {o["name"]: o for o in resp.json()["outputs"]}
    assert set(answers["grpc"]) == set(answers["rest"]) == {"output", "detector.detections"}
    for name in answers["rest"]:
        rest, over_grpc = answers["rest"][name], answers["grpc"][name]
        assert rest["shape"] == over_grpc["shape"] and rest["datatype"] == over_grpc["datatype"]
        np.testing.assert_allclose(over_grpc["data"], rest["data"], rtol=1e-5, atol=1e-6)


async def test_raw_contents_go_through_both_hops_unchanged(replica: MLServer) -> None:
    """gRPC in, gRPC hop, gRPC out: the router's answer is the replica's, byte for byte."""
    router = PipelineRouter("pipe", ["classifier"])
    await router.update_stage("classifier", grpc_only(replica))
    port = free_port()
    server = await start_grpc(router, "127.0.0.1", port, RequestLimits())
    x = np.random.default_rng(5).random(SHAPE, dtype=np.float32)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as a, grpc.aio.insecure_channel(
                f"127.0.0.1:{replica.grpc_port}") as b:
            answers = []
            for stub, model in ((Stub(a), "pipe"), (Stub(b), "resnet")):
                request = pb.ModelInferRequest(model_name=model)
                fill_pb_inputs(request, [{"name": "input", "datatype": "FP32", "shape": SHAPE, "data": x.tobytes()}])
                response = await stub.ModelInfer(request, timeout=60)
                answers.append(from_pb_outputs(response)[0])
                if model == "pipe":
                    assert params_from_pb(response.parameters)["variants"] == "classifier=resnet18"
        assert answers[0]["data"] == answers[1]["data"] and answers[0]["shape"] == [2, 1000]
    finally:
        await server.stop(1.0)
        await router.aclose()


async def test_grpc_arrivals_are_counted_before_the_message_is_read(replica: MLServer) -> None:
    """A call whose message the client holds back is counted (and stamped) on its metadata alone; its relative
    budget counts from that stamp; a message never read (over the size limit) is counted too."""
    router = PipelineRouter("pipe", ["classifier"])
    await router.update_stage("classifier", grpc_only(replica))
    port = free_port()
    server = await start_grpc(router, "127.0.0.1", port, RequestLimits(max_body_bytes=64 << 10))

    def sample(name: str, **labels: str) -> float:
        return router.registry.get_sample_value(name, {"pipeline": "pipe", **labels}) or 0.0

    async def until_arrivals(n: float) -> None:
        for _ in range(3000):  # a hang guard, not a bound
            if sample("ipa_router_arrivals_total") >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"arrivals stayed at {sample('ipa_router_arrivals_total')}")

    def request(shape: list[int], deadline_ms: float) -> Any:
        message = pb.ModelInferRequest(model_name="pipe")
        x = np.zeros(shape, dtype=np.float32)
        fill_pb_inputs(message, [{"name": "input", "datatype": "FP32", "shape": shape, "data": x.tobytes()}])
        message.parameters["deadline_ms"].double_param = deadline_ms
        return message

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            # The same wire call as a unary ModelInfer, but the client decides when its one message goes.
            held = channel.stream_unary(INFER_METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
                                        response_deserializer=pb.ModelInferResponse.FromString)

            async def call_holding(message: Any, release: asyncio.Event) -> Any:
                async def one() -> AsyncIterator[Any]:
                    await release.wait()
                    yield message
                return await held(one(), timeout=120)

            go_late = asyncio.Event()
            late_call = asyncio.create_task(call_holding(request(SHAPE, 300.0), go_late))
            await until_arrivals(1)
            assert sample("ipa_router_requests_total", code="504") == 0  # counted, nothing read or answered yet
            await asyncio.sleep(0.6)  # twice its budget, counted from the stamp taken before now
            go_late.set()
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await late_call
            assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert sample("ipa_router_requests_total", code="504") == 1

            go = asyncio.Event()
            served = asyncio.create_task(call_holding(request(SHAPE, 60000.0), go))
            await until_arrivals(2)
            go.set()
            answer = await served
            assert from_pb_outputs(answer)[0]["shape"] == [2, 1000]
            assert sample("ipa_router_requests_total", code="200") == 1

            # Over the message limit: refused by gRPC before any handler, counted all the same.
            with pytest.raises(grpc.aio.AioRpcError) as big:
                await Stub(channel).ModelInfer(request([8, 3, SMALL_RESOLUTION, SMALL_RESOLUTION], 60000.0),
                                               timeout=60)
            assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Another model's name is inside the message: an arrival of this router, answered 404.
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await Stub(channel).ModelInfer(pb.ModelInferRequest(model_name="other"), timeout=60)
            assert other.value.code() == grpc.StatusCode.NOT_FOUND
            assert sample("ipa_router_requests_total", code="404") == 1
        assert sample("ipa_router_arrivals_total") == 4
    finally:
        await server.stop(1.0)
        await router.aclose()
