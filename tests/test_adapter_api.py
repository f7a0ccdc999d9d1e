"""The adapter's REST API in-process (httpx's ASGI transport) over a real service: the real adaptation loop and
policies, a real router's metrics scraped by the monitor, the dry-run executor. Reads are open, writes need the
token (401), bad input names the field (422, one error shape), and a change of α changes the next decision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

from adapter.control.api import ApiSettings, create_app
from adapter.control.loop import AdaptationLoop
from adapter.control.monitor import DirectSource
from adapter.control.service import AdapterService, AdapterSettings
from adapter.decision.policy_types import PolicyConfig, PolicySettings
from adapter.executors.dry_run import DryRunExecutor
from adapter.spec import parse_spec
from mlserver_ipa.router import PipelineRouter, serve

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROFILE = str(Path(__file__).resolve().parents[1] / "profiles" / "resnet.csv")
SPEC = parse_spec({
    "name": "api", "slo_ms": 200, "budget_cores": 2, "interval_s": 30, "accuracy": "mean",
    "objective": {"alpha": 0.1, "beta": 0.5, "delta": 0.001},
    "stages": [{"name": "classifier", "family": "resnet", "profile": PROFILE, "batch_sizes": [1, 2],
                "cores": [0.25, 0.5, 1], "max_replicas": 2,
                "variants": [{"name": "resnet18", "accuracy": 69.76}, {"name": "resnet152", "accuracy": 78.31}]}]})


@dataclass
class Adapter:
    client: httpx.AsyncClient
    service: AdapterService
    executor: DryRunExecutor
    router_url: str


@pytest.fixture
async def adapter() -> AsyncIterator[Adapter]:
    router = PipelineRouter(SPEC.name, ["classifier"])
    async with serve(router, port=0) as url:
        loop = AdaptationLoop(PolicyConfig.create(SPEC, settings=PolicySettings(policy="joint")), "reactive")
        executor = DryRunExecutor()
        monitor = DirectSource(SPEC.name, f"{url}/metrics", lambda: {}, started_at=0.0)
        service = AdapterService(loop, executor, monitor, AdapterSettings(interval_s=30))
        await service.start()
        app = create_app(ApiSettings(token=TOKEN), service)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://adapter") as client:
            yield Adapter(client, service, executor, url)
        await monitor.aclose()


def assert_error(resp: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error", "status", "field"} and body["status"] == status and body["error"]
    assert body["field"] == field, body
    return body


def variants(record: dict[str, Any]) -> set[str]:
    return {g["variant"] for s in record["decision"]["stages"] for g in s["replicas"] if g["count"]}


async def test_reads_are_open(adapter: Adapter) -> None:
    c = adapter.client
    status = (await c.get("/status")).json()
    assert status["pipeline"] == "api" and status["decisions"] == 1 and status["interval_s"] == 30
    assert status["controls"] == {"policy": "joint", "predictor": "reactive", "slo_ms": 200,
                                  "alpha": 0.1, "beta": 0.5, "delta": 0.001}
    assert status["latest"]["trigger"] == "start" and status["latest"]["outcome"] == "applied"
    assert (await c.get("/objective")).json() == {"alpha": 0.1, "beta": 0.5, "delta": 0.001}
    assert (await c.get("/slo")).json() == {"slo_ms": 200}
    policy = (await c.get("/policy")).json()
    assert policy["policy"] == "joint" and "infadapter" in policy["known"]
    assert (await c.get("/predictor")).json()["predictor"] == "reactive"
    current = (await c.get("/decision")).json()
    assert current["decision"]["status"] == "optimal" and current["in_force"] is not None
    assert [r["index"] for r in (await c.get("/decisions")).json()] == [1]
    assert (await c.get("/docs")).status_code == 200
    paths = (await c.get("/openapi.json")).json()["paths"]
    assert {"/status", "/decision", "/decisions", "/objective", "/slo", "/policy", "/predictor", "/decide"} <= set(paths)
    metrics = (await c.get("/metrics")).text
    assert 'ipa_adapter_decisions_total{outcome="applied",pipeline="api"} 1.0' in metrics
    assert "ipa_adapter_decided_cores" in metrics


async def test_writes_need_the_token(adapter: Adapter) -> None:
    c = adapter.client
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path, body in (("PUT", "/objective", {"alpha": 1}), ("PUT", "/slo", {"slo_ms": 100}),
                                   ("PUT", "/policy", {"policy": "static"}), ("POST", "/decide", None)):
            resp = await c.request(method, path, json=body, headers=headers)
            assert_error(resp, 401)
            assert resp.headers["www-authenticate"] == "Bearer"
    assert (await c.get("/objective")).json()["alpha"] == 0.1  # nothing changed
    assert len(adapter.service.history) == 1


async def test_bad_input_is_422_naming_the_field(adapter: Adapter) -> None:
    c = adapter.client
    assert_error(await c.put("/objective", json={"alpha": -1}, headers=AUTH), 422, "alpha")
    assert_error(await c.put("/objective", json={"alfa": 1}, headers=AUTH), 422, "alfa")
    assert_error(await c.put("/objective", json={"beta": "lots"}, headers=AUTH), 422, "beta")
    assert_error(await c.put("/objective", json={}, headers=AUTH), 422, None)
    assert_error(await c.put("/slo", json={"slo_ms": 0}, headers=AUTH), 422, "slo_ms")
    assert_error(await c.put("/slo", content=b"not json", headers={**AUTH, "content-type": "application/json"}),
                 422, None)
    body = assert_error(await c.put("/policy", json={"policy": "fastest"}, headers=AUTH), 422, "policy")
    assert "joint" in body["error"]
    body = assert_error(await c.put("/predictor", json={"predictor": "oracle"}, headers=AUTH), 422, "predictor")
    assert "trace" in body["error"]
    assert_error(await c.get("/decisions", params={"limit": 0}), 422, "limit")
    assert_error(await c.get("/nowhere"), 404)
    assert_error(await c.delete("/policy", headers=AUTH), 405)
    assert (await c.get("/status")).json()["controls"]["policy"] == "joint"  # still serving, nothing changed


async def test_a_change_of_alpha_changes_the_next_decision(adapter: Adapter) -> None:
    c = adapter.client
    first = (await c.get("/decision")).json()
    assert variants(first) == {"resnet18"}  # at alpha 0.1 accuracy is not worth resnet152's extra cores

    resp = await c.put("/objective", json={"alpha": 10}, headers=AUTH)
    assert resp.status_code == 200 and resp.json() == {"alpha": 10, "beta": 0.5, "delta": 0.001}
    assert (await c.get("/decision")).json()["index"] == 1  # takes effect at the next decision, not before

    resp = await c.post("/decide", headers=AUTH)
    assert resp.status_code == 200, resp.text
    record = resp.json()
    assert record["trigger"] == "forced" and record["alpha"] == 10 and record["observed"]["available"]
    # at a 200 ms SLO resnet152 needs 0.5 cores (resnet18 0.25): at alpha 10 the accuracy is worth them
    assert variants(record) == {"resnet152"} and record["outcome"] == "applied"
    assert record["decision"]["objective"]["cores"] > first["decision"]["objective"]["cores"]
    assert record["in_force"][0]["replicas"][0]["variant"] == "resnet152"
    assert adapter.executor.deployed is not None
    assert adapter.executor.deployed.stages[0].replicas[0].variant == "resnet152"

    # the SLO, the policy and the predictor likewise
    assert (await c.put("/slo", json={"slo_ms": 1}, headers=AUTH)).json() == {"slo_ms": 1}
    record = (await c.post("/decide", headers=AUTH)).json()
    assert record["slo_ms"] == 1 and record["decision"]["status"] == "degraded" and record["decision"]["reason"]
    assert (await c.put("/policy", json={"policy": "static"}, headers=AUTH)).json()["policy"] == "static"
    assert (await c.put("/predictor", json={"predictor": "ewma"}, headers=AUTH)).json()["predictor"] == "ewma"
    record = (await c.post("/decide", headers=AUTH)).json()
    assert record["policy"] == "static" and record["predictor"] == "ewma" and record["decision"]["policy"] == "static"
    history = (await c.get("/decisions")).json()
    assert [r["index"] for r in history] == [1, 2, 3, 4]
    assert [r["index"] for r in (await c.get("/decisions", params={"limit": 2})).json()] == [3, 4]


async def test_unreachable_metrics_keep_the_configuration_and_say_why() -> None:
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    loop = AdaptationLoop(PolicyConfig.create(SPEC), "reactive")
    monitor = DirectSource(SPEC.name, dead, lambda: {}, started_at=0.0, timeout_s=0.5)
    service = AdapterService(loop, DryRunExecutor(), monitor, AdapterSettings(interval_s=30))
    await service.start()
    app = create_app(ApiSettings(token=TOKEN), service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://adapter") as c:
        before = (await c.get("/decision")).json()
        await c.put("/objective", json={"alpha": 10}, headers=AUTH)
        record = (await c.post("/decide", headers=AUTH)).json()
        assert record["outcome"] == "kept" and dead in record["reason"] and not record["observed"]["available"]
        assert record["decision"]["stages"] == before["decision"]["stages"]  # kept, even with a new alpha
        assert (await c.get("/status")).json()["latest"]["outcome"] == "kept"
    await monitor.aclose()


async def test_extreme_weights_are_refused_and_every_record_stays_readable(adapter: Adapter) -> None:
    c = adapter.client
    # 1.7e308 was accepted and made GET /decision(s) answer 500 ("Out of range float values are not JSON compliant")
    assert_error(await c.put("/objective", json={"beta": 1.7e308, "delta": 1.7e308}, headers=AUTH), 422, "beta")
    assert_error(await c.put("/slo", json={"slo_ms": 1e300}, headers=AUTH), 422, "slo_ms")
    assert_error(await c.put("/objective", json={"alpha": None}, headers=AUTH), 422, "alpha")
    edge = await c.put("/objective", json={"alpha": 1e6, "beta": 1e6, "delta": 1e6}, headers=AUTH)
    assert edge.status_code == 200, edge.text
    assert (await c.post("/decide", headers=AUTH)).status_code == 200
    for path in ("/decision", "/decisions", "/status"):
        resp = await c.get(path)
        assert resp.status_code == 200, resp.text


async def test_an_adapter_without_a_token_refuses_every_write() -> None:
    router = PipelineRouter(SPEC.name, ["classifier"])
    async with serve(router, port=0) as url:
        loop = AdaptationLoop(PolicyConfig.create(SPEC, settings=PolicySettings(policy="joint")), "reactive")
        monitor = DirectSource(SPEC.name, f"{url}/metrics", lambda: {}, started_at=0.0)
        service = AdapterService(loop, DryRunExecutor(), monitor, AdapterSettings(interval_s=30))
        await service.start()
        app = create_app(ApiSettings(token=None), service)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://adapter") as c:
            assert_error(await c.put("/slo", json={"slo_ms": 100}, headers={"Authorization": "Bearer x"}), 403)
            assert (await c.get("/slo")).json()["slo_ms"] == 200
        await monitor.aclose()
