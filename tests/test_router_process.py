"""The router as its own process (`python -m mlserver_ipa.router`, started as `ipa up` starts it): its table takes
only replicas the cluster said it started, arrivals are counted as they are accepted (shed requests included),
and the budgets requests arrive with are exported for the adapter's `cl_max`. Counts and values, never timings."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import AUTH

from adapter.control.router_process import RouterProcess
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute


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
