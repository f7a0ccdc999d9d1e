"""The adaptation step: one interval of the adapter, from an observation to the decision that should run.

    loop = AdaptationLoop(PolicyConfig.create(spec, profiles, PolicySettings(policy="joint")), "reactive")
    step, state = loop.initial(load_rps=1.0, now=t0)              # the first deployment
    step, state = loop.step(state, observation, now)              # every interval
    ... apply step.decision when step.apply ...
    state = loop.applied(state, ok=result.ok)                     # what the executor reported

`step` is a pure function of its arguments (no I/O, no clock: `now` is passed in): it appends the observed
per-second load to the history kept in `LoopState`, asks the predictor for the next interval's peak, calls the
configured policy under the shared guards (`adapter.decision.policies.decide`: bounds, budget, `cpu_step`, scale-down
hysteresis) and says whether the executor must act. The live adapter (`adapter.control.service`) and the simulator
run this same code; they differ only in where observations come from and how decisions are carried out.

Faults: an unavailable observation (metrics unreachable) keeps the decision in force and says why; a policy
that cannot decide (a bad profile point) keeps it too, with the error; an infeasible problem is not a fault
(the policy returns a `degraded` decision, which is applied). A decision whose apply failed is applied again
at the next step even if it did not change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from adapter.control.observation import Observation
from adapter.decision.model import Decision
from adapter.decision.policies import decide
from adapter.decision.policy_types import PolicyConfig, PolicyContext, PolicySettings, PolicyState
from adapter.errors import UsageError
from adapter.forecast.conformal import planning_predictor
from adapter.forecast.predictors import LoadPredictor, make_predictor


@dataclass(frozen=True)
class LoopSettings:
    """How much the loop remembers."""

    history_s: int = 900
    """seconds of per-second load kept for the predictors (the LSTM reads the last 120)"""
    cpu_samples: int = 10
    """observations of per-replica CPU use kept per stage (what `vpa` takes a percentile of)"""
    observed_s: int = 60
    """seconds of recent load passed to the policy as `observed_load_rps`"""


@dataclass(frozen=True)
class LoopState:
    """What the loop carries from one interval to the next (explicit, never hidden in the loop object)."""

    history: tuple[float, ...] = ()
    """requests per second, oldest first, the last element the second that just ended"""
    cpu: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """per stage, cores used per replica at each recent observation, oldest first"""
    current: Decision | None = None
    """the decision in force (the last one handed to the executor)"""
    policy: str | None = None
    """the policy `policy_state` belongs to: a new policy starts from a fresh state"""
    policy_state: PolicyState = field(default_factory=PolicyState)
    unapplied: bool = False
    """the last apply did not fully succeed: apply again at the next step"""


@dataclass(frozen=True)
class Step:
    """One interval's outcome, before the executor acts."""

    at: float
    decision: Decision
    """what should run from now on (the decision in force when it was kept)"""
    predicted_load_rps: float | None
    """the predictor's peak for the next interval; None when no decision was taken"""
    apply: bool
    """whether the executor must act: the decision differs from the one in force, or its apply failed"""
    kept: str | None = None
    """why the decision in force was kept without deciding (metrics unavailable, policy error)"""
    observation: Observation | None = None
    settings: PolicySettings = field(default_factory=PolicySettings)
    predictor: str = "reactive"
    network_delay_ms: float = 0.0
    """the cl_max the policy was given (`network_delay`)"""


def network_delay(observation: Observation, slo_ms: float) -> float:
    """Sponge's cl_max for a decision at `slo_ms`: the network delay observed, or the SLO minus the budget
    requests arrived with at the router when that is larger (never below 0, never a non-finite number)."""
    delay = observation.network_delay_ms
    budget = observation.arrival_budget_ms
    if budget is not None and math.isfinite(budget):
        delay = max(delay, slo_ms - budget)
    return max(0.0, delay) if math.isfinite(delay) else 0.0


def same_deployment(a: Decision | None, b: Decision | None) -> bool:
    """True when both decisions run the same replicas with the same load shares (objectives may differ)."""
    if a is None or b is None:
        return a is b
    return [(s.name, [g for g in s.replicas if g.count]) for s in a.stages] == \
           [(s.name, [g for g in s.replicas if g.count]) for s in b.stages]


class AdaptationLoop:
    """The adaptation step for one pipeline (see module doc). Holds only configuration: the state is passed in
    and returned. Predictors are built once per name (loading the LSTM's weights is file I/O)."""

    def __init__(
        self,
        config: PolicyConfig,
        predictor: str | LoadPredictor = "reactive",
        *,
        settings: LoopSettings | None = None,
        oracle_trace: np.ndarray | None = None,
    ) -> None:
        """`config`: spec, profiles and the default policy settings; `predictor`: the default predictor, by name
        or built; `oracle_trace`: the whole per-second load, only for the `oracle` predictor (simulations)."""
        self.config = config
        self.settings = settings or LoopSettings()
        self._oracle_trace = oracle_trace
        self._predictors: dict[str, LoadPredictor] = {}
        if isinstance(predictor, LoadPredictor):
            spec = config.spec
            self._predictors[predictor.name] = planning_predictor(
                predictor, spec.load_quantile, spec.load_quantile_window
            )
            predictor = predictor.name
        self.predictor: str = predictor
        self.predictor_for(predictor)  # fail now, not at the first interval, on a bad name

    @property
    def horizon_s(self) -> int:
        """The prediction horizon: one interval, in whole seconds."""
        return max(1, round(self.config.spec.interval_s))

    def predictor_for(self, name: str) -> LoadPredictor:
        """The predictor called `name` (`UsageError` for an unknown one, or `oracle` without a trace), planning
        for the spec's `load_quantile` of its own recent errors when the spec asks for one (adapter.forecast.conformal)."""
        if name not in self._predictors:
            spec = self.config.spec
            self._predictors[name] = planning_predictor(
                make_predictor(name, trace=self._oracle_trace), spec.load_quantile, spec.load_quantile_window
            )
        return self._predictors[name]

    def _config(self, settings: PolicySettings | None) -> PolicyConfig:
        if settings is None or settings == self.config.settings:
            return self.config
        return replace(self.config, settings=settings)

    def initial(self, load_rps: float, now: float, settings: PolicySettings | None = None,
                state: LoopState | None = None) -> tuple[Step, LoopState]:
        """The first deployment: the policy's decision for `load_rps` (a small load, or what is expected)."""
        config = self._config(settings)
        state = state or LoopState()
        context = PolicyContext(now=now, predicted_load_rps=max(0.0, load_rps))
        decision, policy_state = decide(context, config, PolicyState())
        step = Step(at=now, decision=decision, predicted_load_rps=load_rps, apply=True,
                    settings=config.settings, predictor=self.predictor)
        return step, replace(state, current=decision, policy=config.settings.policy, policy_state=policy_state,
                             unapplied=True)

    def step(
        self,
        state: LoopState,
        observation: Observation,
        now: float,
        settings: PolicySettings | None = None,
        predictor: str | None = None,
    ) -> tuple[Step, LoopState]:
        """One interval (see module doc). `settings`/`predictor`: the operator's current choices (default: the
        loop's own)."""
        config = self._config(settings)
        name = predictor or self.predictor
        if not observation.available:
            return self._keep(state, observation, now, config, name,
                              f"metrics unavailable: {observation.reason or 'no reason given'}")

        history = (*state.history, *observation.rates)[-self.settings.history_s:]
        cpu = dict(state.cpu)
        current = state.current
        for s in observation.stages:
            if s.cpu_cores is not None and current is not None:
                try:
                    replicas = max(1, current.stage(s.name).replica_count)
                except KeyError:
                    continue
                cpu[s.name] = (*cpu.get(s.name, ()), s.cpu_cores / replicas)[-self.settings.cpu_samples:]
        state = replace(state, history=history, cpu=cpu)

        try:
            predicted = self.predictor_for(name).predict(np.asarray(history), self.horizon_s, now_s=round(now))
        except UsageError as e:
            return self._keep(state, observation, now, config, name, f"predictor {name} failed: {e}")
        if not math.isfinite(predicted) or predicted < 0:
            predicted = float(history[-1]) if history else 0.0
        policy_state = state.policy_state if state.policy == config.settings.policy else PolicyState()
        cl_max = network_delay(observation, config.slo_ms)
        # Between a sparse load's requests the predictor says 0, and planning for 0 takes configurations whose one
        # request fits the SLO but a second within its service time does not (nlp: 5.6 of 6 s at 0 rps, 3 of 45
        # requests late when they came 4 s apart). At least one request per interval is planned for.
        context = PolicyContext(
            now=now, predicted_load_rps=max(predicted, 1.0 / self.horizon_s),
            observed_load_rps=history[-self.settings.observed_s:],
            cpu_usage=cpu, network_delay_ms=cl_max, current=current)
        try:
            decision, policy_state = decide(context, config, policy_state)
        except UsageError as e:  # ProblemError, SpecError: the inputs cannot be decided on
            return self._keep(state, observation, now, config, name, f"policy {config.settings.policy} failed: {e}")
        apply = state.unapplied or not same_deployment(decision, current)
        step = Step(at=now, decision=decision, predicted_load_rps=predicted, apply=apply, observation=observation,
                    settings=config.settings, predictor=name, network_delay_ms=cl_max)
        return step, replace(state, current=decision, policy=config.settings.policy, policy_state=policy_state,
                             unapplied=state.unapplied or apply)

    def _keep(self, state: LoopState, observation: Observation, now: float, config: PolicyConfig, predictor: str,
              reason: str) -> tuple[Step, LoopState]:
        if state.current is None:
            # Nothing in force to keep: the static configuration is the one decision that needs no input.
            step, state = self.initial(0.0, now, config.settings.model_copy(update={"policy": "static"}), state)
            return replace(step, kept=reason, observation=observation, predicted_load_rps=None), state
        step = Step(at=now, decision=state.current, predicted_load_rps=None, apply=state.unapplied, kept=reason,
                    observation=observation, settings=config.settings, predictor=predictor)
        return step, state

    @staticmethod
    def applied(state: LoopState, ok: bool) -> LoopState:
        """After the executor acted: a failed (or partial) apply is tried again at the next step."""
        return replace(state, unapplied=not ok)
