"""Solver benchmark: solve time of the default path (exact DP) and of CBC on random instances, and whether they
agree with each other and with exhaustive enumeration.

    .venv/bin/python benchmarks/solver.py            # 20 instances per size (takes a while: CBC is slow at 10×10)
    .venv/bin/python benchmarks/solver.py --quick    # 5 instances per size, CBC limited to 5 s

Instances (`adapter.decision.solvers.instances.random_problem`): stages 1, 2, 3, 5, 8, 10 × variants 2, 5, 10, plus the
IPA-sized 5 × 6; each stage has 6 batch sizes × 8 core choices and up to 32 replicas, a realistic latency model,
and load, SLO and budget drawn around what a middle variant needs (some instances are infeasible: both solvers
must then return a degraded decision). Times are wall-clock for the whole `solve` call (candidate tables, search,
decision), on whatever else the machine is doing (the load average is printed with the table), and CPU time
(`cpu` columns, median ms), which does not count waiting for a core and so is what an idle core would take.

Exhaustive search enumerates every variant, batch, cores and replica count of every stage (no pruning, no
lemma) where the space has at most --exhaustive-max combinations, and checks the default path's objective;
"enumerated" does the same over every (variant, batch, cores) with only the replica counts whose latency
(queueing included, `adapter.decision.stage_latency`) beats every smaller count's (the reduction proved in
docs/formulation.md), which reaches larger instances.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from adapter.decision.model import Decision
from adapter.decision.problem import Problem
from adapter.decision.solvers import solve
from adapter.decision.solvers.instances import random_problem
from adapter.decision.stage_latency import stage_p99_ms

SIZES = [(s, v) for s in (1, 2, 3, 5, 8, 10) for v in (2, 5, 10)] + [(5, 6)]


@dataclass
class Row:
    stages: int
    variants: int
    exact_ms: list[float] = field(default_factory=list)
    exact_cpu: list[float] = field(default_factory=list)
    cbc_ms: list[float] = field(default_factory=list)
    cbc_cpu: list[float] = field(default_factory=list)
    agree: int = 0
    compared: int = 0
    cbc_timeouts: int = 0
    exact_timeouts: int = 0
    feasible: int = 0
    exhaustive_agree: int = 0
    exhaustive_checked: int = 0
    fewest_agree: int = 0
    fewest_checked: int = 0


def exhaustive(problem: Problem, limit: int, every_count: bool = True) -> float | None | str:
    """The optimum by enumerating every combination (None: infeasible; "skip": more than `limit` of them).

    `every_count`: every replica count from 1 to max_replicas; otherwise only the counts whose queueing-aware
    latency beats every smaller count's (the reduction the solvers rely on, docs/formulation.md).
    """
    stages = []
    w = problem.weights
    load = problem.load_rps
    for t in problem.stages:
        col = t.columns
        n = np.arange(1, t.max_replicas + 1, dtype=float)[None, :]
        thr, cores, batch = (c[:, None] for c in (col.throughput, col.cores, col.batch))
        ok = (n * thr >= problem.required_rps * (1 - 1e-9)) & (n <= t.max_replicas)
        latency = stage_p99_ms(load, n, batch, thr, col.p50[:, None], col.p99[:, None], t.max_batch_time_ms,
                               col.queued[:, None])
        ok &= np.isfinite(latency)
        if not every_count:  # only the counts faster than every smaller one (the reduction the solvers use)
            shown = np.where(ok, latency, np.inf)
            before = np.minimum.accumulate(np.concatenate((np.full((len(shown), 1), np.inf), shown[:, :-1]), axis=1),
                                           axis=1)
            ok &= shown < before * (1 - 1e-12)
        acc = np.broadcast_to(col.accuracy[:, None] / 100.0, ok.shape)
        cost = w.beta * n * cores + w.delta * batch + w.energy * load * cores / thr
        rows = [np.broadcast_to(a, ok.shape)[ok] for a in (latency, n * cores, acc, cost)]
        if len(rows[0]) == 0:
            return None
        stages.append(rows)
    if math.prod(len(s[0]) for s in stages) > limit:
        return "skip"
    product = problem.accuracy == "product"
    # every combination of all stages but the last, then the last stage in chunks of that prefix
    lat, k, acc, cost = np.zeros(1), np.zeros(1), np.ones(1) if product else np.zeros(1), np.zeros(1)
    for sl, sk, sa, sc in stages[:-1]:
        lat = (lat[:, None] + sl[None, :]).ravel()
        k = (k[:, None] + sk[None, :]).ravel()
        acc = (acc[:, None] * sa[None, :] if product else acc[:, None] + sa[None, :]).ravel()
        cost = (cost[:, None] + sc[None, :]).ravel()
    sl, sk, sa, sc = stages[-1]
    best: float | None = None
    step = max(1, 2_000_000 // len(sl))
    for i in range(0, len(lat), step):
        cl = lat[i : i + step, None] + sl[None, :]
        ck = k[i : i + step, None] + sk[None, :]
        ca = (
            acc[i : i + step, None] * sa[None, :]
            if product
            else (acc[i : i + step, None] + sa[None, :]) / len(stages)
        )
        value = w.alpha * ca - (cost[i : i + step, None] + sc[None, :])
        ok = (cl <= problem.latency_limit_ms * (1 + 1e-9) + 1e-9) & (
            ck <= problem.budget_cores * (1 + 1e-9) + 1e-9
        )
        if ok.any():
            v = float(value[ok].max())
            best = v if best is None else max(best, v)
    return best


def timed(problem: Problem, solver: str, limit: float) -> tuple[Decision, float, float]:
    """The decision, its wall-clock time and its CPU time (ms); CPU time does not count waiting for a core."""
    start, cpu = time.perf_counter(), time.process_time()
    d = solve(problem, solver=solver, max_seconds=limit)  # type: ignore[arg-type]
    return d, (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 instances per size, CBC limited to 5 s")
    ap.add_argument("--instances", type=int, help="instances per size (default 20, quick 5)")
    ap.add_argument("--cbc-limit", type=float, help="CBC time limit per instance, s (default 30, quick 5)")
    ap.add_argument("--exact-limit", type=float, default=30.0, help="exact solver time limit, s")
    ap.add_argument("--exhaustive-max", type=int, default=30_000_000, help="largest space enumerated")
    ap.add_argument("--no-cbc", action="store_true", help="time the default path only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", help="only these stages×variants, e.g. 5x6,10x10 (default: all)")
    args = ap.parse_args(argv)
    sizes = SIZES if not args.sizes else [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    count = args.instances or (5 if args.quick else 20)
    cbc_limit = args.cbc_limit or (5.0 if args.quick else 30.0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print(
        f"{count} instances per size, 6 batch sizes × 8 core choices, up to 32 replicas; CBC limit {cbc_limit:g} s; "
        f"load average {load:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    print(header(args.no_cbc), flush=True)
    rows = []
    for stages, variants in sizes:
        row = Row(stages, variants)
        for i in range(count):
            seed = args.seed * 1_000_003 + stages * 10_000 + variants * 100 + i
            problem = random_problem(seed, stages, variants)
            d, ms, cpu = timed(problem, "auto", args.exact_limit)
            row.exact_ms.append(ms)
            row.exact_cpu.append(cpu)
            row.exact_timeouts += d.status == "timeout"
            row.feasible += d.status != "degraded"
            if not args.no_cbc:
                c, cms, ccpu = timed(problem, "mip", cbc_limit)
                row.cbc_ms.append(cms)
                row.cbc_cpu.append(ccpu)
                if c.status == "timeout":
                    row.cbc_timeouts += 1
                elif d.status != "timeout":
                    row.compared += 1
                    same = d.status == c.status and (
                        d.status == "degraded"
                        or math.isclose(d.objective.value, c.objective.value, rel_tol=1e-7, abs_tol=1e-7)
                    )
                    row.agree += same
            for every, attr in ((True, "exhaustive"), (False, "fewest")):
                truth = exhaustive(problem, args.exhaustive_max, every_count=every)
                if truth == "skip":
                    continue
                setattr(row, f"{attr}_checked", getattr(row, f"{attr}_checked") + 1)
                if truth is None:
                    good = d.status == "degraded"
                else:
                    good = d.status == "optimal" and math.isclose(
                        d.objective.value, float(truth), rel_tol=1e-7, abs_tol=1e-7
                    )
                setattr(row, f"{attr}_agree", getattr(row, f"{attr}_agree") + good)
        rows.append(row)
        print(line(row, args.no_cbc), flush=True)
    print()
    print(summary(rows))
    ok = all(
        r.exhaustive_agree == r.exhaustive_checked
        and r.fewest_agree == r.fewest_checked
        and r.agree == r.compared
        for r in rows
    )
    return 0 if ok else 1


def header(no_cbc: bool) -> str:
    h = f"{'stages':>6} {'variants':>8} {'options':>7} {'feasible':>8} | {'exact median':>12} {'p99':>6} {'cpu':>6}"
    if not no_cbc:
        h += f" | {'CBC median':>10} {'p99':>6} {'cpu':>6} {'timeouts':>8} | {'agree':>7}"
    return h + f" | {'exhaustive':>10} {'enumerated':>10}"


def line(r: Row, no_cbc: bool) -> str:
    n = len(r.exact_ms)
    s = (
        f"{r.stages:>6} {r.variants:>8} {r.variants * 48:>7} {r.feasible:>4}/{n:<3} | "
        f"{statistics.median(r.exact_ms):>9.1f} ms {pct(r.exact_ms, 99):>6.0f} {statistics.median(r.exact_cpu):>6.1f}"
    )
    if not no_cbc:
        s += (
            f" | {statistics.median(r.cbc_ms):>7.0f} ms {pct(r.cbc_ms, 99):>6.0f} {statistics.median(r.cbc_cpu):>6.0f}"
            f" {r.cbc_timeouts:>8} | {r.agree:>3}/{r.compared:<3}"
        )
    ex = f"{r.exhaustive_agree}/{r.exhaustive_checked}" if r.exhaustive_checked else "too big"
    fe = f"{r.fewest_agree}/{r.fewest_checked}" if r.fewest_checked else "too big"
    return s + f" | {ex:>10} {fe:>10}"


def summary(rows: list[Row]) -> str:
    by = {(r.stages, r.variants): r for r in rows}
    out = []
    for (s, v), target in (((5, 6), 50.0), ((3, 5), 100.0), ((10, 10), 200.0)):
        if (s, v) not in by:
            continue
        r = by[(s, v)]
        med, cpu = statistics.median(r.exact_ms), statistics.median(r.exact_cpu)
        out.append(
            f"{s} stages × {v} variants: median {med:.1f} ms wall ({cpu:.1f} ms CPU), p99 {pct(r.exact_ms, 99):.0f} ms "
            f"(target median < {target:g} ms: {'met' if med < target else 'MISSED'} wall, "
            f"{'met' if cpu < target else 'MISSED'} CPU)"
        )
    checked = sum(r.exhaustive_checked for r in rows)
    agree = sum(r.exhaustive_agree for r in rows)
    out.append(
        f"default path equal to exhaustive search (every replica count) on {agree}/{checked} instances where it finished"
    )
    checked = sum(r.fewest_checked for r in rows)
    agree = sum(r.fewest_agree for r in rows)
    out.append(
        f"default path equal to enumeration of every (variant, batch, cores) on {agree}/{checked} instances where it finished"
    )
    compared = sum(r.compared for r in rows)
    if compared:
        out.append(
            f"default path equal to CBC on {sum(r.agree for r in rows)}/{compared} instances CBC finished"
        )
    timeouts = sum(r.exact_timeouts for r in rows)
    out.append(f"default path time limit hit on {timeouts} instance{'s' if timeouts != 1 else ''}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
