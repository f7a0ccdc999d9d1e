"""`ipa load`: replay a workload against a V2 inference endpoint, open loop, and report what happened.

    ipa load --url http://127.0.0.1:8080 --model resnet --trace bursty --trace-file twitter.tbz2 \\
             --slo-ms 750 [--bandwidth report_bus_0001.log [--request-bytes N]] --out rows.csv
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from tqdm import tqdm

from adapter.cli.workload_args import add_trace_arguments, trace_from_args
from adapter.errors import UsageError
from adapter.workloads.inputs import INPUT_KINDS
from adapter.workloads.inputs import payload as request_payload
from adapter.workloads.loadgen import (
    RequestRecord,
    V2Payload,
    make_plan,
    run_load,
    summarize,
    write_records_csv,
)
from adapter.workloads.slo import DynamicSLO, FixedSLO, SLOSource, read_bandwidth_log
from adapter.workloads.traces import ARRIVAL_KINDS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "load",
        help="send V2 requests at a trace's arrival times (open loop) and report latency and deadlines",
        description="Open-loop load generator: each request is sent at its scheduled time whether or not "
        "earlier ones were answered, and its latency counts from that time. Writes one CSV row per request "
        "(--out) and prints a summary.",
    )
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", required=True, help="model (or pipeline) name: POST /v2/models/NAME/infer")
    add_trace_arguments(p)
    p.add_argument("--arrivals", choices=ARRIVAL_KINDS, default="poisson", help="arrivals within a second")
    p.add_argument("--slo-ms", type=float, help="latency SLO: sent as parameters.deadline_ms")
    p.add_argument(
        "--bandwidth", metavar="LOG", help="bandwidth log: deadline = SLO − network time of the request (Sponge)"
    )
    p.add_argument(
        "--request-bytes", type=int, metavar="N", help="request size for the network time (default: the body size)"
    )
    p.add_argument("--priority", type=int, help="parameters.priority of every request (lower is more urgent)")
    p.add_argument("--resolution", type=int, default=64, metavar="R", help="input tensor [1,3,R,R] (default 64)")
    p.add_argument("--inputs", choices=INPUT_KINDS, default="image",
                   help="what requests carry: random images [1,3,R,R] (default), speech (espeak-ng sentences, "
                        "16 kHz), English sentences or documents, French paragraphs (adapter.workloads.inputs)")
    p.add_argument("--question", action="store_true",
                   help="each request also carries parameters.question, answered by its text (for a QA stage)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="per-request timeout (default 30 s)")
    p.add_argument("--max-connections", type=int, default=1024, help="sockets open at once (default 1024)")
    p.add_argument("--relative-deadlines", action="store_true",
                   help="send only parameters.deadline_ms, counted by the server from its arrival stamp (default: "
                        "also the absolute deadline from each request's scheduled send, header ipa-deadline)")
    p.add_argument("--out", metavar="CSV", help="one row per request; the summary goes next to it as .json")
    p.set_defaults(func=_run)


def _slo(args: argparse.Namespace, payload: V2Payload) -> SLOSource | None:
    if args.bandwidth is None:
        if args.request_bytes is not None:
            raise UsageError("--request-bytes only matters with --bandwidth")
        return None if args.slo_ms is None else FixedSLO(args.slo_ms)
    if args.slo_ms is None:
        raise UsageError("--bandwidth needs --slo-ms: the deadline is the SLO minus the network time")
    size = args.request_bytes if args.request_bytes is not None else payload.size_bytes()
    return DynamicSLO(read_bandwidth_log(args.bandwidth), args.slo_ms, size)


def _run(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.max_connections < 1:
        raise UsageError("--timeout must be > 0 and --max-connections >= 1")
    trace = trace_from_args(args)
    payload = request_payload(args.inputs, resolution=args.resolution, question=args.question, seed=args.seed)
    plan = make_plan(trace, arrivals=args.arrivals, seed=args.seed, slo=_slo(args, payload), priority=args.priority)
    if len(plan) == 0:
        raise UsageError(f"{trace.name}: the workload has no requests")
    print(f"{trace.name}: {len(plan)} requests over {trace.duration_s} s ({plan.intended_rps:.2f} rps) to {args.url}")
    with tqdm(total=len(plan), unit="req", desc="ipa load") as bar:

        def done(record: RequestRecord) -> None:
            bar.update(1)

        records = asyncio.run(
            run_load(args.url, args.model, plan, payload=payload, timeout_s=args.timeout,
                     max_connections=args.max_connections, on_record=done,
                     absolute_deadlines=not args.relative_deadlines)
        )  # fmt: skip
    summary = summarize(records, plan)
    for line in summary.lines():
        print(line)
    if args.out:
        write_records_csv(records, args.out)
        Path(args.out).with_suffix(".json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        print(f"wrote {args.out}")
    if summary.ok == 0:
        print(f"ipa load: error: no request was answered by {args.url}", file=sys.stderr)
        return 1
    return 0
