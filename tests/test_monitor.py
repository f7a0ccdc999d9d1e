"""The monitor against real parts: a real router and a real `mlserver start` replica scraped directly, and the
same read through a real Prometheus server (Debian's binary) scraping them by file_sd; the histogram and
counter arithmetic on exact numbers."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from conftest import SMALL_RESOLUTION, free_port
from prometheus_server import requires_prometheus, start_prometheus

from adapter.control.monitor import (
    DirectSource,
    histogram_quantile,
    increase,
    parse_samples,
    per_second_rates,
)
from adapter.control.monitor_prometheus import PrometheusSettings, PrometheusSource
from adapter.decision.model import Decision
from adapter.executors.local.cluster import LocalCluster
from adapter.executors.local.settings import LocalClusterSettings
from adapter.spec import parse_spec
from adapter.workloads.loadgen import V2Payload
from mlserver_ipa.router import PipelineRouter, serve

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # these tests share the module's pipeline

SPEC = parse_spec({"name": "mon", "slo_ms": 1000, "budget_cores": 2, "stages": [
    {"name": "classifier", "family": "resnet", "profile": "none.csv",
     "variants": [{"name": "resnet18", "accuracy": 69.76}, {"name": "resnet50", "accuracy": 76.13}]}]})
ONE_REPLICA = Decision.model_validate({
    "status": "optimal", "objective": {"value": 0, "accuracy": 0, "cores": 0, "batch": 0}, "solve_time_ms": 0,
    "load_rps": 0, "predicted_latency_ms": 0,
    "stages": [{"name": "classifier", "replicas": [{"variant": "resnet18", "batch": 1, "cores": 1, "count": 1}]}]})
PAYLOAD = V2Payload.random(SMALL_RESOLUTION)


# -- arithmetic ----------------------------------------------------------------------------------------------


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    # 100 observations: 50 under 0.1 s, 40 in (0.1, 0.2], 10 in (0.2, 0.5]
    b = [(0.1, 50.0), (0.2, 90.0), (0.5, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, b) == pytest.approx(0.1)
    assert histogram_quantile(0.7, b) == pytest.approx(0.15)
    assert histogram_quantile(0.99, b) == pytest.approx(0.2 + 0.3 * 0.9)
    assert histogram_quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1  # in +Inf: the largest bound


def test_increase_counts_new_and_reset_series_from_zero() -> None:
    before = parse_samples('c_total{a="x"} 10\nc_total{a="y"} 7\ng 3\n')
    now = parse_samples('c_total{a="x"} 15\nc_total{a="y"} 2\nc_total{a="z"} 4\ng 9\n')
    d = {dict(k[1])["a"]: v for k, v in increase(now, before).items()}
    assert d == {"x": 5, "y": 2, "z": 4}  # y was reset (a restarted process); gauges are not differenced


def test_per_second_rates_cover_the_window() -> None:
    assert per_second_rates([(0, 0), (1, 5), (2, 15), (4, 19)]) == (5, 10, 2, 2)
    assert per_second_rates([(10, 100), (10, 100)]) == ()
    assert per_second_rates([(0, 0), (1, 5), (1.1, 16)]) == (16 / 1.1,)  # a 0.1 s tail is no rate of its own
    assert per_second_rates([(0, 0), (0.2, 3)]) == (15.0,)
    # samples on whole seconds, each scrape a few ms late: the count of each second, as the simulator counts them
    assert per_second_rates([(0.002, 0), (1.0024, 23), (2.003, 43), (4.004, 47)]) == (23, 20, 2, 2)


# -- a real router and replica -------------------------------------------------------------------------------


@dataclass
class Pipeline:
    cluster: LocalCluster
    url: str

    async def send(self, n: int, **parameters: float | int) -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            for _ in range(n):
                resp = await c.post(f"{self.url}/v2/models/{SPEC.name}/infer", content=PAYLOAD.body(parameters),
                                    headers={"content-type": "application/json"})
                assert resp.status_code == 200, resp.text


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pipeline(variant_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pipeline]:
    router = PipelineRouter(SPEC.name, ["classifier"])
    home = tmp_path_factory.mktemp("ipa")
    async with serve(router, port=0) as url, LocalCluster(
            SPEC, {"classifier": variant_repo}, router=router, router_url=url,
            settings=LocalClusterSettings(home=home)) as cluster:
        result = await cluster.apply(SPEC, ONE_REPLICA)
        assert result.ok, result.failed
        yield Pipeline(cluster, url)


@in_module_loop
async def test_direct_source_reads_load_latency_and_cpu(pipeline: Pipeline) -> None:
    clock = time.monotonic
    source = DirectSource(SPEC.name, f"{pipeline.url}/metrics", pipeline.cluster.metrics_urls, started_at=clock())
    try:
        await source.observe(clock())  # a baseline: counts from here on
        await pipeline.send(12)
        await asyncio.sleep(0.6)  # samples closer than 0.5 s make one rate
        await source.sample(clock())
        await pipeline.send(8)
        await asyncio.sleep(0.6)
        obs = await source.observe(clock())
        assert obs.available and obs.reason is None, obs
        assert obs.requests == 20 and obs.errors == 0
        assert obs.load_rps == pytest.approx(20 / obs.window_s)
        assert sum(r for r in obs.rates) > 0 and len(obs.rates) >= 2
        assert obs.p99_ms is not None and obs.p99_ms > 0
        stage = obs.stage("classifier")
        assert stage is not None and stage.arrival_rps == pytest.approx(20 / obs.window_s)
        assert stage.p99_ms is not None and stage.p99_ms <= obs.p99_ms + 1e-6
        assert stage.cpu_cores is not None and stage.cpu_cores > 0  # its second scrape: CPU per second of window
        assert obs.notes == () and obs.arrival_budget_ms is None  # no request had a deadline

        idle = await source.observe(clock())
        assert idle.available and idle.requests == 0 and idle.p99_ms is None
    finally:
        await source.aclose()


@in_module_loop
async def test_direct_source_unreachable_router_is_an_unavailable_observation() -> None:
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    source = DirectSource("x", dead, lambda: {"classifier": [f"http://127.0.0.1:{free_port()}/metrics"]},
                          started_at=0.0, timeout_s=0.5)
    obs = await source.observe(5.0)
    await source.aclose()
    assert not obs.available and obs.window_s == 5.0
    assert obs.reason is not None and dead in obs.reason and "ConnectError" in obs.reason


@dataclass
class HoldingProxy:
    """A TCP relay in front of a server: while `hold` is set, the next bytes a client sends wait for `release`
    (a scrape that is slow to reach the server), and `held` says they are waiting."""

    upstream_port: int
    hold: bool = False
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def relay(self, client: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, holding: bool) -> None:
            while data := await src.read(65536):
                if holding and self.hold:
                    self.held.set()
                    await self.release.wait()
                    self.hold = False
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(client, server_w, True), pipe(server, client_w, False), return_exceptions=True)


@in_module_loop
async def test_a_slow_scrape_is_dated_when_its_answer_came() -> None:
    """Arrivals the router counts while a scrape is on its way are in that scrape's value, so its window ends
    when the answer came, not at the `now` taken before it (a real router, its real /metrics)."""
    router = PipelineRouter("slow", ["classifier"])  # no replica: every request is answered 503, and counted
    async with serve(router, port=0) as url:
        proxy = HoldingProxy(int(url.rsplit(":", 1)[1]))
        relay = await asyncio.start_server(proxy.relay, "127.0.0.1", 0)
        port = relay.sockets[0].getsockname()[1]
        source = DirectSource("slow", f"http://127.0.0.1:{port}/metrics", dict, started_at=time.monotonic())
        try:
            await source.observe(time.monotonic())
            after_base = time.monotonic()
            proxy.hold = True
            scrape = asyncio.create_task(source.observe(time.monotonic()))
            await asyncio.wait_for(proxy.held.wait(), 60)  # a hang guard
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                for _ in range(5):
                    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [0.0]}]}
                    assert (await c.post("/v2/models/slow/infer", json=body)).status_code == 503
            await asyncio.sleep(0.5)  # the scrape stays slow a while longer
            sent = time.monotonic()
            proxy.release.set()
            obs = await scrape
        finally:
            await source.aclose()
            relay.close()
    assert obs.available and obs.requests == 5
    assert obs.window_s >= sent - after_base  # it ends after the five arrivals its counter holds
    assert obs.load_rps == pytest.approx(5 / obs.window_s)


@requires_prometheus
@in_module_loop
async def test_prometheus_source_reads_what_a_real_prometheus_scraped(
        pipeline: Pipeline, tmp_path: Path) -> None:
    server = start_prometheus(tmp_path / "prom", pipeline.cluster.targets_file)
    try:
        await pipeline.send(3)  # the series exist before the counted requests (increase() needs two samples)
        sel = f'pipeline="{SPEC.name}"'
        await asyncio.to_thread(server.wait_for, f'ipa_router_requests_total{{{sel}}}')
        await asyncio.to_thread(server.wait_for, f'process_cpu_seconds_total{{{sel},stage="classifier"}}')
        base = float(server.query(f"sum(ipa_router_requests_total{{{sel}}})")[0]["value"][1])
        window_start = time.monotonic()
        # flat before and after the burst: increase() extrapolates the samples to the window's edges, which
        # only stays close to the truth when the samples cover most of the window
        await asyncio.sleep(3)
        await pipeline.send(30, deadline_ms=20000)
        await asyncio.to_thread(server.wait_for, f"sum(ipa_router_requests_total{{{sel}}})", at_least=base + 30)
        await asyncio.sleep(3)
        source = PrometheusSource(SPEC.name, ["classifier"], PrometheusSettings(server.url, min_window_s=2),
                                  started_at=window_start)
        obs = await source.observe(time.monotonic())
        assert obs.available, obs.reason
        assert 30 * 0.7 <= obs.requests <= 30 * 1.4, obs  # close to, not exactly (extrapolated), the 30 requests
        assert obs.load_rps == pytest.approx(obs.requests / obs.window_s, rel=0.05)
        assert obs.p99_ms is not None and obs.p99_ms > 0
        assert obs.rates and max(obs.rates) > 0
        assert obs.arrival_budget_ms == 20000  # what the requests arrived with: the loop's cl_max is SLO - that
        stage = obs.stage("classifier")
        assert stage is not None and stage.arrival_rps > 0 and stage.p99_ms is not None
        assert stage.cpu_cores is not None and stage.cpu_cores > 0

        server.stop()
        down = await source.observe(time.monotonic() + 2)
        assert not down.available and down.reason is not None and server.url in down.reason
        await source.aclose()
    finally:
        server.stop()
