"""When nothing meets the constraints: say why, and still give the pipeline something to run.

`diagnose` names the constraint that cannot be met (a stage that cannot sustain the load, an SLO below the
fastest pipeline, a budget below what the load needs, or the SLO and budget together). `fallback` builds the
degraded configuration: on every stage the variant the policy allows that carries the most of the load on the
stage's share of the budget (ties: the most throughput per core; the lowest latency instead when the SLO is
what cannot be met), at the capacity the budget allows. It starts each stage at the batch and core size with the most throughput per core, one replica (or the
policy's fixed count), then repeatedly grows the stage with the least capacity for its load, by a replica or a
bigger batch/core size, whichever adds the most capacity per core, until the load is covered or the budget is
spent. When the SLO itself is out of reach, each stage instead runs its lowest-latency setting (smallest batch,
fastest core size) and only replicas are added.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapter.decision.problem import Option, Problem
from adapter.decision.solvers.choices import Config, Group, Restriction, StageChoices, evaluate


def diagnose(problem: Problem, restrictions: Sequence[Restriction], tables: Sequence[StageChoices]) -> str:
    """One sentence on why no configuration meets the constraints."""
    need = problem.required_rps
    for table, r in zip(tables, restrictions, strict=True):
        if len(table) == 0:
            stage = table.stage
            allowed = [o for o in stage.options if r.allows(o)] or list(stage.options)
            n = r.replicas if r.replicas is not None else stage.max_replicas
            best = max(n * o.throughput_rps for o in allowed)
            return (
                f"stage {stage.name}: no allowed configuration sustains {need:.1f} rps "
                f"(at most {best:.1f} rps with {n} replica{'s' if n != 1 else ''})"
            )
    fastest = sum(float(t.latency.min()) for t in tables)
    if fastest > problem.latency_limit_ms:
        return (
            f"the fastest pipeline that sustains {need:.1f} rps takes {fastest + problem.network_ms:.1f} ms, "
            f"over the SLO of {problem.slo_ms:g} ms"
            + (f" (network {problem.network_ms:g} ms)" if problem.network_ms else "")
        )
    least = sum(float(t.cores.min()) for t in tables)
    if least > problem.budget_cores:
        return f"sustaining {need:.1f} rps needs at least {least:g} cores, over the budget of {problem.budget_cores:g}"
    return (
        f"no configuration meets the SLO of {problem.slo_ms:g} ms and the budget of "
        f"{problem.budget_cores:g} cores at once at {need:.1f} rps"
    )


def fallback(
    problem: Problem, restrictions: Sequence[Restriction], tables: Sequence[StageChoices]
) -> list[Config]:
    """The degraded configuration (see the module docstring)."""
    slo_fails = (
        all(len(t) for t in tables) and sum(float(t.latency.min()) for t in tables) > problem.latency_limit_ms
    )
    need = problem.required_rps
    choices: list[list[Option]] = []
    fixed: list[int | None] = []
    for stage, r in zip(problem.stages, restrictions, strict=True):
        allowed = [o for o in stage.options if r.allows(o)] or list(stage.options)
        if slo_fails:  # the fastest variant: the lowest latency per request
            speed: dict[str, float] = {}
            for o in allowed:
                speed[o.variant] = min(speed.get(o.variant, np.inf), o.p99_ms / o.batch)
            variant = min(speed, key=lambda v: speed[v])
        else:  # the variant that carries the most of the load on this stage's share of the budget
            share = problem.budget_cores / len(problem.stages)
            reach: dict[str, tuple[float, float]] = {}
            for o in allowed:
                n = r.replicas if r.replicas is not None else max(1, min(stage.max_replicas, int(share / o.cores + 1e-9)))
                key = (min(n * o.throughput_rps, need), o.throughput_rps / o.cores)
                reach[o.variant] = max(reach.get(o.variant, key), key)
            variant = max(reach, key=lambda v: reach[v])
        mine = [o for o in allowed if o.variant == variant]
        if slo_fails:  # the lowest latency there is: smallest batch, fastest core size
            batch = min(o.batch for o in mine)
            mine = [min((o for o in mine if o.batch == batch), key=lambda o: (o.p99_ms, o.cores))]
        choices.append(mine)
        fixed.append(r.replicas)
    # start from the most throughput per core, one replica (or the fixed count) each
    picks = [max(c, key=lambda o: (o.throughput_rps / o.cores, -o.p99_ms)) for c in choices]
    counts = [n if n is not None else 1 for n in fixed]
    spent = sum(o.cores * n for o, n in zip(picks, counts, strict=True))
    while (
        need > 0
    ):  # grow the stage with the least capacity for its load, the cheapest way, within the budget
        ratios = [(counts[i] * picks[i].throughput_rps / need, i) for i in range(len(picks))]
        ratio, i = min(ratios)
        if ratio >= 1.0:
            break
        moves = []
        if fixed[i] is None and counts[i] < problem.stages[i].max_replicas:
            moves.append((picks[i], counts[i] + 1))
        moves += [(o, counts[i]) for o in choices[i] if o.throughput_rps > picks[i].throughput_rps]
        best = None
        for o, n in moves:
            extra = o.cores * n - picks[i].cores * counts[i]
            gain = o.throughput_rps * n - picks[i].throughput_rps * counts[i]
            if spent + extra <= problem.budget_cores + 1e-9 and gain > 0:
                score = gain / max(extra, 1e-9)
                if best is None or score > best[0]:
                    best = (score, o, n, extra)
        if best is None:
            break
        _, picks[i], counts[i], extra = best
        spent += extra
    return [
        evaluate(problem, stage, [Group(o, n, problem.load_rps)])
        for stage, o, n in zip(problem.stages, picks, counts, strict=True)
    ]
