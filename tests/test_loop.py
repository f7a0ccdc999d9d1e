"""The adaptation loop in virtual time: the pure step on observations (scale-ups at once, scale-downs after the
lower need held, metrics unavailable, infeasible), and the live service's schedule on an injected clock with a
real unreachable metrics endpoint and the dry-run executor."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import free_port

from adapter.control.loop import AdaptationLoop, LoopState, same_deployment
from adapter.control.monitor import DirectSource, Observation, StageObservation
from adapter.control.service import AdapterService, AdapterSettings, StageInForce
from adapter.decision.policy_types import PolicyConfig, PolicySettings
from adapter.executors.dry_run import DryRunExecutor
from adapter.executors.local.cluster import LocalCluster
from adapter.executors.local.settings import LocalClusterSettings
from adapter.spec import GraphSpec, parse_spec

PROFILE = str(Path(__file__).resolve().parents[1] / "profiles" / "resnet.csv")
INTERVAL = 5


def spec(**changes: object) -> GraphSpec:
    data = {"name": "loop", "slo_ms": 400, "budget_cores": 2, "interval_s": INTERVAL, "accuracy": "mean",
            "objective": {"alpha": 10, "beta": 0.5, "delta": 0.001},
            "stages": [{"name": "classifier", "family": "resnet", "profile": PROFILE, "batch_sizes": [1, 2],
                        "cores": [0.25, 0.5, 1], "max_replicas": 2, "max_batch_time_ms": 20,
                        "variants": [{"name": "resnet18", "accuracy": 69.76},
                                     {"name": "resnet50", "accuracy": 76.13}]}]}
    return parse_spec({**data, **changes})


def make_loop(scale_down_intervals: int = 3, **spec_changes: object) -> AdaptationLoop:
    settings = PolicySettings(policy="joint", scale_down_intervals=scale_down_intervals)
    return AdaptationLoop(PolicyConfig.create(spec(**spec_changes), settings=settings), "reactive")


def seen(rps: float, at: float, seconds: int = INTERVAL, cpu: float | None = None) -> Observation:
    """What a monitor reports after `seconds` of a steady `rps`."""
    return Observation(at=at, window_s=seconds, load_rps=rps, rates=(rps,) * seconds, requests=round(rps * seconds),
                       stages=(StageObservation("classifier", arrival_rps=rps, cpu_cores=cpu),))


def test_scale_up_at_once_and_down_only_after_the_lower_need_held() -> None:
    loop = make_loop(scale_down_intervals=3)
    step, state = loop.initial(load_rps=1.0, now=0.0)
    state = loop.applied(state, ok=True)
    small = step.decision.cores
    t = 0.0

    t += INTERVAL
    step, state = loop.step(state, seen(2, t), t)
    assert not step.apply and step.decision.cores == small and step.kept is None
    assert state.history == (2.0,) * INTERVAL

    t += INTERVAL  # the load jumps: more capacity in this very interval
    step, state = loop.step(state, seen(70, t), t)
    assert step.apply and step.decision.cores > small and step.predicted_load_rps == 70
    assert step.decision.stage("classifier").capacity_rps >= 70
    state = loop.applied(state, ok=True)
    big = step.decision

    for held in range(2):  # the load falls: the capacity stays for two intervals ...
        t += INTERVAL
        step, state = loop.step(state, seen(2, t), t)
        assert not step.apply and same_deployment(step.decision, big), held
        assert "hysteresis: holding" in " ".join(step.decision.notes)
    t += INTERVAL  # ... and goes at the third
    step, state = loop.step(state, seen(2, t), t)
    assert step.apply and step.decision.cores == small
    assert "lower need held 3 intervals" in " ".join(step.decision.notes)


def test_metrics_unavailable_keep_the_configuration_and_say_why() -> None:
    loop = make_loop()
    _, state = loop.initial(load_rps=1.0, now=0.0)
    state = loop.applied(state, ok=True)
    before = state.current
    step, after = loop.step(state, Observation.unavailable(5.0, 5.0, "router metrics unreachable (x): ConnectError"),
                            5.0)
    assert step.kept is not None and "metrics unavailable: router metrics unreachable" in step.kept
    assert step.decision is before and not step.apply and step.predicted_load_rps is None
    assert after == state  # nothing learnt, nothing changed

    # with nothing in force yet (the very first interval), the static configuration is the one to keep
    step, fresh = loop.step(LoopState(), Observation.unavailable(5.0, 5.0, "down"), 5.0)
    assert step.kept is not None and step.apply and step.decision.policy == "static" and fresh.current is not None


def test_infeasible_gives_the_degraded_decision_which_is_applied() -> None:
    loop = make_loop()
    _, state = loop.initial(load_rps=1.0, now=0.0)
    state = loop.applied(state, ok=True)
    step, state = loop.step(state, seen(100_000, 5.0), 5.0)  # far beyond 2 cores
    assert step.decision.status == "degraded" and step.decision.reason
    assert step.apply and step.kept is None

    tight = PolicySettings(policy="joint", slo_ms=1.0)  # no variant answers in 1 ms
    step, _ = loop.step(state, seen(2, 10.0), 10.0, settings=tight)
    assert step.decision.status == "degraded" and "SLO" in (step.decision.reason or "")


def test_a_failed_apply_is_applied_again_and_a_new_policy_starts_fresh() -> None:
    loop = make_loop()
    step, state = loop.initial(load_rps=1.0, now=0.0)
    state = loop.applied(state, ok=False)
    step, state = loop.step(state, seen(1, 5.0), 5.0)
    assert step.apply and same_deployment(step.decision, state.current)  # same decision, applied again
    state = loop.applied(state, ok=True)
    step, state = loop.step(state, seen(1, 10.0), 10.0, settings=PolicySettings(policy="static"))
    assert step.decision.policy == "static" and state.policy == "static"


def test_vpa_reads_the_measured_cpu_per_replica() -> None:
    loop = make_loop()
    _, state = loop.initial(load_rps=1.0, now=0.0, settings=PolicySettings(policy="vpa"))
    state = loop.applied(state, ok=True)
    step, state = loop.step(state, seen(5, 5.0, cpu=0.8), 5.0, settings=PolicySettings(policy="vpa"))
    assert state.cpu["classifier"] == (0.8,)
    # one sample: VPA's confidence is nil, its bounds span every core choice, the request in force (1 core) stays
    assert step.decision.stage("classifier").replicas[0].cores == 1.0
    assert state.policy_state.cpu_histograms["classifier"].samples == 1


class VirtualClock:
    """The service's clock and sleep: time moves only when the service sleeps."""

    def __init__(self, until: float, overshoot_s: float = 0.0) -> None:
        self.now, self.until, self.overshoot_s = 0.0, until, overshoot_s
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Wakes `overshoot_s` late, as an event loop does."""
        self.sleeps.append(seconds)
        self.now += seconds + self.overshoot_s
        if self.now > self.until:
            raise TimeoutError("virtual time is up")


async def test_service_decides_every_interval_and_records_why_it_kept_the_configuration() -> None:
    clock = VirtualClock(until=3 * INTERVAL + 0.5)
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    monitor = DirectSource("loop", dead, lambda: {}, started_at=0.0, timeout_s=0.5)
    executor = DryRunExecutor()
    service = AdapterService(make_loop(), executor, monitor, AdapterSettings(interval_s=INTERVAL, sample_s=1.0),
                             clock=clock, sleep=clock.sleep, wallclock=lambda: 1.7e9)
    with pytest.raises(TimeoutError):
        await service.run()
    await monitor.aclose()
    records = service.records()
    assert [r.trigger for r in records] == ["start", "interval", "interval", "interval"]
    assert [r.at for r in records] == [0.0, 5.0, 10.0, 15.0]
    assert max(clock.sleeps) <= 1.0  # sampled about every second in between
    first, *kept = records
    assert first.outcome == "applied" and first.apply.attempts == 1 and first.in_force is not None
    for r in kept:
        assert r.outcome == "kept" and r.reason is not None and dead in r.reason
        assert r.observed is not None and not r.observed.available
        assert same_deployment(r.decision, first.decision) and r.apply.attempts == 0
    assert len(executor.applied) == 1


class SlowScrapes(DirectSource):
    """A router whose metrics take 0.3 s of virtual time to answer."""

    def __init__(self, clock: VirtualClock, url: str) -> None:
        super().__init__("loop", url, lambda: {}, started_at=0.0, timeout_s=0.5)
        self.virtual, self.sampled_at = clock, []

    async def sample(self, now: float) -> None:
        self.sampled_at.append(now)
        self.virtual.now += 0.3


async def test_load_samples_and_decisions_stay_on_whole_seconds_however_long_a_scrape_takes() -> None:
    """The per-second load must cover the seconds the load was sent in: a sample a second after the previous
    one ended would drift by each scrape's time (0.3 s here) and cut the trace's seconds in the wrong places;
    an interval counted from the moment a decision woke (1 ms late here) would drift by as much each time."""
    clock = VirtualClock(until=2 * INTERVAL + 0.5, overshoot_s=0.001)
    monitor = SlowScrapes(clock, f"http://127.0.0.1:{free_port()}/metrics")
    service = AdapterService(make_loop(), DryRunExecutor(), monitor,
                             AdapterSettings(interval_s=INTERVAL, sample_s=1.0),
                             clock=clock, sleep=clock.sleep, wallclock=lambda: 1.7e9)
    with pytest.raises(TimeoutError):
        await service.run()
    await monitor.aclose()
    assert [r.at for r in service.records()] == pytest.approx([0.0, 5.001, 10.001])
    assert monitor.sampled_at == pytest.approx([1.001, 2.001, 3.001, 4.001, 6.001, 7.001, 8.001, 9.001])


async def test_a_failed_apply_is_retried_reported_and_what_runs_is_recorded(variant_repo: Path,
                                                                           tmp_path: Path) -> None:
    """A real local cluster whose model cannot load: every attempt fails, the record says so and shows what really
    runs (nothing), and the next interval applies the decision again."""
    broken = tmp_path / "broken"
    broken.mkdir()
    settings = (variant_repo / "resnet" / "model-settings.json").read_text()
    (broken / "model-settings.json").write_text(settings.replace('.onnx"', '-missing.onnx"'))
    graph = spec(budget_cores=1)
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    monitor = DirectSource("loop", dead, lambda: {}, started_at=0.0, timeout_s=0.5)
    async with LocalCluster(graph, {"classifier": broken},
                            settings=LocalClusterSettings(home=tmp_path / "ipa", retries=1)) as cluster:
        loop = AdaptationLoop(PolicyConfig.create(graph, settings=PolicySettings(policy="static")), "reactive")
        service = AdapterService(loop, cluster, monitor, AdapterSettings(interval_s=INTERVAL, apply_attempts=2,
                                                                         retry_delay_s=0.0))
        first = await service.start()
        assert first.outcome == "failed" and first.apply.attempts == 2 and not first.apply.ok
        assert first.reason is not None and "stage classifier: start resnet50" in first.reason
        assert first.in_force == [StageInForce(name="classifier", replicas=[])]  # what really runs: nothing
        again = await service.decide("interval")
        assert again.outcome == "kept" and again.apply.attempts == 2 and not again.apply.ok  # applied again
    await monitor.aclose()
