"""The queueing-aware stage latency: Erlang C, the p99 of service plus wait, saturation, profiles that already
include queueing, and the model against the simulator at a loaded point (it must not be optimistic there)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adapter.decision.model import Decision, ObjectiveTerms, ReplicaGroup, StageDecision
from adapter.decision.stage_latency import (
    QUANTILE_TAIL,
    Z99,
    _quantile_table,
    _tail,
    erlang_c,
    sojourn_p99_ms,
    stage_p99_ms,
)
from adapter.profiling.profile import Profile, ProfilePoint
from adapter.sim.engine import SimSettings
from adapter.sim.simulator import simulate
from adapter.spec import parse_spec
from adapter.workloads.traces import arrival_times


def test_erlang_c_matches_closed_forms() -> None:
    # M/M/1: P(wait) = ρ; M/M/2 with a = 1: 1/3; M/M/3 with a = 2: 4/9
    got = erlang_c(np.array([1, 2, 3, 1]), np.array([0.5, 1.0, 2.0, 1.5]))
    assert np.allclose(got, [0.5, 1 / 3, 4 / 9, 1.0])


def test_deterministic_service_adds_the_exponential_wait_quantile() -> None:
    # no service spread: the p99 is the service time plus the conditional wait quantile m·ln(P_w / 1 %)
    for pw, mean in ((0.5, 20.0), (0.9, 80.0), (0.05, 10.0)):
        got = float(sojourn_p99_ms(100.0, 100.0, pw, mean))
        assert got == pytest.approx(100.0 + mean * math.log(pw / QUANTILE_TAIL), rel=1e-3)
    assert float(sojourn_p99_ms(100.0, 150.0, 0.01, 50.0)) == 150.0  # waiting 1 % of the time: the service's p99


def test_the_table_interpolates_the_exact_quantile_closely() -> None:
    rng = np.random.default_rng(3)
    pw = QUANTILE_TAIL ** (1 - rng.uniform(0.02, 1.0, 400))
    sigma, mean = rng.uniform(0.0, 50.0, 400), rng.uniform(0.0, 200.0, 400)
    got = sojourn_p99_ms(100.0, 100.0 + Z99 * sigma, pw, mean)
    # exact: bisection on the closed-form tail in the scaled variable
    scale = sigma + mean
    lo, hi = np.full(400, -1.0), np.full(400, 10.0)
    for _ in range(60):
        x = (lo + hi) / 2
        over = _tail(x, pw, sigma / scale) > QUANTILE_TAIL
        lo, hi = np.where(over, x, lo), np.where(over, hi, x)
    exact = np.maximum(100.0 + scale * hi, 100.0 + Z99 * sigma)
    assert np.all(np.abs(got - exact) <= 0.05 * scale + 1e-9)
    assert _quantile_table().shape == (65, 65)


def test_saturation_and_queued_profiles() -> None:
    # 10 rps per replica: at 10 rps on one replica the queue never ends
    assert math.isinf(float(stage_p99_ms(10.0, 1, 1, 10.0, 50.0, 80.0, 20.0)))
    # a row whose p99 was measured at its throughput (InfAdapter's capacities) is charged as it is
    assert float(stage_p99_ms(9.9, 1, 1, 10.0, 700.0, 700.0, 20.0, queued=True)) == 700.0
    # light load on many replicas: nobody waits, the service p99 alone
    assert float(stage_p99_ms(1.0, 4, 1, 10.0, 50.0, 80.0, 20.0)) == 80.0


def test_more_load_waits_longer_and_more_replicas_wait_less() -> None:
    loads = np.array([2.0, 5.0, 8.0, 9.5])
    by_load = stage_p99_ms(loads, 1, 1, 10.0, 50.0, 80.0, 20.0)
    assert np.all(np.diff(by_load) > 0) and by_load[0] > 80.0
    by_count = stage_p99_ms(15.0, np.array([2, 3, 4]), 1, 10.0, 50.0, 80.0, 20.0)
    assert np.all(np.diff(by_count) < 0)
    # batches: the fill wait is part of it, capped by the batch window
    assert float(stage_p99_ms(0.5, 1, 4, 40.0, 50.0, 80.0, 20.0)) >= 80.0 + 20.0


def _profile(batch: int) -> Profile:
    points = []
    for b in range(1, batch + 1):
        p50, p99 = 20.0 + 15.0 * b, (20.0 + 15.0 * b) * 1.5
        mean = p50 + 0.06 * (p99 - p50)
        points.append(ProfilePoint("s", "v", b, 1.0, p50, p99, mean, 1000.0 * b / (0.6 * mean), 100, "synthetic"))
    return Profile(points)


@pytest.mark.parametrize(("batch", "replicas", "rho"), [(1, 2, 0.85), (4, 1, 0.75)])
def test_the_model_is_not_optimistic_against_the_simulator(batch: int, replicas: int, rho: float) -> None:
    """benchmarks/queueing_model.py runs the whole grid; here two loaded points, 120 simulated seconds each."""
    profile = _profile(batch)
    point = profile.point("v", batch, 1.0)
    load = rho * replicas * point.throughput_rps
    spec = parse_spec({
        "name": "q", "slo_ms": 1e6, "budget_cores": 16, "interval_s": 1e6,
        "stages": [{"name": "s", "variants": [{"name": "v", "accuracy": 50}], "batch_sizes": [batch],
                    "cores": [1.0], "max_replicas": replicas, "max_batch_time_ms": 20, "profile": "x.csv"}],
    })
    decision = Decision(
        status="optimal", objective=ObjectiveTerms(value=0, accuracy=0, cores=replicas, batch=batch),
        solve_time_ms=0, load_rps=load, predicted_latency_ms=0,
        stages=[StageDecision(name="s", replicas=[ReplicaGroup(variant="v", batch=batch, cores=1.0,
                                                                count=replicas)])],
    )
    rates = np.full(120, load)
    arrivals = arrival_times(rates, "poisson", seed=5)
    result = simulate(spec, rates, lambda now, obs: (decision, load), profiles={"s": profile}, arrivals=arrivals,
                      settings=SimSettings(on_late="serve", queue_limit=1 << 20), seed=5)
    assert len(result.latency_ms) == len(arrivals)
    simulated = float(np.percentile(result.latency_ms[arrivals >= 10.0], 99))
    model = float(stage_p99_ms(load, replicas, batch, point.throughput_rps, point.p50_ms, point.p99_ms, 20.0))
    assert model >= 0.95 * simulated
    assert model <= 2.0 * simulated  # and not absurdly safe at a point the optimizer would pick
