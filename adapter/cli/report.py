"""`ipa report DIR`: re-draw the plots and the summary table of a results folder from its CSVs."""

from __future__ import annotations

import argparse

from adapter.sim.report import render


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="re-render the plots and summary table of an experiment's results folder",
        description="Reads the per-second CSVs (and summary.csv, meta.json) of a results folder written by "
        "`ipa experiment` and draws overview.png, load/accuracy/cores/latency.png, tradeoff.png and summary.md "
        "again.",
    )
    p.add_argument("results", metavar="DIR", help="results folder")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    for path in render(args.results):
        print(path)
    return 0
