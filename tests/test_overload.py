"""The shape of overload through a small real pipeline (the router in its own process + a replica server, on
loopback, as `ipa up` runs them): a burst far
beyond capacity is answered in full -- what can make its deadline with 200, the rest shed with 503/504 -- with
no answer after its deadline, and the calm phase right after it is served within its SLO as if nothing had
happened. Asserts what was answered and the deadlines the hops computed, never this machine's speed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import TEST_TOKEN, MLServer, free_port, image_request, write_model_settings

from mlserver_ipa.deadlines import DEADLINE_HEADER
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute
from mlserver_ipa.router import RouterClient

SLO_MS = 2000.0


@pytest.fixture(scope="module")
def replica(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    repo = write_model_settings(variant_repo, "resnet", active="resnet50", batch_size=2)
    return start_mlserver(repo)


def body(deadline_ms: float) -> bytes:
    return orjson.dumps(image_request(deadline_ms=deadline_ms))


@pytest.fixture
def router_url(tmp_path: Path) -> Iterator[str]:
    """`python -m mlserver_ipa.router` in its own process group, on a free port."""
    port = free_port()
    log = (tmp_path / "router.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlserver_ipa.router", "--pipeline", "pipe", "--stages",
                             "classifier", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, (tmp_path / "router.log").read_text()
            time.sleep(0.05)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        log.close()


async def test_a_burst_ends_with_no_late_answer_and_a_calm_phase_within_its_slo(replica: MLServer,
                                                                                 router_url: str) -> None:
    router = RouterClient(router_url, token=TEST_TOKEN)
    await router.update_stage("classifier", StageRoute(model="resnet", groups=[RouteGroup(
        variant="resnet50", replicas=[ReplicaRoute(id="c-0", url=replica.http_url, batch_size=2)])]))
    service_ms = httpx.get(f"{replica.http_url}/v2/models/resnet/control", timeout=10).json()["service_time_ms"]
    tight = 400 + 8 * float(service_ms["2"])  # connecting 120 clients takes a while; serving them all longer

    async with httpx.AsyncClient(base_url=router_url, timeout=30, limits=httpx.Limits(max_connections=200)) as c:

        bodies = {ms: body(ms) for ms in (tight, SLO_MS)}

        async def send(deadline_ms: float) -> tuple[int, dict[str, Any]]:
                # The client's own absolute deadline: the time its request spends before the router's handler counts.
            at = time.time() * 1000 + deadline_ms
            resp = await c.post("/v2/models/pipe/infer", content=bodies[deadline_ms],
                                headers={"content-type": "application/json", DEADLINE_HEADER: f"{at:.3f}"})
            return resp.status_code, resp.json()

        before = [await send(SLO_MS) for _ in range(5)]  # nominal load first (and connections opened)
        burst = await asyncio.gather(*(send(tight) for _ in range(120)))
        calm = []
        for _ in range(10):
            calm.append(await send(SLO_MS))
            await asyncio.sleep(0.02)
    stage = await router.stage_status("classifier")
    await router.aclose()

    codes = [code for code, _ in burst]
    assert set(codes) <= {200, 503, 504}, codes
    assert codes.count(200) >= 1 and codes.count(200) < len(codes), (tight, [b for _, b in burst][:4])
    # No 200 after its deadline: the router checked it when it answered, and said what was left.
    assert all(b["parameters"]["deadline_ms"] >= 0 for code, b in burst if code == 200)
    assert all("deadline" in b["error"] or "overloaded" in b["error"] for code, b in burst if code != 200)
    # The calm phase: everything answered within the SLO, nothing left over from the burst in the way.
    assert [code for code, _ in before] == [200] * 5
    assert [code for code, _ in calm] == [200] * 10
    assert all(0 <= b["parameters"]["deadline_ms"] <= SLO_MS for _, b in calm)
    assert stage.replicas[0].outstanding == 0 and stage.waiting == 0
