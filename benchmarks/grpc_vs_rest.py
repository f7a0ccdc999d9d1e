"""Router overhead per request, REST/JSON vs V2 gRPC with raw tensor contents, at the demo's tensor size.

    python benchmarks/grpc_vs_rest.py [--models build/models/resnet] [--variant resnet18] [--resolution 64]
                                      [--requests 200] [--rounds 4] [--concurrency 4]

One replica (`python -m mlserver_ipa.server`) behind the router in its own process
(`adapter.control.router_process`), as `ipa up` runs them; the request is the demo's (one 3x`R`x`R` FP32 image,
`deadline_ms` 5000; `inference_graphs/resnet.yaml`, `adapter/live/demo.py`). Three ways through, interleaved
round by round in the same run (so machine load hits all alike):

    rest       REST/JSON client -> router -> REST/JSON hop (the table's `protocol: rest`)
    rest+grpc  REST/JSON client -> router -> gRPC hop with raw contents (what the demo's load generator gets)
    grpc       gRPC client (raw contents) -> router -> gRPC hop

Each round sends `--requests` requests from `--concurrency` closed-loop clients. Printed per way: the router's
and the replica's CPU time per request (user + system from /proc, before/after each round; median over
rounds and the min-max), and latency p50/p99 over all rounds with the spread of the per-round p99. The
machine is shared: the load average is printed with the figures, and ratios taken within one run are what to
quote. Run it more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np

from adapter.control.router_process import RouterProcess
from mlserver_ipa.auth import write_token_file
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute
from mlserver_ipa.v2_proto import Stub, params_to_pb, pb
from mlserver_ipa.wire_tensors import fill_pb_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_harness import LoadClient, Server, model_repository, process_cpu_seconds  # noqa: E402

WAYS = ("rest", "rest+grpc", "grpc")
DEADLINE_MS = 5000.0


async def closed_loop(send: Callable[[], Awaitable[bool]], requests: int, concurrency: int) -> tuple[list[float], int]:
    """Latencies (ms) of `requests` calls from `concurrency` clients one after another; and how many failed."""
    latencies: list[float] = []
    failed = 0
    left = requests

    async def client() -> None:
        nonlocal left, failed
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            ok = await send()
            latencies.append((time.perf_counter() - t0) * 1000)
            failed += not ok
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, failed


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("build/models/resnet"))
    parser.add_argument("--variant", default="resnet18")
    parser.add_argument("--resolution", type=int, default=64, help="the demo family's image size")
    parser.add_argument("--requests", type=int, default=200, help="requests per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per way, interleaved")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="ipa-grpc-vs-rest-"))
    repo, model = model_repository(args.models, args.variant, tmp / "repo", max_batch_time_ms=0)
    replica = Server(repo, None, tmp / "replica.log", command=[sys.executable, "-m", "mlserver_ipa.server"])
    token_file = tmp / "router.token"
    write_token_file(token_file, replica.token)

    image = np.random.default_rng(0).random((1, 3, args.resolution, args.resolution), dtype=np.float32)
    rest_body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(image.shape),
                                        "data": image.ravel().tolist()}],
                            "parameters": {"deadline_ms": DEADLINE_MS}}).encode()
    grpc_request = pb.ModelInferRequest(model_name="bench")
    fill_pb_inputs(grpc_request, [{"name": "input", "datatype": "FP32", "shape": list(image.shape),
                                   "data": image.tobytes()}])
    params_to_pb(grpc_request.parameters, {"deadline_ms": DEADLINE_MS})
    results: dict[str, dict[str, list[float]]] = {w: {"router": [], "replica": [], "lat": [], "p99": []} for w in WAYS}
    failures = dict.fromkeys(WAYS, 0)
    try:
        replica.wait_ready([model])
        async with RouterProcess("bench", ["classifier"], port=0, token_file=token_file,
                                 log=tmp / "router.log") as router:
            assert router.client is not None and router.proc is not None
            channel = grpc.aio.insecure_channel(router.grpc_address)
            stub = Stub(channel)
            async with LoadClient(router.url, args.concurrency, 30.0) as http:

                async def rest() -> bool:
                    return await http.post("/v2/models/bench/infer", rest_body) == 200

                async def over_grpc() -> bool:
                    try:
                        await stub.ModelInfer(grpc_request, timeout=30)
                        return True
                    except grpc.aio.AioRpcError:
                        return False

                async def route(protocol: str) -> None:
                    assert router.client is not None
                    await router.client.update_stage("classifier", StageRoute(model=model, protocol=protocol, groups=[
                        RouteGroup(variant=args.variant, replicas=[ReplicaRoute(
                            id="c-0", url=replica.url, grpc_port=replica.grpc_port, batch_size=1)])]))

                sends = {"rest": ("rest", rest), "rest+grpc": ("grpc", rest), "grpc": ("grpc", over_grpc)}
                for protocol, send in sends.values():  # warm every path once
                    await route(protocol)
                    await closed_loop(send, 20, args.concurrency)
                for _ in range(args.rounds):
                    for way, (protocol, send) in sends.items():
                        await route(protocol)
                        r0, p0 = process_cpu_seconds(router.proc.pid), process_cpu_seconds(replica.process.pid)
                        latencies, failed = await closed_loop(send, args.requests, args.concurrency)
                        r1, p1 = process_cpu_seconds(router.proc.pid), process_cpu_seconds(replica.process.pid)
                        res = results[way]
                        res["router"].append((r1 - r0) * 1000 / args.requests)
                        res["replica"].append((p1 - p0) * 1000 / args.requests)
                        res["lat"] += latencies
                        res["p99"].append(p99(latencies))
                        failures[way] += failed
            await channel.close()
    finally:
        replica.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"{args.variant}, one {args.resolution}x{args.resolution} image per request, batch 1, "
          f"{args.concurrency} closed-loop clients, {args.rounds} rounds x {args.requests} requests per way, "
          "interleaved")
    print(f"load average before {load_before[0]:.1f} / after {load_after[0]:.1f} (1 min); a shared 2-core machine")
    print(f"{'way':<10} {'router CPU ms/req':>26} {'replica CPU ms/req':>26} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'p99 per round':>18} failed")
    for way in WAYS:
        res = results[way]

        def spread(xs: list[float]) -> str:
            return f"{statistics.median(xs):6.2f} ({min(xs):.2f}-{max(xs):.2f})"
        print(f"{way:<10} {spread(res['router']):>26} {spread(res['replica']):>26} "
              f"{float(np.percentile(res['lat'], 50)):8.1f} {p99(res['lat']):8.1f} "
              f"{min(res['p99']):8.1f}-{max(res['p99']):<8.1f} {failures[way]}")
    rest_cpu = statistics.median(results["rest"]["router"])
    for way in WAYS[1:]:
        print(f"router CPU per request, {way} / rest: {statistics.median(results[way]['router']) / rest_cpu:.2f}; "
              f"p99 {p99(results[way]['lat']) / p99(results['rest']['lat']):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
