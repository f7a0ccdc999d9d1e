"""How long a full garbage collection stops a serving process, before and after its start-up heap is frozen.

    python benchmarks/gc_pauses.py [--repeats 7]

For each process the pipeline runs, a fresh interpreter imports and builds what that process does (`router`:
the router's app, its gRPC server module and uvloop; `replica`: MLServer, our runtime and onnxruntime;
`replica-torch`: the same with the PyTorch backend a checkpoint folder is served with), then times full
collections (`gc.collect()`) `--repeats` times, freezes the heap as the process does before serving
(`mlserver_ipa.heap.freeze_startup_heap`) and times them again. Printed per process: objects tracked, the median
pause and its min-max before and after (within one interpreter; the load average is printed). After the
freeze a collection walks only what was made since: here nothing, in a serving process what its requests hold. A pause stops every request in flight: against a 250 ms SLO, one of 100 ms is
a deadline missed for every request that had less than that left.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

BUILD = {
    "router": (
        "from mlserver_ipa.router import create_app; from mlserver_ipa.pipeline_router import PipelineRouter; "
        "import mlserver_ipa.router_grpc, uvicorn, uvloop; create_app(PipelineRouter('p', ['a']), 'token')"
    ),
    "replica": "import mlserver.server, onnxruntime, mlserver_ipa.server, mlserver_ipa.runtime",
    "replica-torch": (
        "import mlserver.server, onnxruntime, mlserver_ipa.server, mlserver_ipa.runtime, "
        "mlserver_ipa.transformers_session"
    ),
}


def measure(role: str, repeats: int) -> dict[str, object]:
    """In this interpreter: build `role`, time full collections before and after the freeze."""
    exec(BUILD[role], {})

    def pauses() -> list[float]:
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            gc.collect()
            out.append((time.perf_counter() - t0) * 1000)
        return out

    tracked = len(gc.get_objects())
    before = pauses()
    from mlserver_ipa.heap import freeze_startup_heap

    frozen = freeze_startup_heap()
    after = pauses()
    return {"role": role, "tracked": tracked, "frozen": frozen, "before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--role", choices=sorted(BUILD), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        print(json.dumps(measure(args.role, args.repeats)))
        return
    print(f"load average {os.getloadavg()[0]:.1f}; full collections, {args.repeats} per point, ms median (min-max)")
    print("| process | objects tracked | before freeze | after freeze |")
    print("| --- | --- | --- | --- |")
    for role in BUILD:
        out = subprocess.run([sys.executable, __file__, "--role", role, "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        b, a = statistics.median(r["before"]), statistics.median(r["after"])
        print(f"| {role} | {r['tracked']} | {b:.1f} ({min(r['before']):.1f}-{max(r['before']):.1f}) | "
              f"{a:.3f} ({min(r['after']):.3f}-{max(r['after']):.3f}) |")
    print(f"load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
