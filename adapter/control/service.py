"""The adapter service: the adaptation loop run live, with what an operator may change while it runs.

    service = AdapterService(loop, executor, monitor, AdapterSettings(interval_s=10))
    await service.start()          # the first deployment (the policy's decision for a small load)
    await service.run()            # every interval: observe, step, apply, record; until cancelled
    await service.decide("forced") # one decision now (what POST /decide does)

It is a thin shell around `AdaptationLoop.step` (adapter.control.loop): it owns the clock, the sleeping, the I/O of the
monitor and the executor, and the decision history. Between decisions it samples the load about every second
(`MetricsSource.sample`) so the predictors get a per-second history. Changes of the objective weights, the
SLO, the policy or the predictor are validated at once and used from the next decision on.

Applying: the executor reports partial success (`ApplyResult`); failed steps are retried (`apply_attempts`),
then reported in the record. The record always says what is in force afterwards: read back from the
executor where it can tell (the local cluster's replicas, the dry run's deployment), else the decision with
`apply.ok` false, and the loop applies it again at the next interval.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from adapter.control.loop import AdaptationLoop, LoopState, Step
from adapter.control.monitor import MetricsSource, Observation
from adapter.decision.model import Decision, ReplicaGroup
from adapter.decision.policies import POLICIES
from adapter.decision.policy_types import PolicySettings
from adapter.errors import UsageError
from adapter.executors import ApplyResult, Executor, StepFailure
from adapter.executors.dry_run import DryRunExecutor
from adapter.executors.local.cluster import LocalCluster
from adapter.forecast.predictors import PREDICTOR_NAMES
from adapter.spec import GraphSpec

Trigger = Literal["start", "interval", "forced"]
Outcome = Literal["applied", "unchanged", "kept", "failed"]


class ControlError(UsageError):
    """A change the operator asked for that cannot be made; `field` names what was wrong (HTTP 422)."""

    status = 422

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class AdapterSettings:
    """How the live adapter runs."""

    interval_s: float = 10.0
    """seconds between decisions (default: the spec's `interval_s`)"""
    sample_s: float = 1.0
    """seconds between load samples (the per-second history the predictors read)"""
    apply_attempts: int = 2
    """times a decision is handed to the executor before its failed steps are reported"""
    retry_delay_s: float = 1.0
    """pause between those attempts"""
    records: int = 1000
    """decisions kept in the history (oldest dropped first)"""
    initial_load_rps: float = 1.0
    """the load the first deployment is decided for (the loop has seen nothing yet)"""


class ObservedLoad(BaseModel):
    """What the monitor saw over the window before a decision."""

    available: bool
    reason: str | None = None
    window_s: float = 0.0
    load_rps: float = 0.0
    rates: list[float] = Field(default_factory=list, description="the window's load per second, rps: what the "
                                                                  "predictor read")
    p99_ms: float | None = None
    requests: int = 0
    errors: int = 0
    dropped: int = 0
    deadline_misses: int = 0
    cpu_cores: dict[str, float] = Field(default_factory=dict, description="CPU used per stage, cores")
    arrival_budget_ms: float | None = Field(None, description="1st percentile of the budgets requests arrived "
                                                              "with at the router, ms (None: none had a deadline)")
    network_delay_ms: float = Field(0.0, description="cl_max the decision was given: time requests spent before "
                                                     "they arrived (SLO minus that budget), ms")
    notes: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, o: Observation, network_delay_ms: float = 0.0) -> ObservedLoad:
        return cls(available=o.available, reason=o.reason, window_s=o.window_s, load_rps=o.load_rps,
                   rates=[round(r, 3) for r in o.rates],
                   p99_ms=o.p99_ms, requests=o.requests, errors=o.errors, dropped=o.dropped,
                   deadline_misses=o.deadline_misses, cpu_cores=o.cpu_cores, arrival_budget_ms=o.arrival_budget_ms,
                   network_delay_ms=network_delay_ms, notes=list(o.notes))


class FailedStep(BaseModel):
    target: str
    action: str
    reason: str


class ApplyReport(BaseModel):
    """What the executor did with a decision."""

    ok: bool
    attempts: int = Field(description="times the decision was handed to the executor (0: nothing to apply)")
    applied: list[str] = Field(default_factory=list)
    failed: list[FailedStep] = Field(default_factory=list, description="steps that failed at the last attempt")


class StageInForce(BaseModel):
    name: str
    replicas: list[ReplicaGroup] = Field(description="groups of identical running replicas")


class DecisionRecord(BaseModel):
    """One decision of the adapter: what it saw, predicted and decided, and what the executor did with it."""

    index: int
    trigger: Trigger
    outcome: Outcome = Field(description="applied | unchanged (nothing to do) | kept (no decision: see reason)"
                                         " | failed (the executor did not fully apply it)")
    reason: str | None = Field(None, description="why the configuration was kept, or what failed")
    at: float = Field(description="the adapter's clock, seconds")
    time: float = Field(description="unix time, for people reading the history")
    policy: str
    predictor: str
    slo_ms: float
    alpha: float
    beta: float
    delta: float
    observed: ObservedLoad | None = None
    predicted_load_rps: float | None = None
    decision: Decision
    apply: ApplyReport
    in_force: list[StageInForce] | None = Field(
        None, description="what runs after this decision, as the executor reports it (None: it cannot tell)")


class Controls(BaseModel):
    """What an operator may change while the adapter runs (REST API)."""

    policy: str
    predictor: str
    slo_ms: float
    alpha: float
    beta: float
    delta: float


def _groups(rows: list[tuple[str, int, float, float]]) -> list[ReplicaGroup]:
    """Identical (variant, batch, cores, share) replicas counted into groups."""
    counts = collections.Counter(rows)
    return [ReplicaGroup(variant=v, batch=b, cores=c, count=n, load_share=share)
            for (v, b, c, share), n in counts.items()]


class AdapterService:
    """The live adapter (see module doc); `adapter.control.api.create_app(settings, service)` serves it over REST."""

    def __init__(
        self,
        loop: AdaptationLoop,
        executor: Executor,
        monitor: MetricsSource,
        settings: AdapterSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wallclock: Callable[[], float] = time.time,
        on_record: Callable[[DecisionRecord], None] | None = None,
    ) -> None:
        """`clock`: the loop's time (intervals, windows); `sleep`: waits on that clock; `wallclock`: only the
        unix time written into records for people; `on_record`: called with every new record (a log line)."""
        self.loop = loop
        self.executor = executor
        self.monitor = monitor
        self.settings = settings or AdapterSettings(interval_s=loop.config.spec.interval_s)
        self.clock, self.sleep, self.wallclock = clock, sleep, wallclock
        self.on_record = on_record
        self.policy_settings: PolicySettings = loop.config.settings
        self.predictor: str = loop.predictor
        self.state = LoopState()
        self.history: collections.deque[DecisionRecord] = collections.deque(maxlen=self.settings.records)
        self.last_decided_at: float | None = None
        self.started_at = clock()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._count = 0
        self._lock = asyncio.Lock()

    @property
    def spec(self) -> GraphSpec:
        return self.loop.config.spec

    # -- what the operator changes ------------------------------------------------------------------------------

    def controls(self) -> Controls:
        s, w = self.policy_settings, self.loop.config.with_settings(**self.policy_settings.model_dump()).weights
        return Controls(policy=s.policy, predictor=self.predictor,
                        slo_ms=s.slo_ms if s.slo_ms is not None else self.spec.slo_ms,
                        alpha=w.alpha, beta=w.beta, delta=w.delta)

    def _change(self, **changes: object) -> Controls:
        for name, value in changes.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ControlError(name, "must be a finite number")
        try:
            self.policy_settings = PolicySettings.model_validate({**self.policy_settings.model_dump(), **changes})
        except ValueError as e:
            raise ControlError(next(iter(changes)), str(e).splitlines()[-1]) from None
        return self.controls()

    def set_objective(self, alpha: float | None = None, beta: float | None = None,
                      delta: float | None = None) -> Controls:
        changes = {k: v for k, v in (("alpha", alpha), ("beta", beta), ("delta", delta)) if v is not None}
        for k, v in changes.items():
            if not (math.isfinite(v) and v >= 0):
                raise ControlError(k, f"must be a finite number >= 0 (got {v})")
        return self._change(**changes)

    def set_slo(self, slo_ms: float) -> Controls:
        if not (math.isfinite(slo_ms) and slo_ms > 0):
            raise ControlError("slo_ms", f"must be a finite number > 0 (got {slo_ms})")
        return self._change(slo_ms=slo_ms)

    def set_policy(self, policy: str) -> Controls:
        if policy not in POLICIES:
            raise ControlError("policy", f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
        return self._change(policy=policy)

    def set_predictor(self, predictor: str) -> Controls:
        if predictor not in PREDICTOR_NAMES:
            raise ControlError("predictor", f"unknown predictor {predictor!r}; one of {', '.join(PREDICTOR_NAMES)}")
        try:
            self.loop.predictor_for(predictor)
        except UsageError as e:  # oracle: it needs the future, which a live adapter does not have
            raise ControlError("predictor", str(e)) from None
        self.predictor = predictor
        return self.controls()

    # -- deciding -----------------------------------------------------------------------------------------------

    async def start(self) -> DecisionRecord:
        """The first deployment: the policy's decision for `initial_load_rps`, applied."""
        async with self._lock:
            now = self.clock()
            step, self.state = self.loop.initial(self.settings.initial_load_rps, now, self.policy_settings,
                                                 self.state)
            return await self._carry_out(step, "start", now)

    async def decide(self, trigger: Trigger = "forced", due: float | None = None) -> DecisionRecord:
        """One interval now: observe, step, apply, record. `due`: when it was scheduled (`run`), which the next
        interval counts from; else from now."""
        async with self._lock:
            now = self.clock()
            try:
                observation = await self.monitor.observe(now)
            except Exception as e:  # a source must not raise; if one does, it is an unavailable observation
                observation = Observation.unavailable(now, 0.0, f"monitor failed: {type(e).__name__}: {e}")
            step, self.state = self.loop.step(self.state, observation, now, self.policy_settings, self.predictor)
            return await self._carry_out(step, trigger, now, due)

    async def _carry_out(self, step: Step, trigger: Trigger, now: float, due: float | None = None) -> DecisionRecord:
        # Intervals count from when a decision was due, not from when it woke (a millisecond or so later): counted
        # from the wake-up, the decisions drifted off the seconds of the load (30 ms over a 150-s demo), and with
        # them the per-second samples. A decision more than an interval late starts the count afresh.
        on_time = due is not None and now - due < self.settings.interval_s
        self.last_decided_at = due if on_time else now
        report = ApplyReport(ok=True, attempts=0)
        if step.apply:
            result, attempts = await self._apply(step.decision)
            report = ApplyReport(ok=result.ok, attempts=attempts, applied=result.applied,
                                 failed=[FailedStep(target=f.target, action=f.action, reason=f.reason)
                                         for f in result.failed])
            self.state = self.loop.applied(self.state, result.ok)
        if step.kept is not None:
            outcome: Outcome = "kept"
            reason: str | None = step.kept
        elif not report.ok:
            outcome, reason = "failed", "; ".join(f"{f.target}: {f.action}: {f.reason}" for f in report.failed)
        else:
            outcome, reason = ("applied" if step.apply else "unchanged"), None
        s = step.settings
        w = self.loop.config.with_settings(**s.model_dump()).weights
        self._count += 1
        record = DecisionRecord(
            index=self._count, trigger=trigger, outcome=outcome, reason=reason, at=now, time=self.wallclock(),
            policy=s.policy, predictor=step.predictor, slo_ms=s.slo_ms or self.spec.slo_ms,
            alpha=w.alpha, beta=w.beta, delta=w.delta,
            observed=(ObservedLoad.of(step.observation, step.network_delay_ms)
                      if step.observation is not None else None),
            predicted_load_rps=step.predicted_load_rps, decision=step.decision, apply=report,
            in_force=await self._in_force())
        self.history.append(record)
        self.outcomes[outcome] += 1
        if self.on_record is not None:
            self.on_record(record)
        return record

    async def _apply(self, decision: Decision) -> tuple[ApplyResult, int]:
        applied: list[str] = []
        result = ApplyResult()
        attempts = 0
        for attempt in range(max(1, self.settings.apply_attempts)):
            if attempt:
                await self.sleep(self.settings.retry_delay_s)
            attempts += 1
            try:
                result = await self.executor.apply(self.spec, decision)
            except Exception as e:  # executors report failures; one that raises is reported the same way
                result = ApplyResult(failed=[StepFailure("executor", "apply", f"{type(e).__name__}: {e}", True)])
            applied += result.applied
            if result.ok:
                break
        return ApplyResult(applied=applied, failed=result.failed), attempts

    async def _in_force(self) -> list[StageInForce] | None:
        """What runs now, as the executor can tell."""
        ex = self.executor
        if isinstance(ex, LocalCluster):
            state = await ex.state()
            return [StageInForce(name=s.name, replicas=_groups(
                [(r.variant, r.batch, r.cores, s.load_shares.get(r.variant, 0.0))
                 for r in s.replicas if r.phase == "ready"])) for s in state.stages]
        if isinstance(ex, DryRunExecutor):
            if ex.deployed is None:
                return None
            return [StageInForce(name=s.name, replicas=[g for g in s.replicas if g.count]) for s in ex.deployed.stages]
        return None

    async def run(self) -> None:
        """Decide every `interval_s` (counted from the previous decision, forced ones included), sampling the
        load in between; runs until cancelled."""
        if self.last_decided_at is None:
            await self.start()
        while True:
            last = self.last_decided_at if self.last_decided_at is not None else self.clock()
            due = last + self.settings.interval_s
            now = self.clock()
            if now >= due - 1e-9:
                await self.decide("interval", due)
                continue
            # Samples fall on whole steps from the decision, not a step after the previous sample: the scrape's
            # own time would add up, and the per-second load would drift off the seconds the load is sent in.
            every = self.settings.sample_s
            next_sample = last + (math.floor((now - last) / every + 1e-9) + 1) * every
            await self.sleep(min(next_sample, due) - now)
            if self.clock() < due - 1e-9 and self.last_decided_at == last:  # (a forced decision moves the steps)
                await self.monitor.sample(self.clock())

    # -- reading ------------------------------------------------------------------------------------------------

    def current(self) -> DecisionRecord | None:
        """The latest record (its decision is the one in force)."""
        return self.history[-1] if self.history else None

    def records(self, limit: int | None = None) -> list[DecisionRecord]:
        rows = list(self.history)
        return rows[-limit:] if limit else rows
