"""Shared guards: the same rules applied to every policy's decision, so that every baseline is judged alike.

In order:
1. bounds: a stage keeps between 1 and `max_replicas` replicas, and each replica's cores stay within the
   stage's core choices (smallest to largest);
2. `cpu_step`: cores per replica are rounded up to a multiple of the spec's `cpu_step`;
3. budget: while the decision uses more cores than `budget_cores`, a replica goes from the stage with the most
   capacity to spare, or, when no stage has a replica to spare, a `cpu_step` from the largest replicas;
4. scale-down hysteresis: more resources are granted at once; fewer only once the lower need has held for
   `scale_down_intervals` intervals in a row. Until then the decision in force is kept, if it still meets every
   constraint at the new load. The count lives in `PolicyState`; no clock is read.

5. variant-switch hold-down: a switch of a stage's variant that takes T seconds in place (profiles/switch.csv,
   `adapter.decision.switching`) is made once the same new variants have been wanted for
   ⌈`switch_payback`·T / interval⌉ intervals in a row, and it would have carried the highest per-second load seen
   over the last `switch_payback`·T seconds (`observed_load_rps`, as far back as it goes); until then the policy
   decides again with those stages pinned to the variants they run (batch, cores and replicas still free), and
   the switch is made at once only when no decision on the variants in force meets every constraint at the new
   load. A switch within one interval's payback (ceil(payback·T / interval) = 1) is never held. The count lives
   in `PolicyState`.
6. ties: when the decision in force (made by the same policy), judged again at the new load, meets every
   constraint and scores as well as the new decision, it stays: an equally good deployment is not worth a cold start (without this, joint
   alternated between two half-core replicas and one one-core replica, interval after interval).

Every change is written to the decision's `notes`; a decision the guards changed is judged again (`assess`), so
its status and predictions are those of what will actually run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from adapter.decision.model import Decision, ReplicaGroup, StageDecision
from adapter.decision.policy_types import Policy, PolicyConfig, PolicyContext, PolicyState
from adapter.decision.problem import Problem
from adapter.decision.solvers import Group, assess
from adapter.decision.switching import hold_intervals, switch_seconds

_EPS = 1e-9


def guarded(policy: Policy) -> Policy:
    """`policy` with the shared guards applied to what it returns."""

    def run(context: PolicyContext, config: PolicyConfig, state: PolicyState) -> tuple[Decision, PolicyState]:
        decision, state = policy(context, config, state)
        decision = fit_budget(bound(decision, config), config)

        def resolve(pinned: PolicyConfig) -> Decision:  # the policy's state from this interval's run is kept
            return fit_budget(bound(policy(context, pinned, state)[0], pinned), pinned)

        decision, state = hold_switch(decision, context, config, state, resolve)
        decision, state = hold_scale_down(decision, context, config, state)
        return keep_on_tie(decision, context, config), state

    run.__name__ = f"guarded_{getattr(policy, '__name__', 'policy')}"
    run.__doc__ = policy.__doc__
    return run


def _problem(decision: Decision, config: PolicyConfig, stages: list[StageDecision]) -> Problem:
    """The problem at the decision's load and SLO, over just the variants and core sizes it uses."""
    return config.catalog.problem(
        decision.load_rps,
        slo_ms=decision.slo_ms or config.slo_ms,
        weights=config.weights,
        core_grid={s.name: sorted({g.cores for g in s.replicas}) for s in stages},
        variants={s.name: sorted({g.variant for g in s.replicas}) for s in stages},
    )


def rejudge(
    decision: Decision, config: PolicyConfig, stages: list[StageDecision], notes: list[str]
) -> Decision:
    """The decision made of `stages`, judged again at the decision's load and SLO."""
    p = _problem(decision, config, stages)
    groups = []
    for spec_stage, s in zip(config.spec.stages, stages, strict=True):
        groups.append(
            [
                Group(
                    config.catalog.option(spec_stage, g.variant, g.batch, g.cores),
                    g.count,
                    g.load_share * p.load_rps,
                )
                for g in s.replicas
            ]
        )
    judged = assess(p, groups, policy=decision.policy, solve_time_ms=decision.solve_time_ms)
    if judged.status == "optimal" and decision.status == "timeout":
        judged = judged.model_copy(update={"status": "timeout", "reason": decision.reason})
    return judged.model_copy(update={"notes": [*decision.notes, *notes], "solver": decision.solver})


def bound(decision: Decision, config: PolicyConfig) -> Decision:
    """Guards 1 and 2: replica bounds, core range, cpu_step rounding."""
    step = config.spec.cpu_step
    notes: list[str] = []
    stages = []
    for spec_stage, s in zip(config.spec.stages, decision.stages, strict=True):
        low, high = spec_stage.cores[0], spec_stage.cores[-1]
        groups = []
        for g in s.replicas:
            cores = min(max(g.cores, low), high)
            cores = math.ceil(cores / step - _EPS) * step
            if cores > high + _EPS:  # the largest choice is not on the step grid: the last step below it
                cores = max(math.floor(high / step + _EPS) * step, step)
            cores = round(cores, 9)
            if abs(cores - g.cores) > _EPS:
                notes.append(f"bounds: stage {s.name} {g.variant} cores {g.cores:g} -> {cores:g}")
            groups.append(g.model_copy(update={"cores": cores}))
        total = sum(g.count for g in groups)
        if total > spec_stage.max_replicas:
            groups = _trim_replicas(groups, total - spec_stage.max_replicas)
            notes.append(f"bounds: stage {s.name} replicas {total} -> {spec_stage.max_replicas}")
        elif total < 1:
            groups = [groups[0].model_copy(update={"count": 1})] + groups[1:]
            notes.append(f"bounds: stage {s.name} replicas 0 -> 1")
        stages.append(s.model_copy(update={"replicas": groups}))
    return rejudge(decision, config, stages, notes) if notes else decision


def _trim_replicas(groups: list[ReplicaGroup], extra: int) -> list[ReplicaGroup]:
    out = list(groups)
    while extra > 0:
        i = max(range(len(out)), key=lambda k: out[k].count)
        out[i] = out[i].model_copy(update={"count": out[i].count - 1})
        extra -= 1
    return out


def fit_budget(decision: Decision, config: PolicyConfig) -> Decision:
    """Guard 3: bring the decision within `budget_cores`."""
    budget, step = config.spec.budget_cores, config.spec.cpu_step
    if decision.cores <= budget + _EPS:
        return decision
    before = decision.cores
    stages = [s.model_copy() for s in decision.stages]
    load = max(decision.load_rps, _EPS)
    while sum(s.cores for s in stages) > budget + _EPS:
        # the stage whose capacity would stay highest relative to its load after losing one replica
        spare = []
        for i, s in enumerate(stages):
            if s.replica_count > 1:
                g = max(range(len(s.replicas)), key=lambda k: s.replicas[k].count)
                per = s.capacity_rps / max(s.replica_count, 1)
                spare.append(((s.capacity_rps - per) / load, i, g))
        if spare:
            _, i, g = max(spare)
            s = stages[i]
            groups = list(s.replicas)
            groups[g] = groups[g].model_copy(update={"count": groups[g].count - 1})
            per = s.capacity_rps / s.replica_count
            stages[i] = s.model_copy(update={"replicas": groups, "capacity_rps": s.capacity_rps - per})
            continue
        # one replica everywhere: take a cpu_step from the largest replicas
        i = max(range(len(stages)), key=lambda k: max(g.cores for g in stages[k].replicas))
        s = stages[i]
        g = max(range(len(s.replicas)), key=lambda k: s.replicas[k].cores)
        if s.replicas[g].cores - step < step - _EPS:
            break  # nothing left to take
        groups = list(s.replicas)
        groups[g] = groups[g].model_copy(update={"cores": round(groups[g].cores - step, 9)})
        stages[i] = s.model_copy(update={"replicas": groups})
    note = f"budget: {before:g} cores -> {sum(s.cores for s in stages):g} (budget {budget:g})"
    return rejudge(decision, config, stages, [note])


def hold_scale_down(
    decision: Decision, context: PolicyContext, config: PolicyConfig, state: PolicyState
) -> tuple[Decision, PolicyState]:
    """Guard 4: scale-ups at once, scale-downs after `scale_down_intervals` intervals of lower need."""
    need = config.settings.scale_down_intervals
    current = context.current
    same_shape = current is not None and [s.name for s in current.stages] == [s.name for s in decision.stages]
    if need == 0 or current is None or not same_shape or decision.cores >= current.cores - _EPS:
        return decision, replace(state, scale_down_streak=0)
    streak = state.scale_down_streak + 1
    if streak >= need:
        note = f"hysteresis: lower need held {streak} intervals; scaling down {current.cores:g} -> {decision.cores:g} cores"
        return decision.model_copy(update={"notes": [*decision.notes, note]}), replace(state, scale_down_streak=0)
    # judge the decision in force at today's load and SLO; keep it only if it still meets every constraint
    base = decision.model_copy(update={"load_rps": context.predicted_load_rps})
    kept = rejudge(base, config, list(current.stages), [])
    if kept.status != "optimal":
        return decision, replace(state, scale_down_streak=0)
    note = (
        f"hysteresis: holding {current.cores:g} cores ({decision.cores:g} proposed); "
        f"scale-down after {need - streak} more interval{'s' if need - streak != 1 else ''} of lower need"
    )
    held = kept.model_copy(update={"notes": [*decision.notes, note], "policy": decision.policy})
    return held, replace(state, scale_down_streak=streak)


def _variants(decision: Decision) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(sorted({g.variant for g in s.replicas if g.count > 0})) for s in decision.stages)


Resolve = Callable[[PolicyConfig], Decision]
"""The guarded policy decided again under another config (the hold-down pins stages to the variants they run)."""


def hold_switch(
    decision: Decision, context: PolicyContext, config: PolicyConfig, state: PolicyState, resolve: Resolve
) -> tuple[Decision, PolicyState]:
    """Guard 5: a slow variant switch is made only once it has been wanted for `switch_payback`·T seconds.

    What is held is the switch, not the deployment: while it is held, the decision is the policy's own with the
    slowly switching stages pinned to the variants they run (`resolve(config.pin(...))`), so batch, cores and
    replicas still follow the load, and a free switch elsewhere is still made. The switch is made at once only
    when no decision on the variants in force meets every constraint at the new load (not merely the
    configuration in force: on a sparse load the predicted peak swings between 0 and what the pipeline cannot
    carry, and a large-batch configuration chosen for the peak fails its latency at 0, which used to let every
    slow switch through)."""
    current = context.current
    if current is None or [s.name for s in current.stages] != [s.name for s in decision.stages]:
        return decision, replace(state, switch_streak=0, switch_target=())
    now, wanted = _variants(current), _variants(decision)
    costs, interval, payback = config.catalog.switch_costs, config.spec.interval_s, config.settings.switch_payback
    slowest, moves, pinned, target = 0.0, [], {}, []
    for s, old, new in zip(decision.stages, now, wanted, strict=True):
        t = max((switch_seconds(costs, g.variant, g.cores) for g in s.replicas if g.variant not in old), default=0.0)
        slow = old != new and hold_intervals(t, interval, payback) > 1
        target.append(new if slow else ())
        if slow:
            slowest = max(slowest, t)
            moves.append(f"{s.name} {'+'.join(old)} -> {'+'.join(new)}")
            pinned[s.name] = old
    if not moves:  # no switch, or only switches that pay for themselves within an interval
        return decision, replace(state, switch_streak=0, switch_target=())
    need = hold_intervals(slowest, interval, payback)
    key = tuple(target)
    streak = state.switch_streak + 1 if state.switch_target == key else 1
    counted = replace(state, switch_streak=streak, switch_target=key)
    held = resolve(config.pin(pinned))
    if held.status != "optimal" or _variants(held) == wanted:
        note = (f"switch hold: no decision on the variants in force meets the load; switching {', '.join(moves)} "
                "at once")
        return decision.model_copy(update={"notes": [*decision.notes, note]}), counted
    # the gain must have held: the new decision would have carried the load seen over payback·T (what there is)
    seen = context.observed_load_rps[-max(1, math.ceil(payback * slowest)):]
    peak = max(seen, default=0.0)
    if streak >= need and peak > decision.load_rps and rejudge(
        decision.model_copy(update={"load_rps": peak}), config, list(decision.stages), []
    ).status != "optimal":
        note = (f"switch hold: {', '.join(moves)} would not have carried the {peak:g} rps seen in the last "
                f"{len(seen)} s; held")
        counted = replace(counted, switch_streak=0)
    elif streak >= need:
        note = f"switch hold: {', '.join(moves)} wanted {streak} intervals (switch {slowest:g} s); switching"
        return decision.model_copy(update={"notes": [*decision.notes, note]}), counted
    else:
        note = (
            f"switch hold: {', '.join(moves)} takes {slowest:g} s in place; made after {need - streak} more "
            f"interval{'s' if need - streak != 1 else ''} of wanting it (payback {payback:g}); meanwhile "
            "decided on the variants in force"
        )
    return held.model_copy(update={"notes": [*held.notes, note], "policy": decision.policy}), counted


def keep_on_tie(decision: Decision, context: PolicyContext, config: PolicyConfig) -> Decision:
    """Guard 6: keep the decision in force when it is still feasible and scores as well as `decision`."""
    current = context.current
    if (
        current is None
        or current.policy != decision.policy  # only what this policy itself would run is an alternative
        or decision.status != "optimal"
        or [s.name for s in current.stages] != [s.name for s in decision.stages]
        or [s.replicas for s in current.stages] == [s.replicas for s in decision.stages]
    ):
        return decision
    base = decision.model_copy(update={"load_rps": context.predicted_load_rps})
    kept = rejudge(base, config, list(current.stages), [])
    value = decision.objective.value
    if kept.status != "optimal" or kept.objective.value < value - 1e-9 * max(1.0, abs(value)):
        return decision
    note = "tie: the decision in force scores as well at this load; kept (no reconfiguration)"
    return kept.model_copy(update={"notes": [*decision.notes, note], "policy": decision.policy})
