"""The solvers: the exact DP and CBC agree, both match brute force, decisions meet every constraint, and
infeasible or timed-out problems still give a decision with the right status and a reason."""

from __future__ import annotations

import itertools
import math

import mip
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.decision.model import Decision
from adapter.decision.problem import Option, Problem, ProblemError, StageTable, Weights
from adapter.decision.solvers import Restriction, solve
from adapter.decision.solvers.instances import random_problem
from adapter.decision.solvers.mip import map_status
from adapter.decision.stage_latency import stage_p99_ms

TOL = 1e-7
CBC_TOL = 1e-6
"""How far CBC's optimum may fall below the exact one's: its primal and dual tolerances (about 1e-7 a term) let it
stop on a tie in accuracy, cores and batch that carries a little more of the energy term, whose weight is ~3e-6
per joule (a hypothesis case in CI: the same accuracy, cores and batch, energy 2.72 vs 2.57, objective 4.3e-7
lower)."""


def group_p99(table: StageTable, o: Option, count: int, load: float) -> float:
    """The stage p99 of `count` replicas of `o` at `load`, straight from the queueing model."""
    return float(stage_p99_ms(load, count, o.batch, o.throughput_rps, o.median_ms, o.p99_ms,
                              table.max_batch_time_ms, o.queued))


def check_constraints(problem: Problem, d: Decision) -> None:
    """Recompute capacity, latency and cores from the option tables, independently of the solvers."""
    assert [s.name for s in d.stages] == [t.name for t in problem.stages]
    latency = problem.network_ms
    cores = 0.0
    for table, s in zip(problem.stages, d.stages, strict=True):
        assert 1 <= sum(g.count for g in s.replicas) <= table.max_replicas
        assert math.isclose(sum(g.load_share for g in s.replicas), 1.0, rel_tol=1e-9)
        stage_latency = 0.0
        for g in s.replicas:
            o = table.option(g.variant, g.batch, g.cores)
            assert o is not None, f"{g} is not in the table of {table.name}"
            load = g.load_share * problem.load_rps
            assert g.count * o.throughput_rps >= load * (1 + problem.headroom) * (1 - 1e-9)
            stage_latency = max(stage_latency, group_p99(table, o, g.count, load))
            cores += g.count * g.cores
        assert math.isclose(s.latency_ms, stage_latency, rel_tol=1e-9, abs_tol=1e-9)
        latency += stage_latency
    assert latency <= problem.slo_ms * (1 + 1e-9) + 1e-9
    assert cores <= problem.budget_cores * (1 + 1e-9) + 1e-9
    assert math.isclose(d.predicted_latency_ms, latency, rel_tol=1e-9)
    assert math.isclose(d.objective.cores, cores, rel_tol=1e-9)


def brute_force(problem: Problem) -> float | None:
    """The optimum by enumerating every variant, batch, cores and replica count of every stage (tiny problems)."""
    per_stage = []
    w = problem.weights
    for table in problem.stages:
        rows = []
        for o in table.options:
            for n in range(1, table.max_replicas + 1):
                if n * o.throughput_rps < problem.load_rps * (1 + problem.headroom) * (1 - 1e-9):
                    continue
                latency = group_p99(table, o, n, problem.load_rps)
                if not math.isfinite(latency):
                    continue
                busy = problem.load_rps * o.cores / o.throughput_rps
                cost = w.beta * n * o.cores + w.delta * o.batch + w.energy * busy
                rows.append((latency, n * o.cores, o.accuracy / 100, cost))
        if not rows:
            return None
        per_stage.append(np.array(rows))
    best = None
    for combo in itertools.product(*[range(len(r)) for r in per_stage]):
        rows = [per_stage[s][j] for s, j in enumerate(combo)]
        if sum(r[0] for r in rows) > problem.latency_limit_ms * (1 + 1e-9) + 1e-9:
            continue
        if sum(r[1] for r in rows) > problem.budget_cores * (1 + 1e-9) + 1e-9:
            continue
        accs = [r[2] for r in rows]
        a = math.prod(accs) if problem.accuracy == "product" else sum(accs) / len(accs)
        value = w.alpha * a - sum(r[3] for r in rows)
        best = value if best is None else max(best, value)
    return best


@st.composite
def problems(draw: st.DrawFn, max_stages: int = 4, max_variants: int = 4) -> Problem:
    return random_problem(
        draw(st.integers(0, 10**9)),
        draw(st.integers(1, max_stages)),
        draw(st.integers(1, max_variants)),
        batches=draw(st.lists(st.sampled_from((1, 2, 4, 8, 16)), min_size=1, max_size=3, unique=True)),
        cores=draw(st.lists(st.sampled_from((0.5, 1.0, 2.0, 3.0, 4.0)), min_size=1, max_size=3, unique=True)),
        max_replicas=draw(st.integers(1, 8)),
        accuracy=draw(st.sampled_from(("product", "mean"))),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_exact_and_mip_agree_and_meet_every_constraint(problem: Problem) -> None:
    exact = solve(problem, solver="exact", max_seconds=30)
    cbc = solve(problem, solver="mip", max_seconds=30)
    assert exact.status == cbc.status
    assert exact.status in ("optimal", "degraded")
    if exact.status == "optimal":
        assert math.isclose(exact.objective.value, cbc.objective.value, rel_tol=TOL, abs_tol=TOL)
        check_constraints(problem, exact)
        check_constraints(problem, cbc)
    else:
        assert exact.reason and cbc.reason


@settings(max_examples=120, deadline=None)
@given(problems(max_stages=3, max_variants=2))
def test_exact_matches_brute_force_over_every_replica_count(problem: Problem) -> None:
    """Also checks the lemma that only the fewest sufficient replicas need to be considered."""
    small = [t for t in problem.stages if len(t.options) * t.max_replicas <= 24]
    if len(small) != len(problem.stages):
        problem = problem.with_changes(
            stages=tuple(
                StageTable(t.name, t.options[:6], min(t.max_replicas, 4), t.max_batch_time_ms)
                for t in problem.stages
            )
        )
    best = brute_force(problem)
    d = solve(problem, solver="exact")
    if best is None:
        assert d.status == "degraded"
    else:
        assert d.status == "optimal"
        assert math.isclose(d.objective.value, best, rel_tol=TOL, abs_tol=TOL)


@settings(max_examples=60, deadline=None)
@given(problems(max_stages=3, max_variants=4))
def test_split_stages_agree_between_solvers(problem: Problem) -> None:
    """InfAdapter's load split (several variants per stage): same optimum from both solvers, constraints hold."""
    rs = [Restriction(batches=(min(o.batch for o in t.options),), max_variants=2) for t in problem.stages]
    exact = solve(problem, rs, solver="exact")
    cbc = solve(problem, rs, solver="mip", max_seconds=30)
    assert exact.status == cbc.status
    if exact.status == "optimal":
        assert math.isclose(exact.objective.value, cbc.objective.value, rel_tol=TOL, abs_tol=CBC_TOL)
        check_constraints(problem, exact)
        single = solve(problem, [Restriction(batches=r.batches) for r in rs], solver="exact")
        if single.status == "optimal":  # splitting only widens the choice
            assert exact.objective.value >= single.objective.value - TOL


def one_stage(options: list[Option], load: float, **kw: object) -> Problem:
    return Problem(stages=(StageTable("s", tuple(options), 4, 10.0),), load_rps=load, **kw)  # type: ignore[arg-type]


def test_split_serves_the_accurate_variant_first() -> None:
    big = Option("big", 80.0, 1, 1.0, 50.0, 20.0)
    small = Option("small", 70.0, 1, 0.5, 20.0, 40.0)
    p = one_stage([big, small], 25.0, slo_ms=300.0, budget_cores=1.5, weights=Weights(1.0, 0.001, 0.0, 0.0))
    d = solve(p, [Restriction(max_variants=2)])
    assert d.status == "optimal"
    groups = {g.variant: g for g in d.stages[0].replicas}
    # big at 70 % of its 20 rps queues past 300 ms; at half of it the p99 fits: it takes 10 rps, small the rest
    assert group_p99(p.stages[0], big, 1, 14.0) > 300 > group_p99(p.stages[0], big, 1, 10.0)
    assert groups["big"].count == 1 and math.isclose(groups["big"].load_share, 10 / 25)
    assert groups["small"].count == 1 and math.isclose(groups["small"].load_share, 15 / 25)
    assert math.isclose(d.stages[0].accuracy, (10 * 80 + 15 * 70) / 25)
    assert math.isclose(d.objective.value, (10 * 0.80 + 15 * 0.70) / 25 - 0.001 * 1.5)


def test_batch_fill_and_queueing_count_against_the_slo() -> None:
    b1 = Option("v", 75.0, 1, 1.0, 40.0, 15.0, 30.0)  # 20 rps need 2 replicas, which queue near saturation
    b8 = Option("v", 75.0, 8, 1.0, 60.0, 130.0, 50.0)  # 1 replica, + up to 10 ms of batch fill
    p = one_stage([b1, b8], 20.0, slo_ms=1000.0, budget_cores=8.0, weights=Weights(1.0, 0.1, 0.0, 0.0))
    table = p.stages[0]
    one_b8 = group_p99(table, b8, 1, 20.0)
    assert one_b8 > 60.0 + 10.0  # service p99 + the fill, and the queue on top
    d = solve(p.with_changes(slo_ms=one_b8 * (1 + 1e-6)))
    assert (d.stages[0].replicas[0].batch, d.stages[0].replicas[0].count) == (8, 1)
    assert math.isclose(d.stages[0].latency_ms, one_b8)
    check_constraints(p, d)
    tight = solve(p.with_changes(slo_ms=one_b8 * 0.999))  # b8's service p99 and fill alone fit; the queue does not
    g = tight.stages[0].replicas[0]
    assert tight.status == "optimal" and (g.batch, g.count) != (8, 1)
    assert tight.stages[0].latency_ms <= one_b8 * 0.999


def test_more_replicas_than_the_fewest_when_the_queue_needs_them() -> None:
    o = Option("v", 75.0, 1, 1.0, 40.0, 30.0, 35.0)  # 50 rps: 2 replicas carry it at 83 % and queue
    p = one_stage([o], 50.0, slo_ms=1000.0, budget_cores=8.0, weights=Weights(1.0, 0.01, 0.0, 0.0))
    table = p.stages[0]
    two, three = group_p99(table, o, 2, 50.0), group_p99(table, o, 3, 50.0)
    assert two > three
    d = solve(p.with_changes(slo_ms=(two + three) / 2))
    assert d.status == "optimal" and d.stages[0].replicas[0].count == 3
    assert solve(p.with_changes(slo_ms=two * 1.01)).stages[0].replicas[0].count == 2


def test_a_profile_with_queueing_in_its_latency_is_not_charged_twice() -> None:
    plain = Option("v", 75.0, 1, 1.0, 400.0, 20.0, 300.0)
    queued = Option("v", 75.0, 1, 1.0, 400.0, 20.0, 300.0, queued=True)  # p99 measured at 20 rps offered
    for o, charged in ((plain, True), (queued, False)):
        p = one_stage([o], 19.0, slo_ms=450.0, budget_cores=2.0)
        latency = solve(p).stages[0].latency_ms if charged is False else group_p99(p.stages[0], o, 1, 19.0)
        assert (latency > 450.0) is charged
        assert (latency == 400.0) is not charged


def test_infeasible_slo_gives_a_degraded_decision_with_the_reason() -> None:
    p = random_problem(7, 3, 4)
    d = solve(p.with_changes(slo_ms=1.0, network_ms=0.0))
    assert d.status == "degraded"
    assert "over the SLO" in (d.reason or "")
    assert d.solver == "none" and len(d.stages) == 3
    # the fallback runs the lowest-latency setting of the fastest variant
    assert all(
        g.batch == min(o.batch for o in t.options)
        for t, s in zip(p.stages, d.stages, strict=True)
        for g in s.replicas
    )


def test_overload_gives_the_most_capacity_the_budget_allows() -> None:
    p = random_problem(3, 2, 3)
    d = solve(p.with_changes(load_rps=p.load_rps * 1000))
    assert d.status == "degraded"
    assert "sustains" in (d.reason or "")
    assert d.cores <= p.budget_cores + 1e-9
    fastest = {t.name: min(t.options, key=lambda o: o.p99_ms / o.batch).variant for t in p.stages}
    assert all(g.variant == fastest[s.name] for s in d.stages for g in s.replicas)


def test_budget_too_small_is_named() -> None:
    p = random_problem(11, 2, 3)
    d = solve(p.with_changes(budget_cores=0.1))
    assert d.status == "degraded"
    assert "budget" in (d.reason or "")


class StepTimer:
    """A clock that stands still for `calls` readings and then jumps far ahead (the time limit passes)."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def __call__(self) -> float:
        self.calls -= 1
        return 0.0 if self.calls >= 0 else 1e6


def test_time_limit_gives_the_best_found_or_a_fallback() -> None:
    p = random_problem(5, 4, 4)
    full = solve(p, solver="exact")
    assert full.status == "optimal"
    seen = set()
    for calls in range(0, 40):
        d = solve(p, solver="exact", max_seconds=1.0, timer=StepTimer(calls))
        seen.add((d.status, d.solver))
        if d.status == "timeout" and d.solver == "exact":
            check_constraints(p, d)  # the best found so far is a feasible decision
            assert d.objective.value <= full.objective.value + TOL
            assert "time limit" in (d.reason or "")
        elif d.status == "timeout":
            assert d.solver == "none" and "time limit" in (d.reason or "")
        else:
            assert d.status == "optimal" and math.isclose(
                d.objective.value, full.objective.value, abs_tol=TOL
            )
    assert ("timeout", "none") in seen and ("timeout", "exact") in seen and ("optimal", "exact") in seen


def test_mip_time_limit_never_raises() -> None:
    p = random_problem(2, 3, 5)
    d = solve(p, solver="mip", max_seconds=1e-9)
    assert d.status == "timeout" and "time limit" in (d.reason or "")


def test_cbc_status_in_our_words() -> None:
    s = mip.OptimizationStatus
    assert map_status(s.OPTIMAL, True) == "optimal"
    assert map_status(s.FEASIBLE, True) == "timeout"
    assert map_status(s.NO_SOLUTION_FOUND, False) == "timeout"
    assert map_status(s.INFEASIBLE, False) == "infeasible"
    assert map_status(s.INT_INFEASIBLE, False) == "infeasible"
    assert map_status(s.ERROR, False) == "error"


def test_zero_load_keeps_one_replica_per_stage() -> None:
    p = random_problem(1, 3, 3).with_changes(load_rps=0.0)
    for solver in ("exact", "mip"):
        d = solve(p, solver=solver)  # type: ignore[arg-type]
        assert d.status == "optimal"
        assert all(s.replica_count == 1 for s in d.stages)
        check_constraints(p, d)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"load_rps": -1.0}, "load_rps"),
        ({"load_rps": math.nan}, "load_rps"),
        ({"slo_ms": 0.0}, "slo_ms"),
        ({"budget_cores": -2.0}, "budget_cores"),
        ({"headroom": -0.1}, "headroom"),
        ({"weights": Weights(alpha=-1.0)}, "objective.alpha"),
        ({"stages": ()}, "stages"),
    ],
)
def test_invalid_problems_name_the_field(change: dict[str, object], field: str) -> None:
    p = random_problem(0, 1, 2)
    with pytest.raises(ProblemError) as e:
        p.with_changes(**change)
    assert e.value.field == field
    assert str(e.value).startswith(field + ":")


def test_invalid_option_names_its_place() -> None:
    bad = Option("v", 75.0, 1, 1.0, 10.0, -5.0)
    with pytest.raises(ProblemError, match=r"stages\[0\]\.options\[0\]\.throughput_rps"):
        one_stage([bad], 1.0, slo_ms=10.0, budget_cores=1.0)


def test_unknown_solver_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown solver"):
        solve(random_problem(0, 1, 2), solver="gurobi")  # type: ignore[arg-type]
