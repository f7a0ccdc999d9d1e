"""`ipa demo`: the adaptive pipeline on this machine under a bursty load, measured beside the simulator's prediction.

    ipa demo [--graph inference_graphs/resnet.yaml] [--trace synthetic:bursty | bursty --trace-file twitter.tbz2]
             [--duration 150] [--peak-rps R] [--policy joint] [--predictor reactive] [--interval 5] [--out DIR]
    ipa demo runtime [--models build/models/resnet] ...     the runtime alone (`adapter.cli.runtime_demo`)

Builds the models the graph needs, brings the pipeline up (router, replicas in CPU cgroups, adapter), replays the
compressed bursty load through it, stops it, simulates the same arrivals, writes the report folder and prints
the table (`adapter.live.demo`). Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from adapter.cli import runtime_demo
from adapter.cli.up import format_record
from adapter.control.embedded import EmbeddedPipeline
from adapter.decision.policies import POLICIES
from adapter.errors import UsageError
from adapter.executors.local.signals import cancel_on_signals
from adapter.live.demo import DemoResult, DemoSettings, run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    d = DemoSettings()
    p = subparsers.add_parser(
        "demo",
        help="run the adaptive pipeline here under a bursty load; report it beside the simulator's prediction",
        description="Bring the pipeline up on this machine (router, one mlserver replica per decided replica in "
        "its CPU cgroup, the adapter deciding every --interval seconds), replay a bursty load compressed to "
        "--duration seconds through it, stop it, simulate the very same arrivals with the same policy and "
        "predictor, and write per-second CSVs, a summary table and plots (as `ipa experiment`) to --out, "
        "measured (real) beside simulated. `ipa demo runtime` is the runtime's own demo.")
    p.add_argument("--graph", type=Path, default=d.graph,
                   help=f"inference graph (default {d.graph}; inference_graphs/video-monitoring.yaml for the video "
                   "pipeline)")
    p.add_argument("--trace", default=d.trace, metavar="SPEC",
                   help="the load: synthetic:bursty (default), a preset (bursty, …; needs --trace-file) or a "
                   "trace file; compressed in time to --duration")
    p.add_argument("--trace-file", type=Path, metavar="FILE", help="the Twitter trace the presets are cut from")
    p.add_argument("--duration", type=int, default=d.duration_s, metavar="S",
                   help=f"seconds of load replayed (default {d.duration_s})")
    p.add_argument("--peak-rps", type=float, metavar="R",
                   help="the load at the peak of the burst (default: what the policy serves on half the core "
                   "budget, per the profiles)")
    p.add_argument("--budget-cores", type=float, metavar="C",
                   help="cores the pipeline may use (default: the graph's budget_cores, at most this machine's "
                   "cores less one, which the router, the adapter and the load generator need)")
    p.add_argument("--policy", default=d.policy, help=f"one of: {', '.join(POLICIES)} (default {d.policy})")
    p.add_argument("--predictor", default=d.predictor, help="reactive (default), ewma or lstm")
    p.add_argument("--interval", type=float, default=d.interval_s, metavar="S",
                   help=f"seconds between decisions (default {d.interval_s:g})")
    p.add_argument("--scale-down-after", type=int, default=d.scale_down_intervals, metavar="N",
                   help=f"intervals a lower need must hold before capacity is given back (default "
                   f"{d.scale_down_intervals})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the trace, arrivals and simulator (default 0)")
    p.add_argument("--out", type=Path, default=d.out, help=f"report folder (default {d.out})")
    p.add_argument("--models", type=Path, default=d.models,
                   help=f"where demo families are, one folder per family, built there when missing; a family already there is "
                        f"used as it is, never written (default {d.models})")
    p.add_argument("--repository", action="append", default=[], metavar="STAGE=DIR",
                   help="serve a stage from this built model repository instead of its demo family (repeatable)")
    p.add_argument("--home", type=Path, help="where the cluster keeps its state (default $IPA_HOME or ./.ipa)")
    p.add_argument("--profiles", choices=("auto", "here", "shipped"), default="auto",
                   help="what the adapter and the simulator plan with: the first profile a spot check on this machine "
                        "agrees with (the graph's or one shipped for another machine in profiles/machines), else "
                        "one measured here (auto, the default; a few minutes once, kept in build/profiles); one "
                        "measured here (here); the graph's unchecked (shipped)")
    p.add_argument("--quiet", action="store_true", help="no line per decision while it runs")
    p.set_defaults(func=run)
    runtime_demo.register(p.add_subparsers(dest="demo", metavar="{runtime}"))


def _repositories(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        stage, sep, path = item.partition("=")
        if not sep or not stage or not path:
            raise UsageError(f"--repository {item!r}: expected STAGE=DIR")
        if not Path(path).is_dir():
            raise UsageError(f"--repository {item!r}: {path} is not a folder")
        out[stage] = Path(path)
    return out


def run(args: argparse.Namespace) -> int:
    if args.duration < 10:
        raise UsageError(f"--duration: at least 10 seconds, got {args.duration}")
    if args.scale_down_after < 1:
        raise UsageError(f"--scale-down-after: at least 1, got {args.scale_down_after}")
    settings = DemoSettings(
        graph=args.graph, trace=args.trace, trace_file=args.trace_file, duration_s=args.duration,
        peak_rps=args.peak_rps, budget_cores=args.budget_cores, policy=args.policy, predictor=args.predictor, interval_s=args.interval,
        scale_down_intervals=args.scale_down_after, seed=args.seed, out=args.out, models=args.models,
        repositories=_repositories(args.repository), home=args.home, profiles=args.profiles)

    def say(line: str) -> None:
        print(line, flush=True)

    def up(pipe: EmbeddedPipeline) -> None:
        say(f"ipa demo: V2 endpoint {pipe.endpoint}; adapter API {pipe.api_url} (try {pipe.api_url}/status); "
            f"`ipa status {pipe.spec.name}` shows the replicas")

    async def main() -> DemoResult:
        cancel_on_signals()
        return await run_demo(settings, progress=say, on_up=up,
                              on_record=None if args.quiet else lambda r: say("  " + format_record(r)))

    result: DemoResult | None = None
    with contextlib.suppress(asyncio.CancelledError):
        result = asyncio.run(main())
    if result is None:
        print("ipa demo: stopped; nothing left running", file=sys.stderr)
        return 130
    print()
    for line in result.lines():
        print(line)
    return 0
