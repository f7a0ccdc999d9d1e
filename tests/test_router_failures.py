"""The router's failure paths against real replicas: a replica that answers 503 (its queue is full) is retried
on another one, a hung replica (stopped with SIGSTOP) becomes a 504 within the deadline (its request counted as
an arrival while it is still unanswered), and a deadline that runs out between two stages is answered 504
before the second stage is called."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import SMALL_RESOLUTION, MLServer, write_model_settings

from mlserver_ipa.client import V2Client
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute
from mlserver_ipa.router import PipelineRouter, serve

R = SMALL_RESOLUTION


def image_request(rows: int = 1, **parameters: Any) -> dict[str, Any]:
    x = np.random.default_rng(0).random((rows, 3, R, R), dtype=np.float32)
    body: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                        "data": x.ravel().tolist()}]}
    if parameters:
        body["parameters"] = parameters
    return body


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


async def test_a_deadline_gone_between_stages_is_a_504_before_the_next(late: MLServer, free: MLServer) -> None:
    router = PipelineRouter("two", ["first", "second"])
    await router.update_stage("first", StageRoute(model="resnet", groups=[group("resnet18", 1.0, ("f-0", late.http_url))]))
    await router.update_stage("second", StageRoute(model="resnet", groups=[group("resnet18", 1.0, ("s-0", free.http_url))]))
    async with serve(router, port=0) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        resp = await c.post("/v2/models/two/infer", json=image_request(deadline_ms=0.5))
    assert resp.status_code == 504 and "before stage 'second'" in resp.json()["error"], resp.text
    second = router.registry.get_sample_value("ipa_router_stage_requests_total", {
        "pipeline": "two", "stage": "second", "variant": "resnet18", "code": "200"})
    assert second is None  # never called
