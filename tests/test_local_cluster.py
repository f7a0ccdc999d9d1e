"""The embedded local cluster with real `mlserver start` replicas behind the real router: scaling out and in,
cores, variant and batch changed in place, a variant split, a killed replica replaced -- all under continuous
load with no request lost -- and nothing left behind (process, cgroup, state file) after shutdown."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import SMALL_RESOLUTION

from adapter.cli import status as status_command
from adapter.decision.model import Decision
from adapter.executors.cgroups import detect_cpu_controller
from adapter.executors.local.cluster import LocalCluster
from adapter.executors.local.plan import match_replicas
from adapter.executors.local.replica import ReplicaConfig
from adapter.executors.local.settings import LocalClusterSettings
from adapter.executors.local.state import ClusterState, read_state
from adapter.spec import GraphSpec, parse_spec
from mlserver_ipa.router import PipelineRouter, serve
from mlserver_ipa.zoo import build_repository

CLASSIFIER = {"name": "classifier", "family": "resnet", "profile": "none.csv",
              "variants": [{"name": "resnet18", "accuracy": 69.76}, {"name": "resnet50", "accuracy": 76.13}]}


def graph(*stages: dict[str, Any]) -> GraphSpec:
    return parse_spec({"name": "lc", "slo_ms": 1000, "budget_cores": 2, "stages": list(stages)})


def group(variant: str, batch: int, cores: float, count: int, share: float = 1.0) -> dict[str, Any]:
    return {"variant": variant, "batch": batch, "cores": cores, "count": count, "load_share": share}


def decision(**stages: list[dict[str, Any]]) -> Decision:
    return Decision.model_validate({
        "status": "optimal", "objective": {"value": 0, "accuracy": 0, "cores": 0, "batch": 0}, "solve_time_ms": 0,
        "load_rps": 0, "predicted_latency_ms": 0,
        "stages": [{"name": name, "replicas": groups} for name, groups in stages.items()]})


def image(rows: int = 1, side: int = SMALL_RESOLUTION) -> dict[str, Any]:
    x = np.random.default_rng(0).random((rows, 3, side, side), dtype=np.float32)
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


class Load:
    """A few clients sending requests back to back through the router; every answer's status is counted."""

    def __init__(self, url: str, pipeline: str, body: dict[str, Any], clients: int = 2) -> None:
        self.url, self.pipeline, self.body, self.clients = url, pipeline, body, clients
        self.codes: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    async def _client(self) -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            while not self._stop.is_set():
                resp = await c.post(f"{self.url}/v2/models/{self.pipeline}/infer", json=self.body)
                self.codes[resp.status_code] += 1
                if resp.status_code != 200:
                    self.errors.append(resp.text[:200])
                await asyncio.sleep(0.01)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def progressed(self, more: int = 5) -> None:
        """Wait until `more` further requests were answered (the load really runs across a change)."""
        target = self.sent + more
        for _ in range(3000):
            if self.sent >= target:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"load stalled at {self.sent} requests: {self.codes}")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.fixture
async def cluster(variant_repo: Path, tmp_path: Path) -> AsyncIterator[tuple[LocalCluster, str]]:
    spec = graph(CLASSIFIER)
    router = PipelineRouter(spec.name, [s.name for s in spec.stages])
    async with serve(router, port=0) as url:
        async with LocalCluster(spec, {"classifier": variant_repo / "resnet"}, router=router, router_url=url,
                                settings=LocalClusterSettings(home=tmp_path / "ipa")) as c:
            yield c, url
        assert_nothing_left(c, await_pids=[])


def ipa_status(*args: str) -> int:
    """`ipa status ARGS` (only this subcommand's parser, so other commands' state does not matter here)."""
    parser = argparse.ArgumentParser(prog="ipa")
    status_command.register(parser.add_subparsers())
    ns = parser.parse_args(["status", *args])
    return int(ns.func(ns))


def pids(state: ClusterState) -> list[int]:
    return [r.pid for s in state.stages for r in s.replicas if r.pid is not None]


def assert_nothing_left(c: LocalCluster, await_pids: list[int]) -> None:
    for pid in await_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert [p.name for p in c.controller.groups() if p.name.startswith(f"ipa-{os.getpid()}-")] == []
    assert not c.state_file.exists() and not c.targets_file.exists()


async def control_state(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as c:
        resp = await c.get(f"{url}/v2/models/classifier/control")
        resp.raise_for_status()
        return dict(resp.json())


def test_matching_keeps_what_fits() -> None:
    a1, a2, b2 = ReplicaConfig("a", 1, 1.0), ReplicaConfig("a", 2, 1.0), ReplicaConfig("b", 2, 0.5)
    pairs, start, stop = match_replicas([a1, b2], [b2, a2])
    assert sorted(pairs) == [(0, 1), (1, 0)] and start == [] and stop == []
    pairs, start, stop = match_replicas([a1, a1, b2], [ReplicaConfig("b", 1, 0.5)])
    assert pairs == [(2, 0)] and start == [] and stop == [0, 1]
    pairs, start, stop = match_replicas([], [a1, a1])
    assert pairs == [] and start == [0, 1] and stop == []


async def test_scaling_and_in_place_changes_lose_no_request(cluster: tuple[LocalCluster, str]) -> None:
    c, url = cluster
    spec = c.spec
    cgroups = c.controller.kind != "affinity"

    bad = await c.apply(spec, decision(classifier=[group("resnet999", 1, 1, 1)]))
    assert not bad.ok and "resnet999" in bad.failed[0].reason

    first = await c.apply(spec, decision(classifier=[group("resnet18", 1, 0.5, 1)]))
    assert first.ok, first.failed
    load = Load(url, spec.name, image())
    load.start()
    await load.progressed()

    # Out: 1 -> 2 replicas; the new one joins once ready.
    out = await c.apply(spec, decision(classifier=[group("resnet18", 1, 0.5, 2)]))
    assert out.ok, out.failed
    state = await c.state()
    replicas = state.stages[0].replicas
    assert [r.phase for r in replicas] == ["ready", "ready"] and len(set(pids(state))) == 2
    targets = json.loads(c.targets_file.read_text())  # for a Prometheus server's file_sd_configs
    assert sorted(t["labels"]["replica"] for t in targets) == sorted([r.id for r in replicas] + ["router"])
    if cgroups:
        assert all(Path(r.cgroup or "").joinpath("cpu.cfs_quota_us" if c.controller.kind == "cgroup1"
                                                  else "cpu.max").exists() for r in replicas)
    await load.progressed()

    # Up: 0.5 -> 1.5 cores each, in place: same processes, a new quota, two runtime threads.
    before = pids(state)
    up = await c.apply(spec, decision(classifier=[group("resnet18", 1, 1.5, 2)]))
    assert up.ok, up.failed
    state = await c.state()
    assert pids(state) == before
    for r in state.stages[0].replicas:
        assert r.cores == 1.5 and (await control_state(r.url))["threads"] == 2
        if c.controller.kind == "cgroup1":
            assert Path(r.cgroup or "", "cpu.cfs_quota_us").read_text().strip() == "150000"
        elif c.controller.kind == "cgroup2":
            assert Path(r.cgroup or "", "cpu.max").read_text().split()[0] == "150000"
    await load.progressed()

    # Variant and batch, in place.
    switch = await c.apply(spec, decision(classifier=[group("resnet50", 2, 1.5, 2)]))
    assert switch.ok, switch.failed
    state = await c.state()
    assert pids(state) == before
    for r in state.stages[0].replicas:
        control = await control_state(r.url)
        assert (control["variant"], control["batch_size"]) == ("resnet50", 2)
    await load.progressed()

    # A split across variants by share, then in: 2 -> 1 replica (drained, then stopped).
    split = await c.apply(spec, decision(classifier=[group("resnet18", 1, 1, 1, 0.7), group("resnet50", 2, 1, 1, 0.3)]))
    assert split.ok, split.failed
    state = await c.state()
    assert state.stages[0].load_shares == {"resnet18": 0.7, "resnet50": 0.3}
    assert sorted(r.variant for r in state.stages[0].replicas) == ["resnet18", "resnet50"]
    await load.progressed()
    scale_in = await c.apply(spec, decision(classifier=[group("resnet50", 1, 0.5, 1)]))
    assert scale_in.ok, scale_in.failed
    state = await c.state()
    assert len(state.stages[0].replicas) == 1
    gone = [p for p in before if p not in pids(state)]
    assert len(gone) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(gone[0], 0)
    await load.progressed()

    await load.stop()
    assert load.codes == Counter({200: load.sent}), load.errors[:3]
    assert read_state(c.state_file).stages[0].replicas[0].id == state.stages[0].replicas[0].id


async def test_a_change_that_would_pass_the_budget_stops_first(cluster: tuple[LocalCluster, str]) -> None:
    """On the 2-core budget: ResNet-18 and ResNet-50 on one core each → ResNet-50 on two. Growing first would hold
    3 cores; the cluster stops ResNet-18 first, then resizes (`adapter.executors.ordering`)."""
    c, _ = cluster
    spec = c.spec
    first = await c.apply(spec, decision(classifier=[group("resnet18", 1, 1, 1, 0.5), group("resnet50", 1, 1, 1, 0.5)]))
    assert first.ok, first.failed
    grow = await c.apply(spec, decision(classifier=[group("resnet50", 1, 2, 1)]))
    assert grow.ok, grow.failed
    stopped = next(i for i, line in enumerate(grow.applied) if ": stopped " in line)
    resized = next(i for i, line in enumerate(grow.applied) if "cores 1->2" in line)
    assert stopped < resized, grow.applied
    state = await c.state()
    assert [(r.variant, r.cores) for r in state.stages[0].replicas] == [("resnet50", 2.0)]
    # and the other way round, when both fit: the new replica serves before the old one leaves
    back = await c.apply(spec, decision(classifier=[group("resnet50", 1, 1, 1, 0.5), group("resnet18", 1, 1, 1, 0.5)]))
    assert back.ok, back.failed
    started = next(i for i, line in enumerate(back.applied) if ": started " in line)
    shrunk = next(i for i, line in enumerate(back.applied) if "cores 2->1" in line)
    assert shrunk < started, back.applied  # in place first: the shrink makes the room the new replica takes


async def test_a_killed_replica_is_replaced(cluster: tuple[LocalCluster, str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    c, url = cluster
    assert (await c.apply(c.spec, decision(classifier=[group("resnet18", 1, 0.5, 2)]))).ok
    load = Load(url, c.spec.name, image())
    load.start()
    await load.progressed()
    victim = (await c.state()).stages[0].replicas[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    for _ in range(600):  # the replacement starts and becomes ready (a cold start: seconds)
        state = await c.state()
        ready = [r for r in state.stages[0].replicas if r.phase == "ready"]
        if len(ready) == 2 and victim.id not in {r.id for r in ready}:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no replacement: {state}")
    assert state.crashes == 1 and sorted(r.restarts for r in ready) == [0, 1]
    await load.progressed()
    await load.stop()
    # The other replica took the killed one's requests: none was lost.
    assert load.codes == Counter({200: load.sent}), load.errors[:3]
    assert victim.cgroup is None or not Path(victim.cgroup).exists()

    # `ipa status` in another process would read the same file.
    capsys.readouterr()
    assert ipa_status("--home", str(c.settings.home)) == 0
    out = capsys.readouterr().out
    assert "pipeline lc" in out and all(r.id in out for r in ready) and "restart 1" in out
    live = pids(state)
    await c.shutdown()
    assert_nothing_left(c, await_pids=live)
    assert ipa_status("--home", str(c.settings.home)) == 1


async def test_a_replica_that_stops_answering_is_taken_out_and_replaced(
        variant_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGSTOP: the process lives but answers nothing. Its probes fail, it leaves the router's table, is killed
    and replaced by a fresh replica of its configuration; requests after that are answered 200."""
    spec = graph(CLASSIFIER)
    router = PipelineRouter(spec.name, [s.name for s in spec.stages])
    settings = LocalClusterSettings(home=tmp_path / "ipa", probe_interval_s=0.2, probe_timeout_s=2.0, probe_failures=3)
    async with serve(router, port=0) as url, LocalCluster(
            spec, {"classifier": variant_repo / "resnet"}, router=router, router_url=url, settings=settings) as c:
        assert (await c.apply(spec, decision(classifier=[group("resnet18", 1, 0.5, 2)]))).ok
        victim = (await c.state()).stages[0].replicas[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            for _ in range(3000):  # a hang guard only: the probes decide, a cold start follows
                state = await c.state()
                ready = [r for r in state.stages[0].replicas if r.phase == "ready"]
                if state.unresponsive and len(ready) == 2 and victim.id not in {r.id for r in state.stages[0].replicas}:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"not replaced: {state}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim.pid, signal.SIGCONT)
        assert state.unresponsive == 1 and state.crashes == 0
        assert sorted(r.restarts for r in ready) == [0, 1]
        routed = {r.id for r in (await router.stage_status("classifier")).replicas}
        assert victim.id not in routed and routed == {r.id for r in ready}
        with pytest.raises(ProcessLookupError):
            os.kill(victim.pid, 0)
        async with httpx.AsyncClient(timeout=60) as client:
            codes = [(await client.post(f"{url}/v2/models/lc/infer", json=image())).status_code for _ in range(6)]
        assert codes == [200] * 6
        assert f"replica {victim.id} stopped answering" in capsys.readouterr().err
        live = pids(state)
    assert_nothing_left(c, await_pids=live)


async def test_a_replica_that_cannot_load_is_reported(variant_repo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    settings = (variant_repo / "resnet" / "model-settings.json").read_text()
    (broken / "model-settings.json").write_text(settings.replace('"resnet18.onnx"', '"missing.onnx"'))
    spec = graph(CLASSIFIER)
    async with LocalCluster(spec, {"classifier": broken},
                            settings=LocalClusterSettings(home=tmp_path / "ipa", retries=1)) as c:
        result = await c.apply(spec, decision(classifier=[group("resnet18", 1, 0.5, 1)]))
        assert not result.ok and result.failed[0].action.startswith("start resnet18")
        assert (await c.state()).stages[0].replicas == []
    assert_nothing_left(c, await_pids=[])


async def test_two_stage_chain_on_the_affinity_fallback(variant_repo: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    yolo = build_repository("yolo", tmp_path / "yolo", variants=["yolov5n"], resolution=64, crop=SMALL_RESOLUTION,
                            model_name="detector")
    monkeypatch.setenv("IPA_CPU_LIMIT", "affinity")
    spec = graph({"name": "detector", "family": "yolo", "profile": "none.csv",
                  "variants": [{"name": "yolov5n", "accuracy": 45.7}]}, CLASSIFIER)
    router = PipelineRouter(spec.name, ["detector", "classifier"])
    async with serve(router, port=0) as url, LocalCluster(
            spec, {"detector": yolo, "classifier": variant_repo}, router=router, router_url=url,
            settings=LocalClusterSettings(home=tmp_path / "ipa"), controller=detect_cpu_controller()) as c:
        d = decision(detector=[group("yolov5n", 1, 1, 1)], classifier=[group("resnet18", 1, 0.5, 1)])
        result = await c.apply(spec, d)
        assert result.ok, result.failed
        async with httpx.AsyncClient(timeout=60) as client:
            resp = await client.post(f"{url}/v2/models/lc/infer", json={**image(1, 64), "parameters": {"deadline_ms": 30000}})
        assert resp.status_code == 200, resp.text
        outputs = {o["name"]: o for o in resp.json()["outputs"]}
        assert outputs["output"]["shape"] == [1, 1000] and "detector.detections" in outputs
        assert resp.json()["parameters"]["variants"] == "detector=yolov5n,classifier=resnet18"
        state = await c.state()
        assert state.cpu_limit == "affinity"
        detector = state.stages[0].replicas[0]
        assert detector.pid is not None and len(os.sched_getaffinity(detector.pid)) == 1
        more = decision(detector=[group("yolov5n", 1, 2, 1)], classifier=[group("resnet18", 1, 0.5, 1)])
        assert (await c.apply(spec, more)).ok
        assert len(os.sched_getaffinity(detector.pid)) == min(2, len(os.sched_getaffinity(0)))
        live = pids(state)
    assert_nothing_left(c, await_pids=live)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
async def test_the_graphs_transport_is_how_the_router_calls_replicas(variant_repo: Path, tmp_path: Path,
                                                                     transport: str) -> None:
    spec = parse_spec({"name": "lc", "slo_ms": 1000, "budget_cores": 2, "transport": transport,
                       "stages": [CLASSIFIER]})
    router = PipelineRouter(spec.name, ["classifier"])
    async with serve(router, port=0) as url, LocalCluster(
            spec, {"classifier": variant_repo / "resnet"}, router=router, router_url=url,
            settings=LocalClusterSettings(home=tmp_path / "ipa")) as c:
        assert (await c.apply(spec, decision(classifier=[group("resnet18", 1, 0.5, 1)]))).ok
        assert router.table.routes["classifier"].protocol == transport
        async with httpx.AsyncClient(timeout=60) as client:
            resp = await client.post(f"{url}/v2/models/lc/infer", json={**image(), "parameters": {"deadline_ms": 30000}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["outputs"][0]["shape"] == [1, 1000]
        live = pids(await c.state())
    assert_nothing_left(c, await_pids=live)


CLUSTER_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from adapter.decision.model import Decision
from adapter.executors.local.cluster import LocalCluster
from adapter.executors.local.settings import LocalClusterSettings
from adapter.executors.local.signals import cancel_on_signals
from adapter.spec import parse_spec

async def main():
    cancel_on_signals()
    spec, d = parse_spec(json.loads(sys.argv[1])), Decision.model_validate_json(sys.argv[2])
    settings = LocalClusterSettings(home=Path(sys.argv[4]))
    async with LocalCluster(spec, {"classifier": Path(sys.argv[3])}, settings=settings) as c:
        assert (await c.apply(spec, d)).ok
        print(json.dumps([r.pid for r in (await c.state()).stages[0].replicas]), flush=True)
        await asyncio.sleep(3600)

try:
    asyncio.run(main())
except asyncio.CancelledError:
    pass
"""


def test_sigterm_leaves_no_process_or_cgroup(variant_repo: Path, tmp_path: Path) -> None:
    spec = {"name": "lc", "slo_ms": 1000, "budget_cores": 2, "stages": [CLASSIFIER]}
    d = decision(classifier=[group("resnet18", 1, 0.5, 1)])
    owner = subprocess.Popen(
        [sys.executable, "-c", CLUSTER_SCRIPT, json.dumps(spec), d.model_dump_json(), str(variant_repo),
         str(tmp_path / "ipa")], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert owner.stdout is not None
        replica_pids = json.loads(owner.stdout.readline() or "null")
        assert replica_pids and all(isinstance(p, int) for p in replica_pids)
        assert (tmp_path / "ipa" / "lc" / "state.json").exists()
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(timeout=60) == 0
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)
    for pid in replica_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert [g.name for g in detect_cpu_controller().groups() if g.name.startswith(f"ipa-{owner.pid}-")] == []
    assert not (tmp_path / "ipa" / "lc" / "state.json").exists()
