"""The decision engine: from a problem and a policy's restrictions to a `Decision`, always.

    solve(problem, restrictions)      optimise: candidate tables → exact DP or CBC → Decision
    assess(problem, groups)           judge a fixed configuration (static, VPA, a decision held by a guard)

`solve` validates nothing twice (a `Problem` is valid by construction), solves under `max_seconds`, translates
the solver's verdict into `optimal` / `timeout` / `degraded` with a reason, and never raises because a
problem is infeasible. The timer is only used to measure the solve time and to enforce the limit; nothing in
the decision depends on it.

Which solver: `exact` (dynamic programming with bounds, `adapter.decision.solvers.exact`) is the default behind `auto`:
on the benchmark (benchmarks/solver.py) it is faster than CBC at every size and agrees with it on every instance
both finish. `mip` (CBC through python-mip) is the independent check and an alternative.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

from adapter.decision.model import Decision, ObjectiveTerms, ReplicaGroup, StageDecision, Status
from adapter.decision.problem import Problem, Weights
from adapter.decision.solvers import exact, mip
from adapter.decision.solvers.choices import (
    FREE,
    ChoiceProblem,
    Config,
    Group,
    Restriction,
    Solution,
    candidates,
    evaluate,
    within,
)
from adapter.decision.solvers.fallback import diagnose, fallback

SolverName = Literal["auto", "exact", "mip"]
SOLVERS: tuple[str, ...] = ("auto", "exact", "mip")
Timer = Callable[[], float]

__all__ = [
    "FREE",
    "SOLVERS",
    "Config",
    "Group",
    "Restriction",
    "SolverName",
    "Timer",
    "assess",
    "decision_of",
    "solve",
    "violations",
]


def solve(
    problem: Problem,
    restrictions: Sequence[Restriction] | None = None,
    *,
    solver: SolverName = "auto",
    max_seconds: float = 1.0,
    policy: str = "joint",
    timer: Timer = time.perf_counter,
    report_weights: Weights | None = None,
) -> Decision:
    """The best decision the restrictions allow, or the degraded fallback with the reason.

    `report_weights`: weights to report the objective with, when the policy optimised with others (model
    switching maximises accuracy alone but is judged on the spec's objective like every other policy).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; one of {SOLVERS}")
    start = timer()
    rs = list(restrictions) if restrictions is not None else [FREE] * len(problem.stages)
    if len(rs) != len(problem.stages):
        raise ValueError(f"{len(rs)} restrictions for {len(problem.stages)} stages")
    tables = [candidates(problem, i, r) for i, r in enumerate(rs)]
    report = problem if report_weights is None else problem.with_changes(weights=report_weights)
    used = "exact" if solver == "auto" else solver
    solution = Solution("infeasible", None, used)
    if all(len(t) for t in tables):
        cp = ChoiceProblem.of(problem, tables)
        run = mip.solve if used == "mip" else exact.solve
        solution = run(cp, max_seconds=max(0.0, max_seconds - (timer() - start)), timer=timer)
    if solution.picks is not None:
        configs = [t.config(problem, i) for t, i in zip(tables, solution.picks, strict=True)]
        status: Status = "optimal" if solution.status == "optimal" else "timeout"
        reason = None if status == "optimal" else f"time limit of {max_seconds:g} s reached; best found"
        return decision_of(report, configs, status, reason, policy, (timer() - start) * 1000, used)
    if problem.in_force and solution.status == "infeasible":
        # No decision keeps up while its switches load; switching is then the way forward: decide without them
        # (adapter.decision.switching). Both solvers take this path alike.
        unswitched = problem.with_changes(in_force=())
        decided = solve(unswitched, rs, solver=solver, max_seconds=max(0.0, max_seconds - (timer() - start)),
                        policy=policy, timer=timer, report_weights=report_weights)
        note = "switching: no decision keeps up with the load during its switches; decided without counting them"
        return decided.model_copy(update={"notes": [*decided.notes, note],
                                          "solve_time_ms": (timer() - start) * 1000})
    reason = diagnose(problem, rs, tables)
    if solution.status == "timeout":
        status, reason = (
            "timeout",
            f"time limit of {max_seconds:g} s reached before any feasible decision; " + reason,
        )
    elif solution.status == "error":
        status, reason = "degraded", f"solver failed ({solution.detail}); " + reason
    else:
        status = "degraded"
    configs = fallback(problem, rs, tables)
    return decision_of(report, configs, status, reason, policy, (timer() - start) * 1000, "none")


def violations(problem: Problem, configs: Sequence[Config]) -> list[str]:
    """Which constraints the configuration breaks, in words (empty when it meets them all)."""
    out = []
    for stage, c in zip(problem.stages, configs, strict=True):
        if not c.meets_load:
            out.append(
                f"stage {stage.name} sustains {c.capacity_rps:.1f} rps < {problem.required_rps:.1f} rps needed"
                if sum(g.count for g in c.groups) <= stage.max_replicas
                else f"stage {stage.name} has more than {stage.max_replicas} replicas"
            )
    latency = sum(c.latency_ms for c in configs) + problem.network_ms
    if not within(latency, problem.slo_ms):
        out.append(f"predicted latency {latency:.1f} ms > SLO {problem.slo_ms:g} ms")
    cores = sum(c.cores for c in configs)
    if not within(cores, problem.budget_cores):
        out.append(f"{cores:g} cores > budget {problem.budget_cores:g}")
    return out


def assess(
    problem: Problem,
    groups: Sequence[Sequence[Group]],
    *,
    policy: str,
    solve_time_ms: float = 0.0,
    notes: Sequence[str] = (),
) -> Decision:
    """Judge a fixed configuration: `optimal` when it meets every constraint, else `degraded` saying what fails."""
    configs = [evaluate(problem, stage, g) for stage, g in zip(problem.stages, groups, strict=True)]
    broken = violations(problem, configs)
    status: Status = "degraded" if broken else "optimal"
    d = decision_of(problem, configs, status, "; ".join(broken) or None, policy, solve_time_ms, "none")
    return d.model_copy(update={"notes": list(notes)}) if notes else d


def decision_of(
    problem: Problem,
    configs: Sequence[Config],
    status: Status,
    reason: str | None,
    policy: str,
    solve_time_ms: float,
    solver: str,
) -> Decision:
    """The `Decision` (DESIGN.md §3) for one configuration per stage, with its objective and predictions."""
    accs = [c.accuracy for c in configs]
    accuracy = math.prod(accs) if problem.accuracy == "product" else sum(accs) / len(accs)
    cores = sum(c.cores for c in configs)
    batch = sum(c.batch for c in configs)
    energy = sum(c.energy for c in configs)
    w = problem.weights
    value = w.alpha * accuracy - w.beta * cores - w.delta * batch - w.energy * energy
    load = problem.load_rps
    stages = [
        StageDecision(
            name=stage.name,
            replicas=[
                ReplicaGroup(
                    variant=g.option.variant,
                    batch=g.option.batch,
                    cores=g.option.cores,
                    count=g.count,
                    load_share=min(1.0, g.load_rps / load) if load > 0 else 1.0 / len(c.groups),
                )
                for g in c.groups
            ],
            capacity_rps=c.capacity_rps,
            latency_ms=c.latency_ms,
            accuracy=c.accuracy * 100.0,
        )
        for stage, c in zip(problem.stages, configs, strict=True)
    ]
    return Decision(
        status=status,
        reason=reason,
        policy=policy,
        objective=ObjectiveTerms(value=value, accuracy=accuracy, cores=cores, batch=batch, energy=energy),
        solve_time_ms=max(0.0, solve_time_ms),
        load_rps=load,
        predicted_latency_ms=sum(c.latency_ms for c in configs) + problem.network_ms,
        stages=stages,
        slo_ms=problem.slo_ms,
        solver=solver,
    )
