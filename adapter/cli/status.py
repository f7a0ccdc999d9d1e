"""`ipa status`: what the local clusters on this machine run, read from their state files.

A running cluster (`ipa up`) rewrites `<IPA_HOME or ./.ipa>/<pipeline>/state.json` whenever it changes; this
command prints it as a table (or as JSON with `--json`), without talking to the cluster. Exit status 0 when a
live cluster was shown, 1 when there is none (or only stale state files of killed runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adapter.errors import UsageError
from adapter.executors.local.state import ClusterState, find_states, ipa_home, read_state, state_path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("status", help="show the local clusters: stages, replicas, cores, variants",
                              description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("pipeline", nargs="?", help="only this pipeline (default: every one found)")
    p.add_argument("--home", type=Path, default=None, help="where clusters keep their state (default: $IPA_HOME or ./.ipa)")
    p.add_argument("--json", action="store_true", help="print the state files' JSON")
    p.set_defaults(func=run)


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def format_state(state: ClusterState, now: float) -> str:
    """The human-readable table of one cluster."""
    head = (f"pipeline {state.pipeline}: {sum(len(s.replicas) for s in state.stages)} replica(s), "
            f"{state.cores:g} cores ({state.cpu_limit}), owner pid {state.owner_pid}, "
            f"updated {_age(now - state.updated_at)}")
    lines = [head]
    if state.stale:
        lines.append(f"  STALE: pid {state.owner_pid} is gone; this is what it ran when it was killed")
    if state.router_url:
        lines.append(f"  endpoint: {state.router_url}/v2/models/{state.pipeline}/infer")
    if state.crashes:
        lines.append(f"  replica crashes since start: {state.crashes}")
    if state.unresponsive:
        lines.append(f"  replicas replaced since start for not answering: {state.unresponsive}")
    cols = ("stage", "replica", "phase", "pid", "variant", "batch", "cores", "threads", "in-flight", "url", "metrics")
    rows = [cols]
    for s in state.stages:
        shares = ", ".join(f"{v} {x:.0%}" for v, x in s.load_shares.items())
        if not s.replicas:
            rows.append((s.name, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"))
        for r in s.replicas:
            rows.append((s.name, r.id, r.phase + (f" (restart {r.restarts})" if r.restarts else ""), str(r.pid or "-"),
                         r.variant, str(r.batch), f"{r.cores:g}", str(r.threads), str(r.outstanding), r.url,
                         r.metrics_url))
        if shares:
            lines.append(f"  {s.name} load shares: {shares}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for failure in state.last_failures:
        lines.append(f"  last apply failed: {failure}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    home = args.home if args.home is not None else ipa_home()
    paths = [state_path(args.pipeline, home)] if args.pipeline else find_states(home)
    states: list[ClusterState] = []
    for path in paths:
        try:
            states.append(read_state(path))
        except FileNotFoundError:
            continue
        except ValueError as e:
            raise UsageError(f"{path}: not a cluster state file ({str(e).splitlines()[0]})") from None
    if not states:
        what = f"pipeline {args.pipeline!r}" if args.pipeline else "local cluster"
        print(f"no {what} running (no state file under {home})")
        return 1
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in states], indent=2))
    else:
        now = time.time()
        print("\n\n".join(format_state(s, now) for s in states))
    return 0 if any(not s.stale for s in states) else 1
