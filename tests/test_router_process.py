"""The router as its own process (`python -m mlserver_ipa.router`, started as `ipa up` starts it): its table takes
only replicas the cluster said it started, arrivals are counted as they are accepted (shed requests included),
and the budgets requests arrive with are exported for the adapter's `cl_max`. Counts and values, never timings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import AUTH, free_port, image_request

from adapter.control.loop import AdaptationLoop
from adapter.control.monitor import DirectSource, parse_samples, total
from adapter.control.router_process import RouterProcess
from adapter.control.service import AdapterService, AdapterSettings
from adapter.decision.policy_types import PolicyConfig, PolicyContext, PolicySettings
from adapter.executors.dry_run import DryRunExecutor
from adapter.spec import parse_spec
from mlserver_ipa.deadlines import DEADLINE_HEADER
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute

SLOW_SERVER = Path(__file__).with_name("slow_v2_server.py")
PROFILE = str(Path(__file__).resolve().parents[1] / "profiles" / "resnet.csv")


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[RouterProcess]:
    token_file = Path(os.environ["IPA_TOKEN_FILE"])
    async with RouterProcess("pipe", ["classifier"], port=0, token_file=token_file,
                             log=tmp_path / "router.log") as r:
        yield r


def stage(*ports: int) -> dict[str, object]:
    return StageRoute(model="resnet", groups=[RouteGroup(variant="resnet18", load_share=1.0, replicas=[
        ReplicaRoute(id=f"c-{p}", url=f"http://127.0.0.1:{p}") for p in ports])]).model_dump()


async def test_a_route_may_name_only_replicas_the_cluster_started(router: RouterProcess) -> None:
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as c:
        put = await c.put("/router/upstreams", json={"addresses": ["127.0.0.1:9001"]})
        assert put.status_code == 401 and set(put.json()) == {"error"}  # the same token as the table
        put = await c.put("/router/upstreams", json={"addresses": ["127.0.0.1:9001", "127.0.0.1/x:80"]}, headers=AUTH)
        assert put.status_code == 422 and "host:port" in put.json()["error"]
        put = await c.put("/router/upstreams", json={"addresses": ["127.0.0.1:9001"]}, headers=AUTH)
        assert put.status_code == 200, put.text
        ok = await c.put("/router/stages/classifier", json=stage(9001), headers=AUTH)
        assert ok.status_code == 200, ok.text
        for ports in [(9002,), (9001, 9002)]:  # one address not started refuses the whole route
            refused = await c.put("/router/stages/classifier", json=stage(*ports), headers=AUTH)
            assert refused.status_code == 403 and set(refused.json()) == {"error"}, refused.text
            assert "127.0.0.1:9002 is not a replica the cluster started" in refused.json()["error"]
        table = (await c.get("/router/stages/classifier")).json()
        assert [r["id"] for r in table["replicas"]] == ["c-9001"]  # the previous route stays
        # The cluster stopped that replica and started another: the old address is refused from now on.
        assert (await c.put("/router/upstreams", json={"addresses": ["127.0.0.1:9002"]}, headers=AUTH)).status_code == 200
        assert (await c.put("/router/stages/classifier", json=stage(9001), headers=AUTH)).status_code == 403
        assert (await c.put("/router/stages/classifier", json=stage(9002), headers=AUTH)).status_code == 200
        other_host = stage(9002)
        other_host["groups"][0]["replicas"][0]["url"] = "http://203.0.113.7:9002"  # type: ignore[index]
        refused = await c.put("/router/stages/classifier", json=other_host, headers=AUTH)
        assert refused.status_code == 403 and "not one the router sends to" in refused.json()["error"]


async def test_a_router_started_to_require_the_list_takes_no_replica_before_it(tmp_path: Path) -> None:
    """As `ipa up` starts it (`--require-upstreams`): closed until the executor's list, then held to it."""
    async with RouterProcess("pipe", ["classifier"], port=0, token_file=Path(os.environ["IPA_TOKEN_FILE"]),
                             log=tmp_path / "router.log", require_upstreams=True) as r, httpx.AsyncClient(
            base_url=r.url, timeout=30) as c:
        refused = await c.put("/router/stages/classifier", json=stage(9001), headers=AUTH)
        assert refused.status_code == 403 and "PUT /router/upstreams" in refused.json()["error"]
        assert (await c.get("/router/stages/classifier")).json()["replicas"] == []
        empty = await c.put("/router/stages/classifier", json=StageRoute(model="resnet").model_dump(), headers=AUTH)
        assert empty.status_code == 200  # a route with no replica names nothing to refuse
        assert (await c.put("/router/upstreams", json={"addresses": ["127.0.0.1:9001"]}, headers=AUTH)).status_code == 200
        assert (await c.put("/router/stages/classifier", json=stage(9001), headers=AUTH)).status_code == 200
        assert (await c.put("/router/stages/classifier", json=stage(9002), headers=AUTH)).status_code == 403


async def counts(c: httpx.AsyncClient) -> dict[str, float]:
    samples = parse_samples((await c.get("/metrics")).text)
    return {"arrived": total(samples, "ipa_router_arrivals_total", pipeline="pipe"),
            "answered": total(samples, "ipa_router_requests_total", pipeline="pipe"),
            "shed": total(samples, "ipa_router_shed_total", pipeline="pipe"),
            "sent on": total(samples, "ipa_router_stage_requests_total", pipeline="pipe")}


async def test_an_arrival_is_counted_when_its_headers_are_in_before_its_body(router: RouterProcess) -> None:
    body = orjson.dumps(image_request())
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    try:
        writer.write(f"POST /v2/models/pipe/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n".encode())
        await writer.drain()
        async with httpx.AsyncClient(base_url=router.url, timeout=30) as c:
            for _ in range(600):  # a hang guard: the count is there as soon as the router parsed the headers
                seen = await counts(c)
                if seen["arrived"]:
                    break
                await asyncio.sleep(0.05)
            assert seen == {"arrived": 1, "answered": 0, "shed": 0, "sent on": 0}  # counted, its body not sent yet
            writer.write(body)
            await writer.drain()
            status = (await reader.readline()).split()[1]
            assert status == b"503"  # no replica yet
            assert (await counts(c))["arrived"] == 1  # once, not again when its handler ran
    finally:
        writer.close()


@pytest.fixture
def slow_replica() -> Iterator[str]:
    """A V2 server that answers after 30 s: every request sent to it outlives its deadline."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SLOW_SERVER), "--port", str(port), "--delay", "30"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{url}/stats", timeout=1)
                break
            assert proc.poll() is None
            time.sleep(0.05)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # it would wait for its 30-s answers
        proc.wait(timeout=10)


async def test_every_request_sent_is_counted_shed_ones_included(router: RouterProcess, slow_replica: str) -> None:
    """8 slots on the one replica (no batch size given), 40 requests with a 2 s budget at once: those sent on wait
    for an answer that comes after their deadline, most behind them are shed at the router. All 40 arrived."""
    port = int(slow_replica.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=router.url, timeout=60, limits=httpx.Limits(max_connections=100)) as c:
        assert (await c.put("/router/upstreams", json={"addresses": [f"127.0.0.1:{port}"]}, headers=AUTH)).is_success
        assert (await c.put("/router/stages/classifier", json=stage(port), headers=AUTH)).is_success
        body = orjson.dumps(image_request(deadline_ms=2000))
        answers = await asyncio.gather(*(c.post("/v2/models/pipe/infer", content=body,
                                                headers={"content-type": "application/json"}) for _ in range(40)))
        bad = await c.post("/v2/models/pipe/infer", content=b"{not json", headers={"content-type": "application/json"})
        seen = await counts(c)
    assert {a.status_code for a in answers} == {504}, answers[0].text
    assert bad.status_code == 400
    assert seen["arrived"] == 41 and seen["answered"] == 41  # sent N, counted N
    assert seen["shed"] >= 1 and seen["shed"] + seen["sent on"] == 40  # shed ones are among the arrivals


async def test_the_adapter_decides_with_the_cl_max_requests_arrive_with(router: RouterProcess) -> None:
    """Sponge's cl_max live: requests that arrive with less of the SLO left make the next decision plan for the
    time they already spent (the record says what the policy was given)."""
    spec = parse_spec({
        "name": "pipe", "slo_ms": 1000, "budget_cores": 2, "interval_s": 30, "accuracy": "mean",
        "stages": [{"name": "classifier", "family": "resnet", "profile": PROFILE, "batch_sizes": [1, 2],
                    "cores": [0.5, 1], "max_replicas": 2, "variants": [{"name": "resnet18", "accuracy": 69.76}]}]})
    loop = AdaptationLoop(PolicyConfig.create(spec, settings=PolicySettings(policy="sponge")), "reactive")
    monitor = DirectSource(spec.name, f"{router.url}/metrics", dict, started_at=0.0)
    service = AdapterService(loop, DryRunExecutor(), monitor, AdapterSettings(interval_s=30))
    await service.start()
    body = orjson.loads(orjson.dumps(image_request()))

    async def send(c: httpx.AsyncClient, n: int, deadline_ms: float | None = None,
                   spent_ms: float | None = None) -> None:
        for _ in range(n):  # no replica: each is answered 503, its budget recorded as it arrived
            headers = {"content-type": "application/json"}
            if spent_ms is not None:  # an absolute deadline, set by a client that spent `spent_ms` already
                headers[DEADLINE_HEADER] = f"{time.time() * 1000 + 1000 - spent_ms:.3f}"
            params = {} if deadline_ms is None else {"deadline_ms": deadline_ms}
            await c.post("/v2/models/pipe/infer", json={**body, "parameters": params}, headers=headers)

    try:
        async with httpx.AsyncClient(base_url=router.url, timeout=30) as c:
            await send(c, 5, deadline_ms=1000)  # the whole SLO left: nothing spent before
            first = await service.decide("forced")
            await send(c, 5, deadline_ms=850)  # 150 ms spent on the way
            second = await service.decide("forced")
            await send(c, 3, spent_ms=300)  # absolute: 300 ms spent, and the time to get here
            third = await service.decide("forced")
    finally:
        await monitor.aclose()
    assert first.observed is not None and second.observed is not None and third.observed is not None
    assert first.observed.arrival_budget_ms == 1000 and first.observed.network_delay_ms == 0
    assert second.observed.arrival_budget_ms == 850 and second.observed.network_delay_ms == pytest.approx(150)
    assert third.observed.network_delay_ms >= 300  # the router's window still holds the 850s: the min wins
    assert loop.config.slo_for(PolicyContext(0.0, 1.0, network_delay_ms=second.observed.network_delay_ms)) == 850
