"""The vocabulary every policy and the shared guards speak: what a policy is given and what it carries.

    PolicyContext    what the loop knows at the start of an interval (load, history, what is in force)
    PolicySettings   what an operator may change at run time (policy, solver, weights, SLO, hysteresis)
    PolicyConfig     the spec, its profiles and the settings, built once and reused every interval
    PolicyState      what a policy carries from one interval to the next
    Policy           the shape of every policy: (context, config, state) -> (Decision, state)

Its own module so that both `policies` (the policies) and `guards` (which wrap them) import it, and neither
imports the other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapter.decision.model import Decision
from adapter.decision.problem import Catalog, Problem, ProblemError, StageProfile, Weights, weights_of
from adapter.decision.solvers import Timer
from adapter.decision.switching import InForce
from adapter.decision.vpa import CPUHistogram
from adapter.spec import GraphSpec

# The names `policies.POLICIES` registers (checked there), so settings validate without importing the policies.
POLICY_NAMES: tuple[str, ...] = (
    "joint", "ipa", "infadapter", "sponge", "fa2-low", "fa2-high", "rim", "model-switching", "vpa", "static",
)

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
        default="auto", description="auto = exact (see adapter.decision.solvers)"
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
    switch_payback: float = Field(
        default=2.0,
        ge=0,
        description="a variant switch taking T s (profiles/switch.csv) is made once the new variants have been "
        "wanted for payback·T s in a row, while the decision in force still meets every constraint; 0: at once",
    )
    max_variants: int = Field(
        default=2, ge=1, le=3, description="infadapter: variants a stage may split its load over"
    )
    vpa_percentile: float = Field(
        default=90.0, gt=0, le=100, description="vpa: percentile of the CPU-use histogram (VPA's target: 90)"
    )
    vpa_margin: float = Field(
        default=0.15, ge=0, description="vpa: safety margin over that percentile (VPA's default 0.15 = 15 %)"
    )
    vpa_half_life_s: float = Field(
        default=86400.0, gt=0, description="vpa: half-life of a CPU sample's weight, seconds (VPA's: 24 h)"
    )

    @field_validator("policy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in POLICY_NAMES:
            raise ValueError(f"unknown policy {v!r}; one of {', '.join(POLICY_NAMES)}")
        return v


@dataclass(frozen=True)
class PolicyConfig:
    """The spec, its profiles (memoised in a `Catalog`) and the settings. Build once, reuse every interval."""

    spec: GraphSpec
    catalog: Catalog
    settings: PolicySettings = field(default_factory=PolicySettings)
    timer: Timer = time.perf_counter  # measures solve time and enforces the time limit, nothing else
    pinned: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """per stage, the only variants its problems offer (the switch hold-down's re-solve; empty: none pinned)"""

    @classmethod
    def create(
        cls,
        spec: GraphSpec,
        profiles: Mapping[str, StageProfile] | None = None,
        settings: PolicySettings | None = None,
        timer: Timer = time.perf_counter,
    ) -> PolicyConfig:
        """Profiles default to the spec's profile files (`adapter.profiling.profile.load_stage_profile`)."""
        from adapter.profiling.switch_profile import load_switch_costs

        if profiles is None:
            from adapter.profiling.profile import load_stage_profile

            profiles = {s.name: load_stage_profile(spec, s) for s in spec.stages}
        catalog = Catalog(spec, profiles, load_switch_costs(spec))
        return cls(spec, catalog, settings or PolicySettings(), timer)

    def with_settings(self, **changes: object) -> PolicyConfig:
        """The same spec and profiles with some settings changed (validated)."""
        settings = PolicySettings.model_validate({**self.settings.model_dump(), **changes})
        return replace(self, settings=settings)

    def pin(self, variants: Mapping[str, Sequence[str]]) -> PolicyConfig:
        """The same config with the named stages' problems narrowed to `variants` (per stage name): what the
        policy decides when those stages keep the variants they run (adapter.decision.guards.hold_switch)."""
        return replace(self, pinned={**self.pinned, **{k: tuple(v) for k, v in variants.items()}})

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
        """The problem of this interval; `core_grid`/`variants` narrow (or widen) the option tables per stage,
        and a pinned stage offers only its pinned variants (of those, where `variants` names the stage)."""
        if self.pinned:
            variants = dict(variants or {})
            for stage in self.spec.stages:
                if stage.name in self.pinned:
                    offered = variants.get(stage.name) or [v.name for v in stage.variants]
                    kept = [v for v in offered if v in self.pinned[stage.name]]
                    variants[stage.name] = kept or list(offered)
        return self.catalog.problem(
            context.predicted_load_rps,
            slo_ms=self.slo_for(context),
            weights=self.weights,
            core_grid=core_grid,
            variants=variants,
            in_force=in_force_of(context.current),
        )


def in_force_of(current: Decision | None) -> dict[str, InForce]:
    """Per stage of the decision in force, its variants and capacity (empty when nothing is in force)."""
    if current is None:
        return {}
    return {
        s.name: InForce(frozenset(g.variant for g in s.replicas if g.count > 0), s.capacity_rps)
        for s in current.stages
    }


@dataclass(frozen=True)
class PolicyState:
    """What a policy carries from one interval to the next (explicit, never hidden)."""

    scale_down_streak: int = 0  # intervals in a row the policy asked for fewer cores than are in force
    switch_streak: int = 0  # intervals in a row the policy asked for `switch_target` while another was in force
    switch_target: tuple[tuple[str, ...], ...] = ()  # per stage, the variants those intervals asked for
    cpu_histograms: Mapping[str, CPUHistogram] = field(default_factory=dict)
    """vpa: per stage, the decaying histogram of per-replica CPU use (adapter.decision.vpa)"""


Policy = Callable[[PolicyContext, PolicyConfig, PolicyState], tuple[Decision, PolicyState]]
