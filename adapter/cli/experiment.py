"""`ipa experiment`: replay one workload through a pipeline under several policies and compare them.

    ipa experiment inference_graphs/video-monitoring.yaml --trace bursty --trace-file twitter.tbz2 \\
        --policies joint,ipa,fa2-low,fa2-high,rim,vpa,model-switching,static --predictor lstm --out results/video
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import numpy as np

from adapter.cli.workload_args import add_trace_arguments, trace_from_args
from adapter.errors import UsageError
from adapter.forecast.predictors import PREDICTOR_NAMES
from adapter.sim.experiment import check_policies, run_experiment
from adapter.sim.simulator import SimSettings, known_policies
from adapter.sim.summary import summary_markdown
from adapter.spec import load_spec
from adapter.workloads.slo import DynamicSLO, read_bandwidth_log
from adapter.workloads.traces import ARRIVAL_KINDS, PRESETS, read_trace

HISTORY_S = 120
"""Seconds of load before the window handed to the predictors (the LSTM reads the last 120)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = SimSettings()
    p = subparsers.add_parser(
        "experiment",
        help="simulate several adaptation policies on the same workload and compare them (CSV, table, plots)",
        description="Replays the workload through the pipeline in the simulator once per policy, on the very "
        "same requests, and writes per-second CSVs, a summary table (summary.csv, summary.md) and plots "
        "(overview.png, load/accuracy/cores/latency.png, tradeoff.png) to --out.",
    )
    p.add_argument("graph", metavar="GRAPH.yaml", help="the inference graph (its profiles must exist)")
    add_trace_arguments(p)
    p.add_argument("--policies", required=True, metavar="P1,P2,…",
                   help=f"comma-separated policies; known: {', '.join(known_policies())}")
    p.add_argument("--predictor", default="lstm", choices=PREDICTOR_NAMES, help="load predictor (default lstm)")
    p.add_argument("--arrivals", choices=ARRIVAL_KINDS, default="poisson", help="arrivals within a second")
    p.add_argument("--bandwidth", metavar="LOG",
                   help="bandwidth log: each request's SLO is the graph's minus its network time (Sponge)")
    p.add_argument("--request-bytes", type=int, default=64 * 64 * 3 * 4, metavar="N",
                   help="request size for the network time with --bandwidth (default a 64x64 RGB float tensor)")
    p.add_argument("--cold-start", type=float, default=defaults.cold_start_s, metavar="S",
                   help=f"seconds before a new replica serves (default {defaults.cold_start_s:g})")
    p.add_argument("--switch-delay", type=float, default=defaults.switch_delay_s, metavar="S",
                   help="seconds an in-place variant switch takes, for variants without a row in the switch profile "
                        f"(profiles/switch.csv) (default {defaults.switch_delay_s:g})")
    p.add_argument("--resize-delay", type=float, default=defaults.resize_delay_s, metavar="S",
                   help=f"seconds an in-place core change takes (default {defaults.resize_delay_s:g})")
    p.add_argument("--service-time-deviations", type=float, default=defaults.service_time_deviations, metavar="K",
                   help="the runtime's service_time_deviations: mean deviations added to a replica's service-time "
                   f"estimate when judging deadlines (default {defaults.service_time_deviations:g}, the runtime's)")
    p.add_argument("--no-in-place", action="store_true",
                   help="replace replicas instead of changing them in place (cold start for every change)")
    p.add_argument("--title", help="title of the table and plots (default: graph and trace)")
    p.add_argument("--notes", default="", help="text put under the summary table (summary.md, meta.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="results folder (created)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    policies = check_policies(args.policies.split(","))
    for name in ("cold_start", "switch_delay", "resize_delay", "service_time_deviations"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    spec = load_spec(args.graph, require_profiles=True)
    trace = trace_from_args(args)
    budgets = None
    if args.bandwidth:
        if args.request_bytes <= 0:
            raise UsageError("--request-bytes must be > 0")
        budgets = DynamicSLO(read_bandwidth_log(args.bandwidth), spec.slo_ms, args.request_bytes).deadlines_ms
    settings = SimSettings(cold_start_s=args.cold_start, switch_delay_s=args.switch_delay,
                           resize_delay_s=args.resize_delay, in_place=not args.no_in_place,
                           service_time_deviations=args.service_time_deviations)
    summaries = run_experiment(
        spec, trace, policies, Path(args.out), predictor=args.predictor, seed=args.seed, settings=settings,
        arrival_kind=args.arrivals, title=args.title, progress=not args.quiet, budgets=budgets,
        history=_history(args), notes=_notes(args),
    )
    print(summary_markdown(summaries), end="")
    print(f"results in {args.out}")
    return 0


def _history(args: argparse.Namespace) -> np.ndarray | None:
    """The load of the `HISTORY_S` seconds before the window, when the trace has them: the adapter has been
    running before the experiment starts, so its predictors do not begin blind. None for synthetic shapes."""
    if args.trace in PRESETS and args.trace_file and args.start == 0:
        preset = PRESETS[args.trace]
        first, path, factor = preset.windows[0][0], args.trace_file, preset.scale * args.scale
    elif Path(args.trace).is_file() and args.start > 0:
        first, path, factor = args.start, args.trace, args.scale
    else:
        return None
    start = max(0, first - HISTORY_S)
    if first - start <= 0:
        return None
    return read_trace(path, start, first - start).rates * factor


def _notes(args: argparse.Namespace) -> str:
    """The user's notes, then the command that reproduces the results (options at their values)."""
    argv = ["ipa", "experiment", args.graph, "--trace", args.trace]
    if args.trace_file:
        argv += ["--trace-file", args.trace_file]
    for flag, value, default in (("--start", args.start, 0), ("--length", args.length, None),
                                 ("--scale", args.scale, 1.0), ("--seed", args.seed, 0),
                                 ("--arrivals", args.arrivals, "poisson"), ("--bandwidth", args.bandwidth, None)):
        if value != default:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    defaults = SimSettings()
    for flag, value, default in (("--cold-start", args.cold_start, defaults.cold_start_s),
                                 ("--switch-delay", args.switch_delay, defaults.switch_delay_s),
                                 ("--resize-delay", args.resize_delay, defaults.resize_delay_s),
                                 ("--service-time-deviations", args.service_time_deviations,
                                  defaults.service_time_deviations)):
        if value != default:
            argv += [flag, f"{value:g}"]
    if args.no_in_place:
        argv.append("--no-in-place")
    argv += ["--policies", args.policies, "--predictor", args.predictor, "--out", args.out]
    command = "Reproduce: `" + shlex.join(argv) + "`"
    return f"{args.notes.strip()}\n\n{command}" if args.notes.strip() else command
