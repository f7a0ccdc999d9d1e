"""How fast the simulator replays a trace: a 20-minute window per policy, and a day-long trace.

    .venv/bin/python benchmarks/simulator.py [--graph inference_graphs/video-monitoring.yaml]
        [--trace-file ../shared/data/traces/twitter.tbz2] [--policies joint,ipa,...] [--day-policy joint]
        [--skip-day]

The 20-minute window is IPA's bursty window of the Twitter trace (divided by 8) when the trace file is there,
else the synthetic bursty shape; the day is 86,400 s of the Twitter trace from the bursty window's start,
divided by 8 (or the synthetic fluctuating shape stretched to a day). Prints requests, wall time and simulated
requests per second per run. Target: under 10 s per policy for 20 minutes, minutes for a day.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from adapter.sim.simulator import known_policies, simulate
from adapter.spec import load_spec
from adapter.workloads.traces import PRESETS, Trace, read_trace, synthetic_trace, workload_from_spec

ROOT = Path(__file__).resolve().parents[1]
TWITTER = ROOT.parent / "shared" / "data" / "traces" / "twitter.tbz2"


def _window(trace_file: Path | None) -> Trace:
    if trace_file is not None and trace_file.exists():
        return workload_from_spec("bursty", trace_file=trace_file)
    return synthetic_trace("bursty", 1200, seed=0)


def _day(trace_file: Path | None) -> Trace:
    if trace_file is not None and trace_file.exists():
        start = PRESETS["bursty"].windows[0][0]
        return read_trace(trace_file, start, 86_400).scaled(1 / 8)
    return synthetic_trace("fluctuating", 86_400, seed=0)


def _run(label: str, spec_path: Path, trace: Trace, policy: str, predictor: str) -> None:
    spec = load_spec(spec_path, require_profiles=True)
    t0 = time.perf_counter()
    result = simulate(spec, trace, policy, predictor=predictor, seed=0)
    wall = time.perf_counter() - t0
    n = int(result.frame["load"].sum())
    print(f"{label:<8} {policy:<16} {len(trace):>6} s {n:>8} req {wall:>7.2f} s wall "
          f"(adapter {result.decide_s:>6.2f} s, {len(result.ticks):>5} decisions; simulation {wall - result.decide_s:>6.2f} s,"
          f" {n / max(wall - result.decide_s, 1e-9):>6.0f} req/s)  {len(trace) / wall:>6.0f}x real time", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--graph", default=str(ROOT / "inference_graphs" / "video-monitoring.yaml"))
    ap.add_argument("--trace-file", default=str(TWITTER))
    ap.add_argument("--policies", default=",".join(known_policies()))
    ap.add_argument("--predictor", default="reactive")
    ap.add_argument("--day-policy", default="joint")
    ap.add_argument("--skip-day", action="store_true")
    args = ap.parse_args()
    trace_file = Path(args.trace_file) if args.trace_file else None
    spec_path = Path(args.graph)
    window = _window(trace_file)
    print(f"graph {spec_path.name}; 20-minute window {window.name}: mean {window.mean_rps:.1f} rps, "
          f"peak {window.peak_rps:.1f} rps")
    for policy in [p for p in args.policies.split(",") if p]:
        _run("20 min", spec_path, window, policy, args.predictor)
    if not args.skip_day:
        day = _day(trace_file)
        print(f"day trace {day.name}: mean {day.mean_rps:.1f} rps, peak {day.peak_rps:.1f} rps")
        _run("1 day", spec_path, day, args.day_policy, args.predictor)


if __name__ == "__main__":
    main()
