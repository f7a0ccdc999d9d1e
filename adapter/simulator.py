"""The simulator: replays a load trace through a pipeline run by an adaptation policy, in simulated time.

    simulate(spec, trace, "joint", predictor="lstm", seed=0) -> SimResult

What is simulated (details in `adapter.sim.*`):

- **Arrivals**: the trace's per-second loads turned into request times (`adapter.workload.arrival_times`,
  Poisson by default), each with an end-to-end deadline `slo_ms − network_ms` after its arrival (or the
  per-request budgets given, e.g. Sponge's dynamic SLOs from `adapter.slo`).
- **Replicas**: each with the runtime's own deadline queue (EDF within a priority class) and batching policy
  (`mlserver_ipa.queueing`, `mlserver_ipa.batching`, the very code the runtime runs, on the simulator's clock):
  batches of up to `batch` requests, a wait for a batch to fill of at most `max_batch_time_ms` and never past
  the moment the earliest deadline would be missed, requests dropped as soon as they can no longer meet their
  deadline. Batch service times are drawn from a shifted lognormal matched to the profile point's p50, p99
  and mean (`adapter.sim.service`).
- **Routing**: per stage, a replica group drawn by `load_share`, then its least-outstanding replica (the
  router's rule); stages chained, a request dropped before a stage once its deadline has passed.
- **Reconfiguration**: every `interval_s` the adapter step runs (predictor, then the policy: the same function
  the live adapter calls) and its decision is carried out with the costs of the real system: in-place variant
  and core changes after `switch_delay_s` / `resize_delay_s`, new replicas only after `cold_start_s`, removed
  replicas draining (`SimSettings`).
- **Output**: per-second columns (`adapter.sim.metrics`) and the end-to-end latency of every answered request.

A run is a pure function of its inputs and `seed`: the same arguments give the same frame, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from adapter.decision import Decision
from adapter.predict import LoadPredictor, make_predictor
from adapter.profile import Profile, load_graph_profiles
from adapter.sim.engine import DROP_REASONS, Engine, Observation, SimSettings
from adapter.sim.metrics import Frame, TickRecord, build_frame
from adapter.spec import GraphSpec
from adapter.workload import Trace, arrival_times

__all__ = ["AdapterStep", "Observation", "SimResult", "SimSettings", "known_policies", "policy_step", "simulate"]

AdapterStep = Callable[[float, np.ndarray, Observation], tuple[Decision, float]]
"""One adapter run at time `now` given the per-second load history (oldest first, the last element the second
that just ended) and what the monitor saw since the previous run: returns the decision and the predicted load."""


@dataclass
class SimResult:
    """One simulated run."""

    name: str
    frame: Frame
    """Per-second columns (see `adapter.sim.metrics`)."""
    latency_ms: np.ndarray
    """End-to-end latency of every answered request, in arrival order."""
    ticks: list[TickRecord]
    """Every adapter run: time, predicted load, decision."""
    drops: dict[str, int]
    """Dropped requests by reason (deadline, overloaded, no-replica, unfinished)."""
    wall_s: float
    """Wall-clock seconds the run took (informational; never part of the results compared)."""


def simulate(
    spec: GraphSpec,
    trace: Trace | np.ndarray,
    policy: str | AdapterStep,
    *,
    predictor: str | LoadPredictor = "reactive",
    profiles: dict[str, Profile] | None = None,
    settings: SimSettings | None = None,
    seed: int = 0,
    arrival_kind: str = "poisson",
    arrivals: np.ndarray | None = None,
    budgets_ms: np.ndarray | None = None,
    history: np.ndarray | None = None,
    name: str | None = None,
    on_tick: Callable[[float], None] | None = None,
) -> SimResult:
    """Simulate `trace` (requests per second) through `spec` adapted by `policy`.

    `policy`: a policy name (`adapter.policies.POLICIES`) or an `AdapterStep`. `predictor`: a name
    (`adapter.predict.PREDICTOR_NAMES`; `oracle` is given the observed per-second arrivals) or a predictor.
    `arrivals`: request times (sorted seconds) to use instead of drawing them from the trace, so several runs
    share the very same requests. `budgets_ms`: per request, its end-to-end SLO (default `spec.slo_ms`).
    `history`: per-second load before the trace starts (what the predictor sees at the first decisions; default
    the first second's load). The initial deployment is the policy's decision at t=0, already running.
    `on_tick(now)` is called after every adapter run (progress bars).
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
    past = np.asarray(history, dtype=np.float64) if history is not None and len(history) else counts[:1]
    slo_s = (np.full(arrivals.shape, spec.slo_ms) if budgets_ms is None else np.asarray(budgets_ms)) / 1000.0
    budgets_s = slo_s - spec.network_ms / 1000.0
    profiles = profiles if profiles is not None else load_graph_profiles(spec)
    if isinstance(policy, str):
        pred = predictor if isinstance(predictor, LoadPredictor) else make_predictor(predictor, trace=counts)
        step = policy_step(spec, profiles, policy, pred)
        label = name or policy
    else:
        step = policy
        label = name or str(getattr(policy, "__name__", "policy"))

    engine = Engine(spec, profiles, settings, seed)
    ticks: list[TickRecord] = []

    def tick(now: float) -> None:
        second = int(round(now))
        seen = np.concatenate([past, counts[:second]]) if second else past
        decision, predicted = step(now, seen, engine.observe())
        engine.apply(decision, warm=not ticks)
        ticks.append(TickRecord(now, predicted, decision))
        if on_tick is not None:
            on_tick(now)

    tick(0.0)
    interval = spec.interval_s
    tick_times = [k * interval for k in range(1, int(np.ceil(duration / interval))) if k * interval < duration]
    engine.run(arrivals, budgets_s, tick, tick_times)

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
    drops = {label_: int(reasons[code]) for code, label_ in DROP_REASONS.items()}
    return SimResult(label, frame, latency_ms, ticks, drops, time.perf_counter() - wall)


def policy_step(spec: GraphSpec, profiles: dict[str, Profile], policy: str, predictor: LoadPredictor) -> AdapterStep:
    """The adapter's step for a named policy: predict the next interval's peak, then call the policy."""
    raise NotImplementedError("waiting for adapter.policies")


def known_policies() -> list[str]:
    """The policy names `simulate` accepts."""
    from adapter.policies import POLICIES

    return list(POLICIES)
