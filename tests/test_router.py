"""The pipeline router: its table (choice by share, least outstanding, draining) and its HTTP surface in front
of a real `mlserver start` serving the variant runtime."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from conftest import TEST_TOKEN, MLServer, free_port, image_request

from mlserver_ipa.arrival_budgets import ArrivalBudgets
from mlserver_ipa.dispatch import DispatchSettings
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, RouteTable, StageRoute, Upstreams
from mlserver_ipa.router import PipelineError, PipelineRouter, RouterClient, serve


def _url(u: str) -> str:
    """Table tests name replicas u0, u1, ...: a loopback URL per name, on a port that need not be listening."""
    return u if u.startswith("http") else f"http://127.0.0.1:{9000 + sum(map(ord, u))}"


def route(model: str = "resnet", **groups: tuple[float, list[tuple[str, str]]]) -> StageRoute:
    return StageRoute(model=model, groups=[
        RouteGroup(variant=v, load_share=share, replicas=[ReplicaRoute(id=i, url=_url(u)) for i, u in reps])
        for v, (share, reps) in groups.items()])


# -- the table -----------------------------------------------------------------------------------------


def test_groups_are_drawn_by_share() -> None:
    table = RouteTable(["s"], rng=random.Random(7))
    table.set_route("s", route(a=(0.8, [("s-0", "u0")]), b=(0.2, [("s-1", "u1"), ("s-2", "u2")])))
    picks = Counter(table.pick("s").variant for _ in range(4000))  # type: ignore[union-attr]
    assert picks["a"] / 4000 == pytest.approx(0.8, abs=0.03)


def test_least_outstanding_replica_wins_within_a_group() -> None:
    table = RouteTable(["s"], rng=random.Random(1))
    table.set_route("s", route(a=(1.0, [("s-0", "u0"), ("s-1", "u1"), ("s-2", "u2")])))
    table.begin("s", "s-0")
    table.begin("s", "s-1")
    table.begin("s", "s-1")
    assert {table.pick("s").replica.id for _ in range(50)} == {"s-2"}  # type: ignore[union-attr]
    table.begin("s", "s-2")
    table.begin("s", "s-2")
    assert {table.pick("s").replica.id for _ in range(50)} == {"s-0"}  # type: ignore[union-attr]
    assert table.pick("s", exclude={"s-0"}).replica.id == "s-1"  # type: ignore[union-attr]


def test_empty_groups_are_skipped_and_zero_shares_spread_by_count() -> None:
    table = RouteTable(["s"], rng=random.Random(3))
    table.set_route("s", route(a=(0.9, []), b=(0.1, [("s-1", "u1")])))
    assert {table.pick("s").variant for _ in range(20)} == {"b"}  # type: ignore[union-attr]
    table.set_route("s", route(a=(0.0, [("s-0", "u0")]), b=(0.0, [("s-1", "u1"), ("s-2", "u2")])))
    picks = Counter(table.pick("s").variant for _ in range(3000))  # type: ignore[union-attr]
    assert picks["b"] / 3000 == pytest.approx(2 / 3, abs=0.04)
    assert table.pick("s", exclude={"s-0", "s-1", "s-2"}) is None
    assert RouteTable(["t"]).pick("t") is None


def test_a_replica_out_of_the_table_stays_visible_until_drained() -> None:
    table = RouteTable(["s", "t"])
    table.set_route("s", route(a=(1.0, [("s-0", "u0"), ("s-1", "u1")])))
    table.begin("s", "s-1")
    table.set_route("s", route(a=(1.0, [("s-0", "u0")])))
    rows = {r.id: r for r in table.stage_status("s").replicas}
    assert rows["s-1"].outstanding == 1 and rows["s-1"].url is None
    assert table.stage_status("t").replicas == []
    table.end("s-1")
    assert [r.id for r in table.stage_status("s").replicas] == ["s-0"]
    assert "s-1" not in table.outstanding


def test_replica_ids_must_be_unique() -> None:
    with pytest.raises(ValueError, match="repeat"):
        route(a=(1.0, [("x", "u")]), b=(1.0, [("x", "v")]))


# -- over HTTP, with a real runtime behind ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stage_server(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    return start_mlserver(variant_repo)


@pytest.fixture
async def one_stage(stage_server: MLServer) -> AsyncIterator[tuple[PipelineRouter, str]]:
    router = PipelineRouter("pipe", ["classifier"])
    await router.update_stage("classifier", route(resnet18=(1.0, [("classifier-0", stage_server.http_url)])))
    async with serve(router, port=0, token=TEST_TOKEN) as url:
        yield router, url


async def test_infer_through_the_router(one_stage: tuple[PipelineRouter, str]) -> None:
    _, url = one_stage
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        assert (await c.get("/v2/health/ready")).status_code == 200
        assert (await c.get("/v2/models/pipe/ready")).status_code == 200
        resp = await c.post("/v2/models/pipe/infer", json=image_request(2, deadline_ms=5000.0, priority=1))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model_name"] == "pipe"
        assert body["outputs"][0]["name"] == "output" and body["outputs"][0]["shape"] == [2, 1000]
        assert 0 < body["parameters"]["deadline_ms"] < 5000
        assert body["parameters"]["variants"].startswith("classifier=")
        metrics = (await c.get("/metrics")).text
        assert 'ipa_router_requests_total{code="200",pipeline="pipe"} 1.0' in metrics
        assert "ipa_router_request_duration_seconds_bucket" in metrics
        assert "ipa_router_stage_requests_total" in metrics


async def test_v2_errors(one_stage: tuple[PipelineRouter, str]) -> None:
    router, url = one_stage
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        gone = await c.post("/v2/models/pipe/infer", json=image_request(deadline_ms=0.001))
        assert gone.status_code == 504 and "deadline" in gone.json()["error"]
        assert (await c.post("/v2/models/other/infer", json=image_request())).status_code == 404
        bad = await c.post("/v2/models/pipe/infer", content=b"{not json")
        assert bad.status_code == 400 and "error" in bad.json()
        assert (await c.post("/v2/models/pipe/infer", json={"inputs": []})).status_code == 400
        wrong = await c.post("/v2/models/pipe/infer", json={"inputs": [{"name": "input", "datatype": "FP32",
                                                                          "shape": [1, 3], "data": [1, 2, 3]}]})
        assert wrong.status_code == 400 and "classifier" in wrong.json()["error"]
        # Tensors are made raw as they arrive (`wire_tensors.compact`): what is no tensor is refused there.
        for inputs, reason in (([3], "inputs[0] is not a V2 tensor"),
                               ([{"name": "input", "datatype": "FP32", "shape": [1], "data": ["x"]}], "not FP32"),
                               ([{"name": "input", "datatype": "NOPE", "shape": [1], "data": [1]}], "unknown")):
            refused = await c.post("/v2/models/pipe/infer", json={"inputs": inputs})
            assert refused.status_code == 400 and reason in refused.json()["error"], refused.text
        assert (await c.post("/v2/models/pipe/infer", json=image_request())).status_code == 200
        # The table over HTTP: a bad body is a 422 in the same error shape, an unknown stage a 404.
        auth = {"authorization": f"Bearer {TEST_TOKEN}"}
        bad_put = await c.put("/router/stages/classifier", json={"model": "resnet", "groups": [{"load_share": -1}]},
                              headers=auth)
        assert bad_put.status_code == 422 and "groups" in bad_put.json()["error"]
        assert (await c.put("/router/stages/nope", json={"model": "m"}, headers=auth)).status_code == 404
        # A stage without replicas: not ready, and requests get 503 naming it.
        await RouterClient(url, token=TEST_TOKEN).update_stage("classifier", StageRoute(model="resnet"))
        assert (await c.get("/v2/health/ready")).status_code == 503
        empty = await c.post("/v2/models/pipe/infer", json=image_request())
        assert empty.status_code == 503 and "classifier" in empty.json()["error"]
    assert not router.ready


async def test_unreachable_replicas_are_retried_elsewhere(stage_server: MLServer) -> None:
    router = PipelineRouter("pipe", ["classifier"])
    dead = f"http://127.0.0.1:{free_port()}"
    await router.update_stage("classifier", route(resnet18=(1.0, [("c-dead", dead), ("c-live", stage_server.http_url)])))
    async with serve(router, port=0, token=TEST_TOKEN) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
        codes = [(await c.post("/v2/models/pipe/infer", json=image_request())).status_code for _ in range(6)]
        assert codes == [200] * 6
        client = RouterClient(url, token=TEST_TOKEN)
        await client.update_stage("classifier", route(resnet18=(1.0, [("c-dead", dead)])))
        failed = await c.post("/v2/models/pipe/infer", json=image_request())
        assert failed.status_code == 502 and "unreachable" in failed.json()["error"]
        status = await client.stage_status("classifier")
        assert [r.id for r in status.replicas] == ["c-dead"] and status.replicas[0].outstanding == 0
        await client.aclose()


async def test_stages_are_chained(stage_server: MLServer) -> None:
    # Two classifier stages: the first one's `output` ([1, 1000]) becomes the second one's `input`, which the
    # second refuses by shape -- the error names the stage that refused it.
    router = PipelineRouter("two", ["first", "second"])
    for stage in router.stages:
        await router.update_stage(stage, route(resnet18=(1.0, [(f"{stage}-0", stage_server.http_url)])))
    async with serve(router, port=0) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
        resp = await c.post("/v2/models/two/infer", json=image_request())
        assert resp.status_code == 400 and "'second'" in resp.json()["error"]
        table = (await c.get("/router")).json()
        assert [s["name"] for s in table["stages"]] == ["first", "second"] and table["ready"]



async def test_arrivals_are_counted_when_requests_come_in_not_when_they_are_answered() -> None:
    """The adapter reads the load from the arrivals: under overload the answers lag behind them."""
    router = PipelineRouter("pipe", ["classifier"])  # no replica yet: every request is answered 503
    try:
        with pytest.raises(PipelineError):
            await router.infer(image_request())
        assert router.registry.get_sample_value("ipa_router_arrivals_total", {"pipeline": "pipe"}) == 1
        assert router.registry.get_sample_value("ipa_router_requests_total", {"pipeline": "pipe", "code": "503"}) == 1
    finally:
        await router.aclose()


# -- who may change the table, and what it may name ----------------------------------------------------------


async def test_the_table_is_written_only_with_the_pipeline_token() -> None:
    router = PipelineRouter("pipe", ["classifier"])
    body = route(resnet18=(1.0, [("c-0", "u0")])).model_dump()
    async with serve(router, port=0, token=TEST_TOKEN) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
        for headers in ({}, {"authorization": "Bearer forged"}, {"authorization": TEST_TOKEN}):
            put = await c.put("/router/stages/classifier", json=body, headers=headers)
            assert put.status_code == 401 and set(put.json()) == {"error"}, put.text
        assert not router.table.routes  # nothing changed
        assert (await c.get("/router")).status_code == 200  # reads stay open
        ok = await c.put("/router/stages/classifier", json=body, headers={"authorization": f"Bearer {TEST_TOKEN}"})
        assert ok.status_code == 200, ok.text
    open_router = PipelineRouter("pipe", ["classifier"])
    async with serve(open_router, port=0) as url, httpx.AsyncClient() as c:  # without a token: no writes
        put = await c.put(f"{url}/router/stages/classifier", json=body, headers={"authorization": "Bearer x"})
        assert put.status_code == 403 and "no token" in put.json()["error"]


@pytest.mark.parametrize("replica, model, reason", [
    ({"id": "c-0", "url": "http://203.0.113.7:8080"}, "resnet", "not one the router sends to"),
    ({"id": "c-0", "url": "http://127.0.0.1:8080/admin?x="}, "resnet", "only scheme, host and port"),
    ({"id": "c-0", "url": "http://user:pw@127.0.0.1:8080"}, "resnet", "no user"),
    ({"id": "c-0", "url": "file:///etc/passwd"}, "resnet", "scheme"),
    ({"id": "c-0", "url": "http://127.0.0.1"}, "resnet", "port"),
    ({"id": "c-0", "url": "http://127.0.0.1:8080"}, "../../admin?x=", "model"),
    ({"id": "../c", "url": "http://127.0.0.1:8080"}, "resnet", "id"),
])
async def test_a_route_naming_anything_but_a_replica_is_refused(replica: dict, model: str, reason: str) -> None:
    router = PipelineRouter("pipe", ["classifier"])
    body = {"model": model, "groups": [{"variant": "resnet18", "replicas": [replica]}]}
    async with serve(router, port=0, token=TEST_TOKEN) as url, httpx.AsyncClient() as c:
        put = await c.put(f"{url}/router/stages/classifier", json=body,
                          headers={"authorization": f"Bearer {TEST_TOKEN}"})
    status = 403 if "not one the router sends to" in reason else 422  # well formed, but not a place to send to
    assert put.status_code == status and reason in put.json()["error"], put.text
    assert not router.table.routes


async def test_only_replicas_the_cluster_started_can_be_routed_to() -> None:
    started = {"127.0.0.1:9001"}
    router = PipelineRouter("pipe", ["classifier"], upstreams=Upstreams(addresses=lambda: started))
    try:
        await router.update_stage("classifier", route(resnet18=(1.0, [("c-0", "http://127.0.0.1:9001")])))
        with pytest.raises(ValueError, match="not a replica the cluster started"):
            await router.update_stage("classifier", route(resnet18=(1.0, [("c-1", "http://127.0.0.1:9002")])))
        assert [r.id for r in (await router.stage_status("classifier")).replicas] == ["c-0"]
    finally:
        await router.aclose()


async def test_a_long_request_id_is_refused_by_the_router(one_stage: tuple[PipelineRouter, str]) -> None:
    _, url = one_stage
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        resp = await c.post("/v2/models/pipe/infer", json={**image_request(), "id": "x" * 100_000})
        assert resp.status_code == 400 and "id" in resp.json()["error"]  # it was a 502 from the replica's echo
        for deadline in ("100", True, 1e300):
            resp = await c.post("/v2/models/pipe/infer", json=image_request(deadline_ms=deadline))
            assert resp.status_code == 400 and "deadline_ms" in resp.json()["error"]


async def test_the_reply_reserve_is_kept_of_every_deadline(stage_server: MLServer) -> None:
    # A reserve longer than the deadline: nothing is sent to the stage, the answer could not reach the client in time.
    router = PipelineRouter("pipe", ["classifier"], dispatch=DispatchSettings(reply_reserve_ms=4000.0))
    await router.update_stage("classifier", route(resnet18=(1.0, [("classifier-0", stage_server.http_url)])))
    async with serve(router, port=0, token=TEST_TOKEN) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
        short = await c.post("/v2/models/pipe/infer", json=image_request(deadline_ms=3000.0))
        assert short.status_code == 504 and "deadline" in short.json()["error"]
        assert router.registry.get_sample_value("ipa_router_stage_requests_total", {
            "pipeline": "pipe", "stage": "classifier", "variant": "resnet18", "code": "200"}) is None
        ok = await c.post("/v2/models/pipe/infer", json=image_request(deadline_ms=30000.0))
        assert ok.status_code == 200, ok.text
        assert 4000.0 < ok.json()["parameters"]["deadline_ms"] < 30000.0  # what is left of the client's deadline


def test_arrival_budgets_are_a_bounded_ring_over_the_window() -> None:
    now = [0.0]
    budgets = ArrivalBudgets("p", lambda: now[0], window_s=10.0, max_samples=4)
    for i in range(6):
        now[0] = float(i)
        budgets.add(float(i), 100.0 + i)
    assert budgets.window() == [102.0, 103.0, 104.0, 105.0]  # the ring keeps the newest max_samples
    now[0] = 13.5
    assert budgets.window() == [104.0, 105.0]  # older than the window: forgotten
    budgets.add(13.5, 1.0)
    budgets.add(13.5, float("inf"))  # no deadline: not a budget
    assert budgets.window() == [104.0, 105.0, 1.0] and budgets.quantile(0.0) == 1.0
    now[0] = 100.0
    assert budgets.window() == [] and budgets.quantile(0.01) is None
