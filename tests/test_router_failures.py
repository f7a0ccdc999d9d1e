"""The router's failure paths against real replicas: a replica that answers 503 (its queue is full) is retried
on another one, a hung replica (stopped with SIGSTOP) becomes a 504 within the deadline (its request counted as
an arrival while it is still unanswered), a deadline that runs out between two stages is answered 504 before
the second stage is called, and a stage whose model has no `output` tensor to pass on is a 502 naming it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from conftest import SMALL_RESOLUTION, MLServer, image_request, write_model_settings
from onnx import TensorProto, helper

from mlserver_ipa.client import V2Client
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute
from mlserver_ipa.router import PipelineRouter, serve

R = SMALL_RESOLUTION


def group(variant: str, share: float, *replicas: tuple[str, str]) -> RouteGroup:
    return RouteGroup(variant=variant, load_share=share, replicas=[ReplicaRoute(id=i, url=u) for i, u in replicas])


@pytest.fixture(scope="module")
def busy(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    """A replica whose queue holds one request, serving resnet50 one row at a time (slow enough to fill)."""
    return start_mlserver(write_model_settings(variant_repo, "resnet", queue_limit=1, active="resnet50"))


@pytest.fixture(scope="module")
def free(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    return start_mlserver(variant_repo)


@pytest.fixture(scope="module")
def late(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    """A replica that serves requests past their deadline (on_late: serve) and says so."""
    return start_mlserver(write_model_settings(variant_repo, "resnet", on_late="serve"))


async def test_a_replica_answering_503_is_retried_on_another(busy: MLServer, free: MLServer) -> None:
    router = PipelineRouter("pipe", ["classifier"])
    # all the share on the busy replica: the first try goes there, the retry to the other group
    await router.update_stage("classifier", StageRoute(model="resnet", groups=[
        group("resnet50", 1.0, ("busy-0", busy.http_url)), group("resnet18", 0.0, ("free-0", free.http_url))]))
    async with V2Client(busy.http_url, timeout=120) as direct, serve(router, port=0) as url, \
            httpx.AsyncClient(base_url=url, timeout=60) as c:
        await direct.control("resnet", batch_size=1)
        x = np.zeros((64, 3, R, R), np.float32)
        blocker = asyncio.create_task(direct.infer("resnet", x, priority=0))
        queued = None
        while True:  # one request served, one waiting: the queue is full
            state = await direct.control("resnet")
            if state["in_flight"] and queued is None:
                queued = asyncio.create_task(direct.infer("resnet", x, priority=0))
            if state["in_flight"] and state["queue_length"] == 1:
                break
            await asyncio.sleep(0.002)
        resp = await c.post("/v2/models/pipe/infer", json=image_request(priority=5))  # less urgent: refused
        await asyncio.gather(blocker, queued)
    assert resp.status_code == 200, resp.text
    assert resp.json()["parameters"]["variants"] == "classifier=resnet18"
    assert router.registry.get_sample_value("ipa_router_retries_total", {"pipeline": "pipe", "stage": "classifier"}) == 1
    busy_503 = router.registry.get_sample_value("ipa_router_stage_requests_total", {
        "pipeline": "pipe", "stage": "classifier", "variant": "resnet50", "code": "503"})
    assert busy_503 == 1


async def test_a_hung_replica_becomes_a_504_within_the_deadline(free: MLServer) -> None:
    router = PipelineRouter("pipe", ["classifier"])
    await router.update_stage("classifier", StageRoute(model="resnet", groups=[
        group("resnet18", 1.0, ("c-0", free.http_url))]))
    async with serve(router, port=0) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        os.kill(free.process.pid, signal.SIGSTOP)  # alive, listening, answering nothing
        try:
            pending = asyncio.create_task(c.post("/v2/models/pipe/infer", json=image_request(deadline_ms=1000)))
            while router.table.outstanding.get("c-0", 0) == 0:
                await asyncio.sleep(0.005)
            # in flight, unanswered: the arrival is counted already (the load the adapter reads), the answer not
            labels = {"pipeline": "pipe"}
            assert router.registry.get_sample_value("ipa_router_arrivals_total", labels) == 1
            assert router.registry.get_sample_value("ipa_router_request_duration_seconds_count", labels) in (None, 0)
            resp = await pending
        finally:
            os.kill(free.process.pid, signal.SIGCONT)
        assert resp.status_code == 504 and "deadline exceeded in stage 'classifier'" in resp.json()["error"]
        again = await c.post("/v2/models/pipe/infer", json=image_request(deadline_ms=5000))
        assert again.status_code == 200, again.text  # the replica serves again once it runs


async def test_a_deadline_gone_between_stages_is_a_504_before_the_next(late: MLServer, free: MLServer,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The router's clock jumps 10 s once the first stage has answered: the deadline passes while it works, on any
    # machine (a real 0.5 ms deadline was sometimes gone before the first stage already, on a loaded one).
    skew = 0.0
    router = PipelineRouter("two", ["first", "second"], clock=lambda: time.monotonic() + skew)
    post = router._post

    async def first_then_late(stage: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal skew
        answer = await post(stage, *args, **kwargs)
        if stage == "first":
            skew = 10.0
        return answer

    monkeypatch.setattr(router, "_post", first_then_late)
    await router.update_stage("first", StageRoute(model="resnet", groups=[group("resnet18", 1.0, ("f-0", late.http_url))]))
    await router.update_stage("second", StageRoute(model="resnet", groups=[group("resnet18", 1.0, ("s-0", free.http_url))]))
    async with serve(router, port=0) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        resp = await c.post("/v2/models/two/infer", json=image_request(deadline_ms=5000))
    assert resp.status_code == 504 and "before stage 'second'" in resp.json()["error"], resp.text
    second = router.registry.get_sample_value("ipa_router_stage_requests_total", {
        "pipeline": "two", "stage": "second", "variant": "resnet18", "code": "200"})
    assert second is None  # never called


@pytest.fixture(scope="module")
def no_output(start_mlserver: Callable[..., MLServer], tmp_path_factory: pytest.TempPathFactory) -> MLServer:
    """A real runtime serving a model whose only output is named `logits`, not `output`."""
    repo = tmp_path_factory.mktemp("no-output")
    (repo / "tiny").mkdir()
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, R, R])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, R, R])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(repo / "tiny" / "tiny.onnx"))
    (repo / "tiny" / "model-settings.json").write_text(
        '{"name": "tiny", "implementation": "mlserver_ipa.runtime.VariantRuntime", "parameters": {"extra": '
        '{"variants": [{"name": "identity", "uri": "tiny.onnx"}]}}}')
    # and one that onnxruntime fails on for any request of more than one row, which every check lets through
    (repo / "one-row").mkdir()
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 3 * R * R])
    graph = helper.make_graph([helper.make_node("Reshape", ["input", "shape"], ["output"])], "one-row",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, R, R])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3 * R * R])],
                              initializer=[shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(repo / "one-row" / "one-row.onnx"))
    (repo / "one-row" / "model-settings.json").write_text(
        '{"name": "one-row", "implementation": "mlserver_ipa.runtime.VariantRuntime", "parameters": {"extra": '
        '{"variants": [{"name": "reshape", "uri": "one-row.onnx"}]}}}')
    return start_mlserver(repo)


def test_an_inference_failure_is_a_500_and_the_replica_keeps_serving(no_output: MLServer) -> None:
    url = f"{no_output.http_url}/v2/models/one-row/infer"
    failed = httpx.post(url, json=image_request(rows=2), timeout=60)
    assert failed.status_code == 500 and set(failed.json()) == {"error"}, failed.text
    assert "reshape: inference failed" in failed.json()["error"]
    assert httpx.post(url, json=image_request(rows=1), timeout=60).status_code == 200


async def test_a_stage_answering_without_output_is_a_502_naming_it(no_output: MLServer, free: MLServer) -> None:
    router = PipelineRouter("two", ["first", "second"])
    await router.update_stage("first", StageRoute(model="tiny", groups=[group("identity", 1.0, ("f-0", no_output.http_url))]))
    await router.update_stage("second", StageRoute(model="resnet", groups=[group("resnet18", 1.0, ("s-0", free.http_url))]))
    async with serve(router, port=0) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        resp = await c.post("/v2/models/two/infer", json=image_request())
    assert resp.status_code == 502, resp.text
    assert "stage 'first' answered without an `output` tensor" in resp.json()["error"]
