"""The HTTP parser's cost at the router: httptools vs h11, each under the same guard (`mlserver_ipa.protocol`).

    python benchmarks/http_parser.py [--models build/models/resnet] [--variant resnet18] [--resolution 64]
                                     [--requests 300] [--rounds 4] [--concurrency 4]

Two router processes (`python -m mlserver_ipa.router`, one with `IPA_HTTP_PARSER=httptools`, one with `h11`)
in front of the same replica (`python -m mlserver_ipa.server`). Rounds alternate between them, so both see the
same machine load; each round sends `--requests` V2 JSON requests of the demo's image size from a closed loop
of `--concurrency` clients. Printed per parser: the router process's CPU time per request (user + system, from
/proc), median and p99 latency, and the ratio h11 / httptools; the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adapter.control.router_process import RouterProcess
from adapter.workloads.loadgen import V2Payload
from mlserver_ipa.auth import write_token_file
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_harness import LoadClient, Server, load_average, model_repository, process_cpu_seconds  # noqa: E402

PARSERS = ("httptools", "h11")


async def one_round(router: RouterProcess, body: bytes, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """Router CPU seconds per request and the latencies (ms) of `requests` sent by a closed loop."""
    assert router.proc is not None
    latencies: list[float] = []
    left = requests
    async with LoadClient(router.url, concurrency, timeout=60) as client:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t = time.perf_counter()
                status = await client.post("/v2/models/bench/infer", body)
                if status != 200:
                    raise RuntimeError(f"the router answered {status}")
                latencies.append((time.perf_counter() - t) * 1000)

        await client.post("/v2/models/bench/infer", body)  # connections open before the clock starts
        cpu = process_cpu_seconds(router.proc.pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (process_cpu_seconds(router.proc.pid) - cpu) / requests, latencies


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("build/models/resnet"))
    ap.add_argument("--variant", default="resnet18")
    ap.add_argument("--resolution", type=int, default=64, help="the demo family's image size")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ipa-parser-"))
    repo, model = model_repository(args.models, args.variant, tmp / "repo")
    replica = Server(repo, None, tmp / "replica.log", command=[sys.executable, "-m", "mlserver_ipa.server"])
    token_file = tmp / "router.token"
    write_token_file(token_file, replica.token)
    body = V2Payload.random(args.resolution).body({"deadline_ms": 30_000})
    before = load_average()
    cpu: dict[str, list[float]] = {p: [] for p in PARSERS}
    lat: dict[str, list[float]] = {p: [] for p in PARSERS}
    try:
        replica.wait_ready([model])
        routers: dict[str, RouterProcess] = {}
        for parser in PARSERS:
            os.environ["IPA_HTTP_PARSER"] = parser  # read by the router process when it starts
            routers[parser] = RouterProcess("bench", ["classifier"], port=0, token_file=token_file,
                                            log=tmp / f"router-{parser}.log")
            await routers[parser].__aenter__()
            client = routers[parser].client
            assert client is not None
            await client.update_stage("classifier", StageRoute(model=model, groups=[RouteGroup(
                variant=args.variant, load_share=1.0,
                replicas=[ReplicaRoute(id="c-0", url=replica.url, batch_size=1)])]))
        try:
            for i in range(args.rounds):
                for parser in PARSERS if i % 2 == 0 else PARSERS[::-1]:
                    per_request, latencies = await one_round(routers[parser], body, args.requests,
                                                             args.concurrency)
                    cpu[parser].append(per_request * 1000)
                    lat[parser].extend(latencies)
                    print(f"round {i + 1} {parser:>9}: {per_request * 1000:6.2f} CPU ms/request at the router",
                          flush=True)
        finally:
            for router in routers.values():
                await router.__aexit__(None, None, None)
    finally:
        replica.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nrouter HTTP parser, {len(body) / 1024:.0f} KiB JSON bodies ({args.resolution} px image), "
          f"{args.rounds} alternating rounds of {args.requests} requests, {args.concurrency} clients; "
          f"load average {before} -> {load_average()}")
    print(f"{'parser':>9} {'CPU ms/req (median, range)':>30} {'p50 ms':>8} {'p99 ms':>8}")
    for parser in PARSERS:
        c = cpu[parser]
        print(f"{parser:>9} {np.median(c):>12.2f} ({min(c):.2f}-{max(c):.2f}){'':>8} "
              f"{np.percentile(lat[parser], 50):>8.1f} {np.percentile(lat[parser], 99):>8.1f}")
    ratios = [h / t for h, t in zip(cpu["h11"], cpu["httptools"], strict=True)]
    print(f"h11 / httptools router CPU per request: {np.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    asyncio.run(main())
