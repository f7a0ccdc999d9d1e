"""The adapter service when a component of someone else's raises instead of reporting: a metrics source whose
`observe` raises becomes an unavailable observation (the configuration is kept, the record says why), and an
executor whose `apply` raises is retried and then recorded as a failed step. The real loop, policies and
dry-run executor run; only the raising plug-ins (a user's source and executor) are written here."""

from __future__ import annotations

from pathlib import Path

from adapter.control.loop import AdaptationLoop
from adapter.control.observation import Observation
from adapter.control.service import AdapterService, AdapterSettings
from adapter.decision.model import Decision
from adapter.decision.policy_types import PolicyConfig, PolicySettings
from adapter.executors import ApplyResult
from adapter.executors.dry_run import DryRunExecutor
from adapter.spec import GraphSpec, parse_spec

PROFILE = str(Path(__file__).resolve().parents[1] / "profiles" / "resnet.csv")
SPEC = parse_spec({
    "name": "svc", "slo_ms": 200, "budget_cores": 2, "interval_s": 30, "accuracy": "mean",
    "objective": {"alpha": 0.1, "beta": 0.5, "delta": 0.001},
    "stages": [{"name": "classifier", "family": "resnet", "profile": PROFILE, "batch_sizes": [1, 2],
                "cores": [0.25, 0.5, 1], "max_replicas": 2,
                "variants": [{"name": "resnet18", "accuracy": 69.76}, {"name": "resnet152", "accuracy": 78.31}]}]})


class RaisingSource:
    """A user's metrics source that breaks the protocol's promise and raises."""

    async def sample(self, now: float) -> None:
        raise RuntimeError("scrape exploded")

    async def observe(self, now: float) -> Observation:
        raise RuntimeError("scrape exploded")

    async def aclose(self) -> None:
        pass


class RaisingExecutor(DryRunExecutor):
    """A user's executor that raises on every apply after the first (the first deployment goes through)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def apply(self, spec: GraphSpec, decision: Decision) -> ApplyResult:
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("cluster unreachable")
        return await super().apply(spec, decision)


def service(monitor: object, executor: DryRunExecutor) -> AdapterService:
    loop = AdaptationLoop(PolicyConfig.create(SPEC, settings=PolicySettings(policy="joint")), "reactive")
    return AdapterService(loop, executor, monitor,  # type: ignore[arg-type]
                          AdapterSettings(interval_s=30, retry_delay_s=0.0, apply_attempts=2))


async def test_a_monitor_that_raises_keeps_the_configuration_and_says_why() -> None:
    svc = service(RaisingSource(), DryRunExecutor())
    first = await svc.start()
    record = await svc.decide("forced")
    assert record.outcome == "kept" and "monitor failed: RuntimeError: scrape exploded" in (record.reason or "")
    assert record.decision.stages == first.decision.stages  # nothing changed


async def test_an_executor_that_raises_is_retried_then_recorded_as_failed() -> None:
    from adapter.control.monitor import DirectSource
    from mlserver_ipa.router import PipelineRouter, serve

    executor = RaisingExecutor()
    async with serve(PipelineRouter(SPEC.name, ["classifier"]), port=0) as url:  # a real router's metrics
        monitor = DirectSource(SPEC.name, f"{url}/metrics", lambda: {}, started_at=0.0)
        svc = service(monitor, executor)
        first = await svc.start()
        svc.set_objective(alpha=100.0)  # accuracy above all: the next decision differs, so it is applied
        record = await svc.decide("forced")
        await monitor.aclose()
    assert record.decision.stages != first.decision.stages
    assert record.outcome == "failed", (record.outcome, record.reason)
    assert executor.calls == 1 + 2  # the first deployment, then both attempts of this one
    assert "ConnectionError: cluster unreachable" in (record.reason or "")
