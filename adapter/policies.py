"""Policies: the optimizer and every baseline, each a function `(context, config, state) -> (Decision, state)`.

    decide(context, config, state)     the one entry point: the configured policy, wrapped in the shared guards
    POLICIES[name](context, config, state)   a policy alone, without the guards

A policy is the problem of docs/formulation.md with some choices fixed or widened:

    joint            variant, batch, cores and replicas free (horizontal and vertical scaling at once)
    ipa              cores per replica fixed per variant; variant, batch and replicas free (IPA)
    infadapter       several variants per stage, load split among them, at the smallest batch (InfAdapter)
    sponge           variant and replicas fixed; cores (on the cpu_step grid) and batch free, for the SLO
                     minus the largest observed network delay (Sponge)
    fa2-low/fa2-high variant fixed to the least/most accurate, cores as ipa; batch and replicas free (FA2)
    rim              replicas, cores and batch fixed; variant free (RIM)
    model-switching  resources fixed; the most accurate variant that sustains the load (Model-Switching)
    vpa              variant and replicas fixed; cores follow measured use plus a margin, no prediction (VPA)
    static           the configuration written in the spec

Context, config and state are plain values: the adaptation loop and the simulator build a `PolicyContext` every
interval, keep the returned `PolicyState`, and pass both back next time. Nothing here reads a clock; the config's
timer only measures how long solving took.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapter.decision import Decision
from adapter.problem import Catalog, Problem, ProblemError, StageProfile, Weights, weights_of
from adapter.solvers import Group, Restriction, SolverName, Timer, assess, solve
from adapter.spec import GraphSpec, StageSpec


@dataclass(frozen=True)
class PolicyContext:
    """What the loop knows at the start of an interval."""

    now: float  # the caller's clock, seconds (simulated or real); kept for policies that need time
    predicted_load_rps: float  # the load to provision for (the predictor's peak for the next interval)
    observed_load_rps: tuple[float, ...] = ()  # recent measured load, oldest first
    cpu_usage: Mapping[str, tuple[float, ...]] = field(
        default_factory=dict
    )  # per stage: cores used per replica, oldest first
    network_delay_ms: float = (
        0.0  # cl_max: the largest network delay requests arrived with (Sponge's dynamic SLO)
    )
    current: Decision | None = None  # the decision in force

    def __post_init__(self) -> None:
        load = self.predicted_load_rps
        if not (isinstance(load, int | float) and math.isfinite(load) and load >= 0):
            raise ProblemError("predicted_load_rps", f"must be a finite number >= 0 (got {load})")
        if not (math.isfinite(self.network_delay_ms) and self.network_delay_ms >= 0):
            raise ProblemError(
                "network_delay_ms", f"must be a finite number >= 0 (got {self.network_delay_ms})"
            )


class PolicySettings(BaseModel):
    """What an operator may change at run time (REST API, CLI); None means "as the spec says"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = Field(default="joint", description="one of POLICIES")
    solver: Literal["auto", "exact", "mip"] = Field(
        default="auto", description="auto = exact (see adapter.solvers)"
    )
    time_limit_s: float = Field(default=1.0, gt=0, description="solver time limit per decision, seconds")
    slo_ms: float | None = Field(
        default=None, gt=0, description="end-to-end p99 SLO, ms (default: the spec's)"
    )
    alpha: float | None = Field(default=None, ge=0, description="weight of pipeline accuracy (fraction)")
    beta: float | None = Field(default=None, ge=0, description="cost of one core")
    delta: float | None = Field(default=None, ge=0, description="cost of one unit of batch size")
    energy: float | None = Field(
        default=None, ge=0, description="cost of one busy core (core-second of work per second)"
    )
    dynamic_slo: bool | None = Field(
        default=None,
        description="subtract the observed network delay (cl_max) from the SLO; default: sponge only",
    )
    scale_down_intervals: int = Field(
        default=3,
        ge=0,
        description="a lower need must hold this many intervals before resources go down; 0: at once",
    )
    max_variants: int = Field(
        default=2, ge=1, le=3, description="infadapter: variants a stage may split its load over"
    )
    vpa_percentile: float = Field(default=90.0, gt=0, le=100, description="vpa: percentile of recent CPU use")
    vpa_margin: float = Field(
        default=0.15, ge=0, description="vpa: safety margin over that percentile (0.15 = 15 %)"
    )

    @field_validator("policy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in POLICIES:
            raise ValueError(f"unknown policy {v!r}; one of {', '.join(POLICIES)}")
        return v


@dataclass(frozen=True)
class PolicyConfig:
    """The spec, its profiles (memoised in a `Catalog`) and the settings. Build once, reuse every interval."""

    spec: GraphSpec
    catalog: Catalog
    settings: PolicySettings = field(default_factory=PolicySettings)
    timer: Timer = time.perf_counter  # measures solve time and enforces the time limit, nothing else

    @classmethod
    def create(
        cls,
        spec: GraphSpec,
        profiles: Mapping[str, StageProfile] | None = None,
        settings: PolicySettings | None = None,
        timer: Timer = time.perf_counter,
    ) -> PolicyConfig:
        """Profiles default to the spec's profile files (`adapter.profile.load_stage_profile`)."""
        if profiles is None:
            from adapter.profile import load_stage_profile

            profiles = {s.name: load_stage_profile(spec, s) for s in spec.stages}
        return cls(spec, Catalog(spec, profiles), settings or PolicySettings(), timer)

    def with_settings(self, **changes: object) -> PolicyConfig:
        """The same spec and profiles with some settings changed (validated)."""
        settings = PolicySettings.model_validate({**self.settings.model_dump(), **changes})
        return replace(self, settings=settings)

    @property
    def weights(self) -> Weights:
        s, w = self.settings, weights_of(self.spec)
        return Weights(
            alpha=w.alpha if s.alpha is None else s.alpha,
            beta=w.beta if s.beta is None else s.beta,
            delta=w.delta if s.delta is None else s.delta,
            energy=w.energy if s.energy is None else s.energy,
        )

    @property
    def slo_ms(self) -> float:
        return self.spec.slo_ms if self.settings.slo_ms is None else self.settings.slo_ms

    def slo_for(self, context: PolicyContext) -> float:
        """The SLO this interval is decided for: with a dynamic SLO, minus cl_max (never below 1 ms)."""
        dynamic = self.settings.dynamic_slo
        if dynamic is None:
            dynamic = self.settings.policy == "sponge"
        return max(1.0, self.slo_ms - context.network_delay_ms) if dynamic else self.slo_ms

    def problem(
        self,
        context: PolicyContext,
        core_grid: Mapping[str, Sequence[float]] | None = None,
        variants: Mapping[str, Sequence[str]] | None = None,
    ) -> Problem:
        """The problem of this interval; `core_grid`/`variants` narrow (or widen) the option tables per stage."""
        return self.catalog.problem(
            context.predicted_load_rps,
            slo_ms=self.slo_for(context),
            weights=self.weights,
            core_grid=core_grid,
            variants=variants,
        )


@dataclass(frozen=True)
class PolicyState:
    """What a policy carries from one interval to the next (explicit, never hidden)."""

    scale_down_streak: int = 0  # intervals in a row the policy asked for fewer cores than are in force


Policy = Callable[[PolicyContext, PolicyConfig, PolicyState], tuple[Decision, PolicyState]]


def _solve(
    config: PolicyConfig,
    problem: Problem,
    restrictions: Sequence[Restriction] | None,
    name: str,
    report_weights: Weights | None = None,
) -> Decision:
    s = config.settings
    solver: SolverName = s.solver
    return solve(
        problem,
        restrictions,
        solver=solver,
        max_seconds=s.time_limit_s,
        policy=name,
        timer=config.timer,
        report_weights=report_weights,
    )


def _ipa_cores(
    config: PolicyConfig, problem: Problem, stage: StageSpec, variants: Sequence[str]
) -> tuple[tuple[str, float], ...]:
    """Per variant, the smallest core choice whose batch-1 p99 fits the stage's share of the SLO (else the largest)."""
    share = problem.latency_limit_ms / len(config.spec.stages)
    batch = stage.batch_sizes[0]
    out = []
    for v in variants:
        fits = [c for c in stage.cores if config.catalog.option(stage, v, batch, c).p99_ms <= share]
        out.append((v, fits[0] if fits else stage.cores[-1]))
    return tuple(out)


def joint(context: PolicyContext, config: PolicyConfig, state: PolicyState) -> tuple[Decision, PolicyState]:
    return _solve(config, config.problem(context), None, "joint"), state


def ipa(context: PolicyContext, config: PolicyConfig, state: PolicyState) -> tuple[Decision, PolicyState]:
    p = config.problem(context)
    rs = [
        Restriction(cores_by_variant=_ipa_cores(config, p, s, [v.name for v in s.variants]))
        for s in config.spec.stages
    ]
    return _solve(config, p, rs, "ipa"), state


def infadapter(
    context: PolicyContext, config: PolicyConfig, state: PolicyState
) -> tuple[Decision, PolicyState]:
    rs = [
        Restriction(batches=(s.batch_sizes[0],), max_variants=config.settings.max_variants)
        for s in config.spec.stages
    ]
    return _solve(config, config.problem(context), rs, "infadapter"), state


def sponge(context: PolicyContext, config: PolicyConfig, state: PolicyState) -> tuple[Decision, PolicyState]:
    spec = config.spec
    grid = {s.name: _step_grid(s.cores[0], s.cores[-1], spec.cpu_step) for s in spec.stages}
    variants = {s.name: (s.static_config().variant,) for s in spec.stages}
    p = config.problem(context, core_grid=grid, variants=variants)
    rs = [Restriction(replicas=min(s.static_config().replicas, s.max_replicas)) for s in spec.stages]
    return _solve(config, p, rs, "sponge"), state


def _step_grid(low: float, high: float, step: float) -> tuple[float, ...]:
    """Multiples of `step` from `low` (rounded up) to `high`, plus `low` and `high` themselves."""
    first = math.ceil(low / step - 1e-9)
    values = {round(k * step, 9) for k in range(max(first, 1), int(math.floor(high / step + 1e-9)) + 1)}
    return tuple(sorted(values | {low, high}))


def _fa2(which: Literal["low", "high"]) -> Policy:
    def fa2(context: PolicyContext, config: PolicyConfig, state: PolicyState) -> tuple[Decision, PolicyState]:
        pick = min if which == "low" else max
        variants = {s.name: (pick(s.variants, key=lambda v: v.accuracy).name,) for s in config.spec.stages}
        p = config.problem(context, variants=variants)
        rs = [
            Restriction(cores_by_variant=_ipa_cores(config, p, s, variants[s.name]))
            for s in config.spec.stages
        ]
        return _solve(config, p, rs, f"fa2-{which}"), state

    fa2.__name__ = f"fa2_{which}"
    fa2.__doc__ = (
        f"FA2: the {'least' if which == 'low' else 'most'} accurate variant; batch and replicas free."
    )
    return fa2


def _fixed_resources(config: PolicyConfig) -> tuple[Mapping[str, Sequence[float]], list[Restriction]]:
    grid, rs = {}, []
    for s in config.spec.stages:
        f = s.static_config()
        grid[s.name] = tuple(sorted({*s.cores, f.cores}))
        batch = f.batch if f.batch in s.batch_sizes else s.batch_sizes[0]
        rs.append(Restriction(batches=(batch,), cores=(f.cores,), replicas=min(f.replicas, s.max_replicas)))
    return grid, rs


def rim(context: PolicyContext, config: PolicyConfig, state: PolicyState) -> tuple[Decision, PolicyState]:
    grid, rs = _fixed_resources(config)
    return _solve(config, config.problem(context, core_grid=grid), rs, "rim"), state


def model_switching(
    context: PolicyContext, config: PolicyConfig, state: PolicyState
) -> tuple[Decision, PolicyState]:
    grid, rs = _fixed_resources(config)
    p = config.problem(context, core_grid=grid)
    accuracy_only = Weights(alpha=1.0, beta=0.0, delta=0.0, energy=0.0)
    return _solve(
        config, p.with_changes(weights=accuracy_only), rs, "model-switching", report_weights=p.weights
    ), state


def vpa(context: PolicyContext, config: PolicyConfig, state: PolicyState) -> tuple[Decision, PolicyState]:
    """Cores per replica = percentile of recent use × (1 + margin), on the cpu_step grid, within the stage's range."""
    start = config.timer()
    spec, s = config.spec, config.settings
    groups, grid, notes = [], {}, []
    in_force = {st.name: st for st in context.current.stages} if context.current is not None else {}
    for st in spec.stages:
        f = st.static_config()
        now = in_force.get(st.name)
        cores = now.replicas[0].cores if now is not None else f.cores
        usage = context.cpu_usage.get(st.name, ())
        if usage:
            want = float(np.percentile(np.asarray(usage, dtype=float), s.vpa_percentile)) * (1 + s.vpa_margin)
            cores = min(
                max(math.ceil(want / spec.cpu_step - 1e-9) * spec.cpu_step, st.cores[0]), st.cores[-1]
            )
        else:
            notes.append(f"vpa: no CPU use measured for stage {st.name}; cores kept at {cores:g}")
        grid[st.name] = (cores,)
        batch = f.batch if f.batch in st.batch_sizes else st.batch_sizes[0]
        groups.append((st, f.variant, batch, cores, min(f.replicas, st.max_replicas)))
    p = config.problem(context, core_grid=grid, variants={st.name: (v,) for st, v, _, _, _ in groups})
    fixed = [[Group(config.catalog.option(st, v, b, c), n, p.load_rps)] for st, v, b, c, n in groups]
    elapsed = (config.timer() - start) * 1000
    return assess(p, fixed, policy="vpa", solve_time_ms=elapsed, notes=notes), state


def static(context: PolicyContext, config: PolicyConfig, state: PolicyState) -> tuple[Decision, PolicyState]:
    start = config.timer()
    grid, fixed = {}, []
    for st in config.spec.stages:
        f = st.static_config()
        grid[st.name] = (f.cores,)
        fixed.append((st, f))
    p = config.problem(context, core_grid=grid, variants={st.name: (f.variant,) for st, f in fixed})
    groups = [
        [Group(config.catalog.option(st, f.variant, f.batch, f.cores), f.replicas, p.load_rps)]
        for st, f in fixed
    ]
    return assess(p, groups, policy="static", solve_time_ms=(config.timer() - start) * 1000), state


POLICIES: dict[str, Policy] = {
    "joint": joint,
    "ipa": ipa,
    "infadapter": infadapter,
    "sponge": sponge,
    "fa2-low": _fa2("low"),
    "fa2-high": _fa2("high"),
    "rim": rim,
    "model-switching": model_switching,
    "vpa": vpa,
    "static": static,
}


def decide(
    context: PolicyContext, config: PolicyConfig, state: PolicyState | None = None
) -> tuple[Decision, PolicyState]:
    """The configured policy (`config.settings.policy`) under the shared guards (adapter.guards)."""
    from adapter.guards import guarded

    return guarded(POLICIES[config.settings.policy])(context, config, state or PolicyState())
