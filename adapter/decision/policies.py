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
    vpa              variant and replicas fixed; cores from the Kubernetes VPA recommender's decaying histogram
                     of measured CPU use (p90 + 15 %), changed only outside its bounds, no prediction (VPA)
    static           the configuration written in the spec

Context, config and state are plain values: the adaptation loop and the simulator build a `PolicyContext` every
interval, keep the returned `PolicyState`, and pass both back next time. Nothing here reads a clock; the config's
timer only measures how long solving took.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Literal

from adapter.decision.guards import guarded
from adapter.decision.model import Decision
from adapter.decision.policy_types import (
    Policy,
    PolicyConfig,
    PolicyContext,
    PolicyState,
)
from adapter.decision.problem import Problem, Weights
from adapter.decision.solvers import Group, Restriction, SolverName, assess, solve
from adapter.decision.vpa import CPUHistogram, recommend, record_usage
from adapter.spec import StageSpec


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
    """The Kubernetes VPA recommender and updater (adapter.decision.vpa) on each stage's replicas: the newest
    CPU sample goes into the stage's decaying histogram; a replica's cores change to the target only when they
    lie outside [lower bound, upper bound]. Variant, batch and replicas stay as the spec's static configuration."""
    start = config.timer()
    spec, s = config.spec, config.settings
    groups, grid, notes = [], {}, []
    in_force = {st.name: st for st in context.current.stages} if context.current is not None else {}
    histograms = dict(state.cpu_histograms)
    for st in spec.stages:
        f = st.static_config()
        now = in_force.get(st.name)
        cores = now.replicas[0].cores if now is not None else f.cores
        usage = context.cpu_usage.get(st.name, ())
        if usage:
            hist = record_usage(histograms.get(st.name, CPUHistogram()), usage[-1], cores, context.now,
                                s.vpa_half_life_s)
            histograms[st.name] = hist
            rec = recommend(hist, percentile=s.vpa_percentile / 100, margin=s.vpa_margin,
                            min_cores=st.cores[0], max_cores=st.cores[-1])
            new = rec.update(cores)
            if new != cores:
                notes.append(f"vpa: {st.name} request {cores:g} outside [{rec.lower:.3g}, {rec.upper:.3g}]: "
                             f"target {rec.target:.3g} cores")
            cores = min(max(math.ceil(new / spec.cpu_step - 1e-9) * spec.cpu_step, st.cores[0]), st.cores[-1])
        else:
            notes.append(f"vpa: no CPU use measured for stage {st.name}; cores kept at {cores:g}")
        grid[st.name] = (cores,)
        batch = f.batch if f.batch in st.batch_sizes else st.batch_sizes[0]
        groups.append((st, f.variant, batch, cores, min(f.replicas, st.max_replicas)))
    p = config.problem(context, core_grid=grid, variants={st.name: (v,) for st, v, _, _, _ in groups})
    fixed = [[Group(config.catalog.option(st, v, b, c), n, p.load_rps)] for st, v, b, c, n in groups]
    elapsed = (config.timer() - start) * 1000
    decision = assess(p, fixed, policy="vpa", solve_time_ms=elapsed, notes=notes)
    return decision, replace(state, cpu_histograms=histograms)


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
    """The configured policy (`config.settings.policy`) under the shared guards (adapter.decision.guards)."""
    return guarded(POLICIES[config.settings.policy])(context, config, state or PolicyState())
