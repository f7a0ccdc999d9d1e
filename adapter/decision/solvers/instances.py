"""Random but realistic problem instances, for the solver benchmark and the solvers' property tests.

Latency follows the shape measured for CNN variants on CPU: a fixed overhead plus compute that grows a little
less than linearly with the batch and shrinks sub-linearly with the cores; more accurate variants are slower.
Load, SLO and budget are drawn around what a middle variant needs, so that some instances are roomy, some tight
and a few infeasible. The same seed gives the same instance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from adapter.decision.problem import AccuracyMode, Option, Problem, StageTable, Weights

BATCHES = (1, 2, 4, 8, 16, 32)
CORES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def _latency(base_ms: float, batch: int, cores: float) -> float:
    """Mean latency of one batch: overhead + compute (batch^0.85 / cores^0.75)."""
    return 2.0 + base_ms * batch**0.85 / cores**0.75


def random_problem(
    seed: int,
    stages: int,
    variants: int,
    *,
    batches: Sequence[int] = BATCHES,
    cores: Sequence[float] = CORES,
    max_replicas: int = 32,
    accuracy: AccuracyMode = "product",
) -> Problem:
    rng = random.Random(seed)
    tables = []
    mid_lat = 0.0
    mid_rps = []
    mid_cores = 0.0
    for s in range(stages):
        bases = sorted(rng.uniform(4.0, 160.0) for _ in range(variants))
        accs = sorted(round(rng.uniform(45.0, 82.0), 2) for _ in range(variants))
        options = []
        for v, (base, acc) in enumerate(zip(bases, accs, strict=True)):
            for b in batches:
                for c in cores:
                    mean = _latency(base, b, c) * rng.uniform(0.95, 1.05)
                    p99 = mean * rng.uniform(1.1, 1.3)
                    options.append(
                        Option(f"v{v}", acc, b, c, round(p99, 3), round(b / mean * 1000.0, 3), round(mean, 3))
                    )
        mbt = rng.choice((10.0, 25.0, 50.0, 100.0))
        tables.append(StageTable(f"s{s}", tuple(options), max_replicas, mbt))
        mid = bases[len(bases) // 2]
        mid_lat += _latency(mid, 1, 2.0) * 1.2
        mid_rps.append(4 / _latency(mid, 4, 2.0) * 1000.0)
        mid_cores += 2.0
    load = rng.uniform(0.05, 0.6) * min(mid_rps) * max_replicas / 2
    per_stage = [load / r for r in mid_rps]
    need_cores = sum(2.0 * max(1.0, n) for n in per_stage)
    return Problem(
        stages=tuple(tables),
        load_rps=round(load, 3),
        slo_ms=round(mid_lat * rng.uniform(0.5, 4.0) + 10.0 * stages, 3),
        budget_cores=round(need_cores * rng.uniform(0.4, 3.0), 2),
        weights=Weights(
            alpha=1.0,
            beta=rng.uniform(0.001, 0.03),
            delta=rng.choice((0.0, rng.uniform(0.0, 0.003))),
            energy=rng.choice((0.0, 0.0, rng.uniform(0.0, 0.02))),
        ),
        accuracy=accuracy,
        network_ms=rng.choice((0.0, 5.0, 20.0)),
        headroom=rng.choice((0.0, 0.1, 0.2)),
    )
