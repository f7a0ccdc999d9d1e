"""`ipa profile`: measure a stage's profile, import InfAdapter's published one, or show a profile's fit.

    ipa profile GRAPH.yaml [--stage S] [--variants V...] [--batch B...] [--cores C...] [--duration S] [--force]
    ipa profile import-infadapter CSV --out PROFILE [--sla MS]
    ipa profile fit PROFILE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from adapter.errors import UsageError
from adapter.profiling.profile import Profile
from adapter.profiling.reference import DEFAULT_SLA_MS, import_infadapter

ACTIONS = ("import-infadapter", "fit")
T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure, import or fit latency/throughput profiles",
        usage="ipa profile GRAPH.yaml [options] | ipa profile import-infadapter CSV --out PROFILE [--sla MS] | "
        "ipa profile fit PROFILE",
        description="Measure every (variant, batch, cores) point of a stage on a real replica in its own CPU "
        "limit and write the stage's profile CSV (resumable: measured points are skipped unless --force); or "
        "import InfAdapter's published capacity CSV; or fit and print the latency model of a profile.",
    )
    p.add_argument("target", metavar="GRAPH.yaml | import-infadapter | fit")
    p.add_argument("paths", nargs="*", metavar="CSV|PROFILE", help="the file import-infadapter / fit read")
    m = p.add_argument_group("measuring (ipa profile GRAPH.yaml)")
    m.add_argument("--stage", action="append", help="stage(s) to profile (default: every stage)")
    m.add_argument("--variants", nargs="+", help="variants to measure (default: the stage's)")
    m.add_argument("--batch", nargs="+", type=int, help="batch sizes (default: the stage's batch_sizes)")
    m.add_argument("--cores", nargs="+", type=float, help="core counts (default: the stage's cores)")
    m.add_argument("--duration", type=float, default=5.0, help="measuring window per point, s (default 5)")
    m.add_argument("--warmup", type=float, default=1.0, help="warm-up per point, s (default 1)")
    m.add_argument("--force", action="store_true", help="measure points already in the profile again")
    m.add_argument("--protocol", choices=("grpc", "rest"), default="grpc",
                   help="how requests reach the replica: V2 gRPC with raw tensors, as the router sends them "
                        "(default), or REST/JSON")
    m.add_argument("--models", type=Path, default=Path("build/models"),
                   help="where demo families are, built there if missing; a family already there is used as it is, never "
                        "written (default build/models)")
    m.add_argument("--out", type=Path, help="profile CSV to write (default: the stage's `profile`)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = p.add_argument_group("importing (ipa profile import-infadapter CSV --out PROFILE)")
    i.add_argument("--sla", type=float, default=DEFAULT_SLA_MS,
                   help=f"which of InfAdapter's SLA rows to import, ms (default {DEFAULT_SLA_MS})")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.target == "import-infadapter":
        return _import(args)
    if args.target == "fit":
        return _fit(args)
    if args.paths:
        raise UsageError(f"unexpected argument(s) {' '.join(args.paths)}; actions are {', '.join(ACTIONS)}")
    return _measure(args)


def _one_path(args: argparse.Namespace, what: str) -> Path:
    if len(args.paths) != 1:
        raise UsageError(f"{args.target} takes one {what} file, got {len(args.paths)}")
    return Path(args.paths[0])


def _import(args: argparse.Namespace) -> int:
    src = _one_path(args, "CSV")
    if args.out is None:
        raise UsageError("import-infadapter needs --out PROFILE (e.g. profiles/infadapter-resnet.csv)")
    result = import_infadapter(src, sla_ms=args.sla)
    result.profile.save(args.out)
    print(f"wrote {args.out}: {len(result.profile.points)} points of {', '.join(result.profile.variants())} "
          f"at SLA {args.sla:g} ms (machine {result.profile.machines()[0]})")
    for note in result.skipped:
        print(f"  skipped {note}")
    return 0


def fit_table(profile: Profile) -> str:
    """The fit of every variant: R² and worst relative error (leave-one-out) of p50, p99, throughput."""
    lines = [f"{'variant':<14} {'points':>6}  {'p50 R2':>7} {'err':>5}  {'p99 R2':>7} {'err':>5}  "
             f"{'thr R2':>7} {'err':>5}  p99 model (ms; b=batch, c=cores)"]
    for v in profile.variants():
        f = profile.fit(v)
        lines.append(
            f"{v:<14} {len(profile.rows(v)):>6}  {f.p50.r2:>7.3f} {f.p50.error:>5.0%}  {f.p99.r2:>7.3f} "
            f"{f.p99.error:>5.0%}  {f.period.r2:>7.3f} {f.period.error:>5.0%}  {f.p99.model.describe()}"
        )
    lines.append("err: worst relative error predicting each point from a fit without it (leave-one-out); "
                 "s(c) = (ceil(c)-c)/ceil(c), the throttled share of a CFS period")
    return "\n".join(lines)


def _fit(args: argparse.Namespace) -> int:
    profile = Profile.load(_one_path(args, "PROFILE"))
    print(f"{args.paths[0]}: {len(profile.points)} points, machine {', '.join(profile.machines())}")
    print(fit_table(profile))
    return 0


async def _cancel_on_sigterm(work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; SIGTERM cancels it like Ctrl-C does, so the replica and its cgroup are cleaned up."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def _measure(args: argparse.Namespace) -> int:
    # The profiler starts servers and builds models: imported only when measuring.
    from adapter.profiling.profiler import ProfilerSettings, profile_graph
    from adapter.spec import load_spec

    spec = load_spec(args.target)
    if args.duration <= 0 or args.warmup < 0:
        raise UsageError("--duration must be > 0 and --warmup >= 0")
    settings = ProfilerSettings(duration_s=args.duration, warmup_s=args.warmup, protocol=args.protocol)
    progress = not args.no_progress and (sys.stderr.isatty() or os.environ.get("IPA_PROGRESS") == "1")
    written = asyncio.run(
        _cancel_on_sigterm(profile_graph(
            spec, stages=args.stage, variants=args.variants, batches=args.batch, cores=args.cores,
            settings=settings, force=args.force, models_dir=args.models, out=args.out, progress=progress,
        ))
    )
    for path in written:
        prof = Profile.load(path)
        print(f"{path}: {len(prof.points)} points")
        print(fit_table(prof))
    return 0
