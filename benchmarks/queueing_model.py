"""Queueing model validation: the stage p99 the optimizer plans with (`adapter.decision.stage_latency`) against the simulator.

    .venv/bin/python benchmarks/queueing_model.py            # the full grid (~2 min on a free core)
    .venv/bin/python benchmarks/queueing_model.py --quick    # a smaller grid

For every point of a grid of utilisation ρ (load over the group's capacity), batch size, replicas and
service-time spread, one stage is simulated (`adapter.sim.simulator.simulate`, the runtime's own deadline queue and
batcher, least-outstanding routing, lognormal service times matched to the profile) at a constant Poisson load
for `--seconds`, with deadlines far away and `on_late="serve"` so that nothing is dropped: what is measured is
the time requests spend at the stage. Its p99 (first 10 s left out) is compared with the model's.

The profile is synthetic so the spread can be set: batch latency p50 = 20 ms + 15 ms per row of the batch
(roughly a small CNN on one core), p99 = p50 × spread, mean between them as the lognormal implies, and the
throughput that makes a batch occupy the replica for 60 % of its latency (the measured profiles' overlap of
HTTP and compute; `adapter.sim.cluster.ServiceTable`). Batch-fill limit 20 ms, as the shipped graphs.

Printed: one line per point (model, simulated, ratio), then per utilisation band the median and the worst
ratio, and every point where the model is optimistic (model < simulated) by more than 5 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from adapter.decision.model import Decision, ObjectiveTerms, ReplicaGroup, StageDecision
from adapter.decision.stage_latency import stage_p99_ms
from adapter.profiling.profile import Profile, ProfilePoint
from adapter.sim.engine import SimSettings
from adapter.sim.simulator import simulate
from adapter.spec import parse_spec
from adapter.workloads.traces import arrival_times

MAX_BATCH_TIME_MS = 20.0
OVERLAP = 0.6  # batch period / mean latency


def profile_for(spread: float, batches: list[int]) -> Profile:
    points = []
    for b in range(1, max(batches) + 1):
        p50 = 20.0 + 15.0 * b
        p99 = p50 * spread
        mean = p50 + 0.06 * (p99 - p50)  # within the lognormal's reach (ratio below its peak of ~0.07)
        period = OVERLAP * mean
        points.append(ProfilePoint("s", "v", b, 1.0, p50, p99, mean, 1000.0 * b / period, 100, "synthetic"))
    return Profile(points)


def spec_for(batch: int, replicas: int) -> object:
    return parse_spec({
        "name": "q", "slo_ms": 1e6, "budget_cores": 64, "interval_s": 1e6,
        "stages": [{
            "name": "s", "variants": [{"name": "v", "accuracy": 50}], "batch_sizes": [batch], "cores": [1.0],
            "max_replicas": max(replicas, 1), "max_batch_time_ms": MAX_BATCH_TIME_MS, "profile": "unused.csv",
        }],
    })


def fixed(batch: int, replicas: int, load: float) -> Decision:
    return Decision(
        status="optimal", objective=ObjectiveTerms(value=0, accuracy=0, cores=replicas, batch=batch),
        solve_time_ms=0, load_rps=load, predicted_latency_ms=0,
        stages=[StageDecision(name="s", replicas=[ReplicaGroup(variant="v", batch=batch, cores=1.0,
                                                                count=replicas)])],
    )


def simulated_p99(spread: float, batch: int, replicas: int, load: float, seconds: int, seed: int) -> float:
    spec = spec_for(batch, replicas)
    profile = profile_for(spread, [batch])
    rates = np.full(seconds, load)
    arrivals = arrival_times(rates, "poisson", seed=seed)
    decision = fixed(batch, replicas, load)
    result = simulate(
        spec, rates, lambda now, obs: (decision, load), profiles={"s": profile}, arrivals=arrivals,  # type: ignore[arg-type]
        settings=SimSettings(on_late="serve", queue_limit=1 << 20), seed=seed,
    )
    lat = result.latency_ms  # every request is served (on_late="serve", no queue limit), in arrival order
    if len(lat) == len(arrivals):
        lat = lat[arrivals >= 10.0]  # leave the first 10 s out
    return float(np.percentile(lat, 99))


def model_p99(spread: float, batch: int, replicas: int, load: float) -> float:
    p = profile_for(spread, [batch]).point("v", batch, 1.0)
    return float(stage_p99_ms(load, replicas, batch, p.throughput_rps, p.p50_ms, p.p99_ms, MAX_BATCH_TIME_MS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=int, default=0, help="simulated seconds per point (default 200, quick 80)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    seconds = args.seconds or (80 if args.quick else 200)
    rhos = (0.3, 0.6, 0.85) if args.quick else (0.2, 0.4, 0.6, 0.75, 0.85, 0.92)
    batches = (1, 4) if args.quick else (1, 2, 4, 8)
    replicas = (1, 3) if args.quick else (1, 2, 4)
    spreads = (1.2, 2.0) if args.quick else (1.1, 1.5, 2.5)
    rows = []
    t0 = time.perf_counter()
    print(f"{'spread':>6} {'batch':>5} {'repl':>4} {'rho':>5} {'load':>7} {'model':>8} {'sim':>8} {'ratio':>6}")
    for spread in spreads:
        for b in batches:
            for n in replicas:
                cap = n * profile_for(spread, [b]).point("v", b, 1.0).throughput_rps
                for rho in rhos:
                    load = rho * cap
                    m = model_p99(spread, b, n, load)
                    s = simulated_p99(spread, b, n, load, seconds, args.seed)
                    rows.append((spread, b, n, rho, load, m, s))
                    print(f"{spread:>6.2f} {b:>5} {n:>4} {rho:>5.2f} {load:>7.1f} {m:>8.1f} {s:>8.1f} {m / s:>6.2f}",
                          flush=True)
    print(f"\n{len(rows)} points, {seconds} simulated s each, {time.perf_counter() - t0:.0f} s wall")
    print("model / simulated p99, by utilisation (>1: conservative)")
    for rho in rhos:
        r = [m / s for (_, _, _, rr, _, m, s) in rows if rr == rho]
        print(f"  rho {rho:.2f}: median {statistics.median(r):.2f}  min {min(r):.2f}  max {max(r):.2f}")
    every = [m / s for (*_, m, s) in rows]
    print(f"  all:      median {statistics.median(every):.2f}  min {min(every):.2f}  max {max(every):.2f}")
    bad = [row for row in rows if row[5] < 0.95 * row[6]]
    print(f"optimistic by more than 5 %: {len(bad)} of {len(rows)} points")
    for spread, b, n, rho, _, m, s in bad:
        print(f"  spread {spread:g} batch {b} replicas {n} rho {rho:.2f}: model {m:.1f} ms < simulated {s:.1f} ms "
              f"({(1 - m / s) * 100:.0f} % short)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
