"""Simulator fidelity: one short bursty trace through the real local cluster and through the simulator.

    .venv/bin/python benchmarks/fidelity.py [--graph inference_graphs/resnet.yaml] [--trace synthetic:bursty]
        [--duration 120] [--peak-rps R] [--budget-cores C] [--interval 5] [--seeds 0,1] [--out DIR]

Per seed, the demo's run (`adapter.live.demo.run_demo`): the pipeline up on this machine with the joint policy and the
reactive predictor, the trace replayed open loop, then the same arrivals simulated with the same policy and
predictor (`simulated`) and with the live decisions replayed (`replayed`). Prints, per seed and on average, how
far apart the p99 latency, the drops and the cores are, and how often the live adapter switched a stage's variant
(`switches`: a stage whose variants in force changed between two applied decisions; in brackets the decisions that
changed the deployment). Targets: p99 within 20 %, cores equal. A seed given twice (`--seeds 0,0`) is run twice.

The figures depend on how busy the machine is: the load average before and after each run is printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

import numpy as np

from adapter.control.service import DecisionRecord
from adapter.live.demo import DemoResult, DemoSettings, run_demo

ROOT = Path(__file__).resolve().parents[1]


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def variant_switches(records: list[DecisionRecord]) -> tuple[int, int]:
    """(variant switches, deployment changes) of a live run: a switch is a stage whose set of variants in force
    differs from the previous applied decision's; a change is an applied decision after the first (any trigger)."""
    switches = changes = 0
    last: dict[str, frozenset[str]] | None = None
    for r in records:
        if r.outcome != "applied" or r.in_force is None:
            continue
        now = {st.name: frozenset(g.variant for g in st.replicas if g.count) for st in r.in_force}
        if last is not None:
            changes += 1
            switches += sum(1 for name, variants in now.items() if name in last and last[name] != variants)
        last = now
    return switches, changes


def _row(seed: int, r: DemoResult, before: str, after: str) -> str:
    f = r.fidelity
    switches, changes = variant_switches(r.run.decisions)
    return (f"{seed:>4} {len(r.run.plan):>6} {f.p99_real_ms:>8.0f} {f.p99_sim_ms:>8.0f} {f.p99_error_pct:>+7.1f} "
            f"{f.p99_replayed_ms:>8.0f} {f.p99_replayed_error_pct:>+7.1f} {f.drop_real_pct:>7.2f} "
            f"{f.drop_sim_pct:>7.2f} {f.cores_real:>6.2f} {f.cores_sim:>6.2f} {f.decided_equal_pct:>6.0f} "
            f"{f'{switches} ({changes})':>9}   {before} -> {after}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--graph", type=Path, default=ROOT / "inference_graphs" / "resnet.yaml")
    ap.add_argument("--trace", default="synthetic:bursty")
    ap.add_argument("--trace-file", type=Path)
    ap.add_argument("--duration", type=int, default=120, help="seconds of load per run (default 120)")
    ap.add_argument("--peak-rps", type=float, help="peak load (default: the demo's)")
    ap.add_argument("--budget-cores", type=float, help="cores the pipeline may use (default: the demo's)")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--policy", default="joint")
    ap.add_argument("--predictor", default="reactive")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, one live run each (default 0)")
    ap.add_argument("--models", type=Path, default=ROOT / "build" / "models")
    ap.add_argument("--profiles", choices=("auto", "here", "shipped"), default="auto",
                    help="as `ipa demo --profiles` (default auto: each stage's profile is spot-checked on this "
                         "machine and measured here, into build/profiles, when none agrees)")
    ap.add_argument("--out", type=Path, help="keep each run's report in OUT/seed-N (default: a temporary folder)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    with tempfile.TemporaryDirectory(prefix="ipa-fidelity-") as tmp:
        base = args.out or Path(tmp)
        results: list[DemoResult] = []
        rows: list[str] = []
        for i, seed in enumerate(seeds):
            folder = f"seed-{seed}" if seed not in seeds[:i] else f"seed-{seed}-run-{seeds[:i].count(seed) + 1}"
            settings = DemoSettings(graph=args.graph, trace=args.trace, trace_file=args.trace_file,
                                    duration_s=args.duration, peak_rps=args.peak_rps, budget_cores=args.budget_cores,
                                    policy=args.policy,
                                    predictor=args.predictor, interval_s=args.interval, seed=seed,
                                    out=base / folder, models=args.models, home=Path(tmp) / "ipa",
                                    profiles=args.profiles)
            before = _load_average()
            result = asyncio.run(run_demo(settings, progress=lambda m: print(m, flush=True)))
            results.append(result)
            rows.append(_row(seed, result, before, _load_average()))
            print("\n".join(result.lines()), flush=True)

        r0 = results[0]
        print(f"\nsimulator fidelity: {r0.spec.name}, {r0.trace.name}, {args.policy}/{args.predictor}, a decision "
              f"every {args.interval:g} s, budget {r0.spec.budget_cores:g} cores, CPU limits {r0.run.cpu_limit}, "
              f"{os.cpu_count()} CPUs")
        print(f"{'seed':>4} {'reqs':>6} {'p99 real':>8} {'p99 sim':>8} {'err %':>7} {'p99 rep':>8} {'err %':>7} "
              f"{'drop% r':>7} {'drop% s':>7} {'cores r':>6} {'cores s':>6} {'same %':>6} {'switches':>9}   load average")
        for row in rows:
            print(row)
        if len(results) > 1:
            f = [r.fidelity for r in results]
            print(f"mean {'':>6} {np.mean([x.p99_real_ms for x in f]):>8.0f} {np.mean([x.p99_sim_ms for x in f]):>8.0f} "
                  f"{np.mean([x.p99_error_pct for x in f]):>+7.1f} {np.mean([x.p99_replayed_ms for x in f]):>8.0f} "
                  f"{np.mean([x.p99_replayed_error_pct for x in f]):>+7.1f} "
                  f"{np.mean([x.drop_real_pct for x in f]):>7.2f} {np.mean([x.drop_sim_pct for x in f]):>7.2f} "
                  f"{np.mean([x.cores_real for x in f]):>6.2f} {np.mean([x.cores_sim for x in f]):>6.2f} "
                  f"{np.mean([x.decided_equal_pct for x in f]):>6.0f}")
        print("targets: p99 within 20 % of the real one (err %), cores equal (same %: intervals whose decided cores "
              "agree; cores r/s: mean cores held). p99 rep: the simulator running the live decisions. switches: live variant "
              "switches (decisions that changed the deployment).")


if __name__ == "__main__":
    main()
