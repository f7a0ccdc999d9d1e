"""The workload arguments every trace-driven command shares (`ipa load`, `ipa predictor`, `ipa experiment`):
`--trace SPEC [--trace-file FILE] [--start S] [--length L] [--scale F] [--seed N]`."""

from __future__ import annotations

import argparse

from adapter.workloads.traces import PRESETS, SYNTHETIC_SHAPES, Trace, workload_from_spec


def add_trace_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Add the workload arguments to `parser`; read them back with `trace_from_args`."""
    parser.add_argument(
        "--trace",
        required=required,
        metavar="SPEC",
        help=f"a trace file (one line of requests per second, .txt or .tbz2), a preset "
        f"({', '.join(PRESETS)}; needs --trace-file) or synthetic:SHAPE ({', '.join(SYNTHETIC_SHAPES)})",
    )
    parser.add_argument(
        "--trace-file", metavar="FILE", help="the Twitter trace the presets are cut from (e.g. twitter.tbz2)"
    )
    parser.add_argument("--start", type=int, default=0, metavar="S", help="first second of the window (default 0)")
    parser.add_argument("--length", type=int, metavar="L", help="window length in seconds (default: to the end)")
    parser.add_argument("--scale", type=float, default=1.0, metavar="F", help="multiply the load by F (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of synthetic traces and arrivals (default 0)")


def trace_from_args(args: argparse.Namespace) -> Trace:
    return workload_from_spec(
        args.trace,
        trace_file=args.trace_file,
        start=args.start,
        length=args.length,
        scale=args.scale,
        seed=args.seed,
    )
