"""The simulator: replays a load trace through a pipeline run by an adaptation policy, in simulated time.

    simulate(spec, trace, "joint", predictor="lstm", seed=0) -> SimResult

What is simulated (details in `adapter.sim.*`):

- **Arrivals**: the trace's per-second loads turned into request times (`adapter.workloads.traces.arrival_times`,
  Poisson by default), each with an end-to-end deadline `slo_ms − network_ms` after its arrival (or the
  per-request budgets given, e.g. Sponge's dynamic SLOs from `adapter.workloads.slo`).
- **Replicas**: each with the runtime's own deadline queue (EDF within a priority class) and batching policy
  (`mlserver_ipa.queueing`, `mlserver_ipa.batching`, the very code the runtime runs, on the simulator's clock):
  batches of up to `batch` requests, a wait for a batch to fill of at most `max_batch_time_ms` and never past
  the moment the earliest deadline would be missed, requests dropped as soon as they can no longer meet their
  deadline. Batch service times are drawn from a shifted lognormal matched to the profile point's p50, p99
  and mean (`adapter.sim.service`).
- **Routing**: per stage, a replica group drawn by `load_share`, then its least-outstanding replica (the
  router's rule); stages chained, a request dropped before a stage once its deadline has passed.
- **Service-time estimates**: each replica judges deadlines with the runtime's own `ServiceTimes` (mean plus
  `service_time_deviations` mean deviations of its measured batch times), fed with the simulated batches.
- **Adaptation**: every `interval_s` the live adapter's step runs (`adapter.control.loop.AdaptationLoop`: history,
  predictor, the policy under the shared guards), fed by a simulated monitor (`adapter.control.monitor.Observation`
  built from the engine's counters, CPU use included for `vpa`), and its decision is carried out with the
  costs of the real system: in-place variant and core changes after the variant's measured switch time
  (profiles/switch.csv, else `switch_delay_s`) / `resize_delay_s`, new
  replicas only after `cold_start_s`, removed replicas draining (`SimSettings`); ordered so that the cores held
  never pass `budget_cores` (in place first, what frees cores before what takes them, make-before-break only
  when both fit: `adapter.sim.engine.Engine.apply`; `SimResult.peak_cores`).
- **Output**: per-second columns (`adapter.sim.metrics`) and the end-to-end latency of every answered request.

A run is a pure function of its inputs and `seed`: the same arguments give the same frame, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from adapter.control.loop import AdaptationLoop, LoopSettings, LoopState, same_deployment
from adapter.control.monitor import Observation, StageObservation
from adapter.decision.model import Decision
from adapter.decision.policies import POLICIES
from adapter.decision.policy_types import PolicyConfig, PolicySettings
from adapter.profiling.profile import Profile, load_graph_profiles
from adapter.sim.engine import DROP_REASONS, Counters, Engine, SimSettings
from adapter.sim.metrics import Frame, TickRecord, build_frame
from adapter.spec import GraphSpec
from adapter.workloads.traces import Trace, arrival_times

__all__ = ["AdapterStep", "SimResult", "SimSettings", "known_policies", "simulate"]

AdapterStep = Callable[[float, Observation | None], tuple[Decision, float]]
"""Anything that decides at time `now` from what the monitor saw (None at t=0): returns the decision and the
load it was made for. `simulate` builds one around the adaptation loop for a named policy; passing one directly
replays decisions made elsewhere (a recorded live run, a plan fixed in advance)."""


@dataclass
class SimResult:
    """One simulated run."""

    name: str
    frame: Frame
    """Per-second columns (see `adapter.sim.metrics`)."""
    latency_ms: np.ndarray
    """End-to-end latency of every answered request, in arrival order."""
    ticks: list[TickRecord]
    """Every adapter run: time, predicted load, decision in force after it."""
    drops: dict[str, int]
    """Dropped requests by reason (deadline, overloaded, no-replica, unfinished)."""
    kept: list[str] = field(default_factory=list)
    """Adapter runs that kept the decision in force instead of deciding, with why (policy errors)."""
    wall_s: float = 0.0
    """Wall-clock seconds the run took (informational; never part of the results compared)."""
    decide_s: float = 0.0
    """Wall-clock seconds of it spent in the adaptation loop (predictor, policy, solver)."""
    peak_cores: float = 0.0
    """The most cores charged at any instant (replicas starting, switching and draining included)."""


def known_policies() -> list[str]:
    """The policy names `simulate` accepts."""
    return list(POLICIES)


def simulate(
    spec: GraphSpec,
    trace: Trace | np.ndarray,
    policy: str | PolicySettings | AdapterStep,
    *,
    predictor: str = "reactive",
    profiles: dict[str, Profile] | None = None,
    settings: SimSettings | None = None,
    loop_settings: LoopSettings | None = None,
    seed: int = 0,
    arrival_kind: str = "poisson",
    arrivals: np.ndarray | None = None,
    budgets_ms: np.ndarray | None = None,
    history: np.ndarray | None = None,
    name: str | None = None,
    on_tick: Callable[[float], None] | None = None,
) -> SimResult:
    """Simulate `trace` (requests per second) through `spec` adapted by `policy`.

    `policy`: a policy name (`known_policies()`), policy settings (`PolicySettings`, e.g. other weights), or an
    `AdapterStep`. `predictor`: a predictor name (`adapter.forecast.predictors.PREDICTOR_NAMES`; `oracle` knows the
    per-second arrivals of this run). `arrivals`: request times (sorted seconds) instead of drawing them from the
    trace, so several runs share the very same requests. `budgets_ms`: per request, its end-to-end SLO (default
    `spec.slo_ms`; e.g. Sponge's dynamic SLOs). `history`: per-second load before the trace starts (what the
    predictor sees first). The initial deployment is the policy's decision for the last interval of `history`
    (else the first second's load), already running at t=0. `on_tick(now)` runs after every adapter run.
    """
    wall = time.perf_counter()
    settings = settings or SimSettings()
    rates = trace.rates if isinstance(trace, Trace) else np.asarray(trace, dtype=np.float64)
    duration = int(rates.shape[0])
    if arrivals is None:
        arrivals = arrival_times(rates, arrival_kind, seed=seed)
    arrivals = np.asarray(arrivals, dtype=np.float64)
    arrivals = arrivals[arrivals < duration]
    counts = np.bincount(arrivals.astype(np.int64), minlength=duration).astype(np.float64)[:duration]
    slo_s = (np.full(arrivals.shape, spec.slo_ms) if budgets_ms is None else np.asarray(budgets_ms)) / 1000.0
    profiles = profiles if profiles is not None else load_graph_profiles(spec)
    engine = Engine(spec, profiles, settings, seed)
    monitor = _Monitor(spec, engine, counts, arrivals, spec.slo_ms - slo_s * 1000.0)
    kept: list[str] = []
    if callable(policy):
        step = policy
        label = name or str(getattr(policy, "__name__", "policy"))
    else:
        policy_settings = policy if isinstance(policy, PolicySettings) else PolicySettings(policy=policy)
        past = np.asarray(history, dtype=np.float64) if history is not None else np.empty(0)
        start = float(past[-max(1, round(spec.interval_s)):].max()) if len(past) else float(counts[:1].max())
        step = _loop_step(spec, profiles, policy_settings, predictor, engine, counts, past, start, loop_settings,
                          kept)
        label = name or policy_settings.policy

    ticks: list[TickRecord] = []
    decide_s = [0.0]

    def tick(now: float) -> None:
        t0 = time.perf_counter()
        decision, predicted = step(now, monitor.observe(now) if ticks else None)
        decide_s[0] += time.perf_counter() - t0
        if not ticks or not same_deployment(decision, ticks[-1].decision):
            engine.apply(decision, warm=not ticks)
        ticks.append(TickRecord(now, predicted, decision))
        if on_tick is not None:
            on_tick(now)

    tick(0.0)
    interval = spec.interval_s
    tick_times = [k * interval for k in range(1, int(np.ceil(duration / interval)) + 1) if k * interval < duration]
    engine.run(arrivals, slo_s - spec.network_ms / 1000.0, tick, tick_times)

    finish = np.array(engine.finish)
    acc = np.array(engine.acc)
    if spec.accuracy == "mean":
        acc = acc / len(spec.stages)
    frame = build_frame(
        duration_s=duration, arrival=arrivals, finish=finish, accuracy=acc, slo_s=slo_s,
        network_s=spec.network_ms / 1000.0, cores_log=engine.cores_log, ticks=ticks, spec=spec,
    )
    served = np.isfinite(finish)
    latency_ms = (finish[served] - arrivals[served]) * 1000.0 + spec.network_ms
    reasons = np.bincount(np.array(engine.reason, dtype=np.int64), minlength=len(DROP_REASONS) + 1)
    drops = {why: int(reasons[code]) for code, why in DROP_REASONS.items()}
    peak = max(c for _, c in engine.cores_log)
    return SimResult(label, frame, latency_ms, ticks, drops, kept, time.perf_counter() - wall, decide_s[0], peak)


def _loop_step(
    spec: GraphSpec, profiles: dict[str, Profile], policy: PolicySettings, predictor: str, engine: Engine,
    counts: np.ndarray, past: np.ndarray, start_load: float, loop_settings: LoopSettings | None, kept: list[str],
) -> AdapterStep:
    """The live adapter's step (`adapter.control.loop.AdaptationLoop`) driven by the simulator's clock and monitor.

    The policy's timer is the simulated clock, which stands still while a decision is taken: the solver's
    wall-clock time limit never cuts a decision short, so a run does not depend on how busy the machine is.
    """
    config = PolicyConfig.create(spec, profiles, policy, timer=engine.clock)
    loop = AdaptationLoop(config, predictor, settings=loop_settings, oracle_trace=counts)
    state = LoopState(history=tuple(past.tolist()))
    last = [start_load]

    def step(now: float, observation: Observation | None) -> tuple[Decision, float]:
        nonlocal state
        if observation is None:
            out, state = loop.initial(start_load, now, state=state)
        else:
            out, state = loop.step(state, observation, now)
        if out.kept is not None:
            kept.append(f"{now:g}s: {out.kept}")
        state = loop.applied(state, ok=True)
        if out.predicted_load_rps is not None:
            last[0] = out.predicted_load_rps
        return out.decision, last[0]

    return step


class _Monitor:
    """What the live monitor reads from /metrics, read from the engine's counters instead."""

    def __init__(self, spec: GraphSpec, engine: Engine, counts: np.ndarray, arrivals: np.ndarray,
                 network_ms: np.ndarray) -> None:
        self.spec, self.engine, self.counts = spec, engine, counts
        self.arrivals, self.network_ms = arrivals, network_ms
        """per request, the network time it spent before arriving (its SLO minus its budget)"""
        self.last: Counters = engine.counters()

    def observe(self, now: float) -> Observation:
        c, p = self.engine.counters(), self.last
        self.last = c
        window = max(now - p.at, 1e-9)
        rates = tuple(self.counts[int(round(p.at)):int(round(now))].tolist())
        latencies = self.engine.latency_log[p.answered:]
        p99 = float(np.percentile(latencies, 99)) * 1000.0 + self.spec.network_ms if latencies else None
        stages = tuple(
            StageObservation(
                name=st.name,
                arrival_rps=(c.stage_arrivals[i] - p.stage_arrivals[i]) / window,
                cpu_cores=(c.stage_cpu_s[i] - p.stage_cpu_s[i]) / window,
                dropped=c.stage_dropped[i] - p.stage_dropped[i],
            )
            for i, st in enumerate(self.spec.stages)
        )
        arrived = c.stage_arrivals[0] - p.stage_arrivals[0]
        lo, hi = np.searchsorted(self.arrivals, [p.at, now])
        cl_max = float(self.network_ms[lo:hi].max()) if hi > lo else 0.0
        return Observation(
            at=now, window_s=window, load_rps=arrived / window, rates=rates, p99_ms=p99, requests=arrived,
            dropped=c.dropped - p.dropped, deadline_misses=c.late - p.late, network_delay_ms=max(0.0, cl_max),
            stages=stages,
        )
