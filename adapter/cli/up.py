"""`ipa up` and `ipa down`: run a pipeline on this machine with its adapter, and stop it.

    ipa up GRAPH.yaml [--policy P] [--predictor NAME] [--port N] [--adapter-port N] [--models DIR]
                      [--prometheus URL] [--interval S] [--scale-down-after N] [--dry-run] [--home DIR]
    ipa down [PIPELINE] [--home DIR] [--timeout S]

`up` builds the demo models the stages need, starts the router, one `mlserver start` replica per decided
replica (each in its CPU cgroup), the adaptation loop and its REST API, prints where everything is, logs one
line per decision, and runs until Ctrl-C or SIGTERM, then stops all of it (`adapter.control.embedded`).
`down` finds what `up` started under `$IPA_HOME` (its `up.json`, or a cluster's `state.json`), sends SIGTERM,
waits for a clean stop, and kills what is left after `--timeout` (removing the cgroups it leaves).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from adapter.control.embedded import UP_FILE, EmbeddedPipeline, UpSettings
from adapter.control.service import DecisionRecord
from adapter.decision.policies import POLICIES
from adapter.errors import UsageError
from adapter.executors.cgroups import process_alive
from adapter.executors.local.signals import cancel_on_signals
from adapter.executors.local.state import STATE_FILE, ipa_home
from adapter.forecast.predictors import PREDICTOR_NAMES
from adapter.spec import load_spec


def register(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser(
        "up", help="run a pipeline here: replicas, router, adapter and its REST API, until Ctrl-C",
        description="Build the demo models the graph needs, start the local cluster, the pipeline router and the "
        "adapter (every interval: observe, predict, decide, apply), print the V2 endpoint, the adapter API and "
        "the metrics, and run until Ctrl-C or SIGTERM (or `ipa down`).")
    up.add_argument("graph", type=Path, help="inference graph YAML (e.g. inference_graphs/resnet.yaml)")
    up.add_argument("--policy", default="joint", help=f"one of: {', '.join(POLICIES)} (default joint)")
    up.add_argument("--predictor", default="reactive",
                    help=f"one of: {', '.join(n for n in PREDICTOR_NAMES if n != 'oracle')} (default reactive)")
    up.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="the router's port: the V2 endpoint (default 8080)")
    up.add_argument("--adapter-port", type=int, default=8090, help="the adapter API's port (default 8090)")
    up.add_argument("--models", type=Path, default=Path("build/models"),
                    help="where demo families are, one folder per family, built there when missing; a family already there "
                         "is used as it is, never written (default build/models)")
    up.add_argument("--prometheus", metavar="URL", help="read metrics from this Prometheus server (it must scrape "
                    "<home>/<pipeline>/prometheus-targets.json) instead of scraping the replicas directly")
    up.add_argument("--interval", type=float, help="seconds between decisions (default: the graph's interval_s)")
    up.add_argument("--scale-down-after", type=int, default=3, metavar="N",
                    help="intervals a lower need must hold before resources are given back (default 3)")
    up.add_argument("--dry-run", action="store_true", help="start no replica: decide and record only")
    up.add_argument("--home", type=Path, help="where state is kept (default $IPA_HOME or ./.ipa)")
    up.set_defaults(func=run_up)

    down = subparsers.add_parser(
        "down", help="stop what `ipa up` started (every pipeline, or one)",
        description="Send SIGTERM to the `ipa up` process of each pipeline found under the state folder, wait "
        "for it to stop its replicas, and kill what is left after --timeout.")
    down.add_argument("pipeline", nargs="?", help="only this pipeline (default: every one found)")
    down.add_argument("--home", type=Path, help="where state is kept (default $IPA_HOME or ./.ipa)")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds to wait before killing (default 60)")
    down.set_defaults(func=run_down)


# -- up ------------------------------------------------------------------------------------------------------


def format_record(r: DecisionRecord) -> str:
    """One log line per decision."""
    d = r.decision
    clock = time.strftime("%H:%M:%S", time.localtime(r.time))
    seen = ""
    if r.observed is not None and r.observed.available:
        p99 = f", p99 {r.observed.p99_ms:.0f} ms" if r.observed.p99_ms is not None else ""
        seen = f"seen {r.observed.load_rps:.1f} rps{p99}; "
    predicted = f"predicted {r.predicted_load_rps:.1f} rps; " if r.predicted_load_rps is not None else ""
    stages = "; ".join(f"{s.name}: " + ", ".join(f"{g.count}x {g.variant} b{g.batch} {g.cores:g}c" for g in s.replicas
                                                 if g.count) for s in d.stages)
    tail = f" ({r.reason})" if r.reason else ""
    return (f"[{clock}] decision {r.index} ({r.trigger}) {r.outcome}: {seen}{predicted}{stages} = {d.cores:g} cores, "
            f"{d.status}{tail}")


def run_up(args: argparse.Namespace) -> int:
    if args.policy not in POLICIES:
        raise UsageError(f"unknown policy {args.policy!r}; one of {', '.join(POLICIES)}")
    if args.predictor not in PREDICTOR_NAMES or args.predictor == "oracle":
        raise UsageError(f"predictor {args.predictor!r}: one of reactive, ewma, lstm (oracle needs the future)")
    if args.interval is not None and args.interval <= 0:
        raise UsageError(f"--interval must be > 0, got {args.interval}")
    spec = load_spec(args.graph, require_profiles=True)
    settings = UpSettings(host=args.host, port=args.port, adapter_port=args.adapter_port, policy=args.policy,
                          predictor=args.predictor, interval_s=args.interval,
                          scale_down_intervals=args.scale_down_after, models=args.models,
                          prometheus=args.prometheus, dry_run=args.dry_run, home=args.home)

    async def main() -> None:
        cancel_on_signals()
        async with EmbeddedPipeline(spec, settings, on_record=lambda r: print(format_record(r), flush=True),
                                    progress=lambda m: print(m, flush=True)) as up:
            print(banner(up), flush=True)
            await up.wait()

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main())
    print("ipa up: stopped; nothing left running", flush=True)
    return 0


def banner(up: EmbeddedPipeline) -> str:
    spec, s = up.spec, up.settings
    made = " (new; set $IPA_TOKEN_FILE to bring your own)" if up.token_generated else ""
    lines = [
        f"ipa up: pipeline {spec.name} ({', '.join(st.name for st in spec.stages)}), policy {s.policy}, "
        f"predictor {s.predictor}, a decision every {spec.interval_s:g} s{' (DRY RUN: no replicas)' if s.dry_run else ''}",
        f"  V2 endpoint   {up.endpoint}" + (f"   (gRPC: {up.grpc_address})" if up.grpc_address else ""),
        f"  adapter API   {up.api_url}   (OpenAPI: {up.api_url}/docs; writes need the token)",
        f"  metrics       router {up.router_url}/metrics, adapter {up.api_url}/metrics, "
        f"replicas: `ipa status {spec.name}` / {up.home / spec.name / 'prometheus-targets.json'}",
        f"  token file    {up.token_file}{made}: writes send `Authorization: Bearer $(cat {up.token_file})`",
        f"  stop with Ctrl-C, or `ipa down {spec.name}`",
    ]
    return "\n".join(lines)


# -- down ----------------------------------------------------------------------------------------------------


def owners(home: Path, pipeline: str | None) -> dict[str, int]:
    """Per pipeline found under `home`, the pid of the process that runs it (`up.json`, else `state.json`)."""
    found: dict[str, int] = {}
    folders = [home / pipeline] if pipeline else sorted(p for p in home.glob("*") if p.is_dir())
    for folder in folders:
        for name in (UP_FILE, STATE_FILE):
            path = folder / name
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                data = json.loads(path.read_text())
                found[folder.name] = int(data["pid"] if name == UP_FILE else data["owner_pid"])
                break
    return found


def run_down(args: argparse.Namespace) -> int:
    home = args.home if args.home is not None else ipa_home()
    found = owners(home, args.pipeline)
    if not found:
        what = f"pipeline {args.pipeline!r}" if args.pipeline else "pipeline"
        print(f"no {what} running (nothing under {home})")
        return 1
    for pipeline, pid in found.items():
        if pid == os.getpid() or not process_alive(pid):
            print(f"{pipeline}: its process {pid} is gone; removing what it left")
        else:
            print(f"{pipeline}: stopping pid {pid} ...", flush=True)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + args.timeout
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if process_alive(pid):
                print(f"{pipeline}: pid {pid} still running after {args.timeout:g} s; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while process_alive(pid):
                    time.sleep(0.1)
        for name in (UP_FILE, STATE_FILE, "prometheus-targets.json"):
            with contextlib.suppress(FileNotFoundError):
                (home / pipeline / name).unlink()
        print(f"{pipeline}: stopped")
    from adapter.executors.cgroups import detect_cpu_controller

    with contextlib.suppress(Exception):
        removed = detect_cpu_controller().remove_stale()
        if removed:
            print(f"removed {len(removed)} cgroup(s) left by killed replicas")
    return 0
