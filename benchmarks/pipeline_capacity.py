"""What the live pipeline carries against what the optimizer planned from the profiles, per core budget.

    python benchmarks/pipeline_capacity.py [--graph inference_graphs/resnet.yaml] [--budgets 1,2]
        [--policy joint] [--seconds 20] [--models build/models] [--resolution 64]

For each budget: the largest load the policy serves within the SLO on that budget per the profiles
(`adapter.live.demo.max_load_rps`, the "planned" load) and its decision at that load, deployed on this machine
as `ipa up` does (the router in its own process, the local cluster's replicas in their CPU cgroups). Then two
phases against it:

- closed loop (4 clients per batch slot of the first stage): the throughput the pipeline answers (200s per
  second), against the decision's profiled capacity (the smallest stage capacity of the decision: what the
  replicas' profiles say they sustain);
- open loop (`ipa load` in its own process, as `ipa demo` runs it), Poisson at the planned load for
  `--seconds`, every request with the SLO as its deadline: the share answered within the SLO, the goodput, the
  answers by status and the load generator's own lag behind its schedule (p99).

The load generator, the router and the adapter's cluster manager share this machine with the replicas, which
a deployment would not: at a budget of all the machine's cores they compete with the replicas, and the gap
says by how much. The load average before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adapter.control.router_process import RouterProcess
from adapter.decision.model import Decision
from adapter.decision.policies import decide
from adapter.decision.policy_types import PolicyConfig, PolicyContext, PolicySettings
from adapter.executors.local.cluster import LocalCluster
from adapter.executors.local.settings import LocalClusterSettings
from adapter.live.demo import max_load_rps
from adapter.live.measured import load_command, read_records_csv
from adapter.profiling.profile import load_graph_profiles
from adapter.spec import GraphSpec, load_spec
from adapter.workloads.loadgen import RequestRecord, V2Payload
from mlserver_ipa.auth import write_token_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_harness import LoadClient, load_average  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def planned(spec: GraphSpec, policy: str, budget: float) -> tuple[float, Decision]:
    """The largest load `policy` serves within the SLO on `budget` cores, and its decision there."""
    load = max_load_rps(spec, policy, budget)
    config = PolicyConfig.create(spec.model_copy(update={"budget_cores": budget}), load_graph_profiles(spec),
                                 PolicySettings(policy=policy))
    decision, _ = decide(PolicyContext(now=0.0, predicted_load_rps=load), config)
    return load, decision


async def closed_loop(url: str, pipeline: str, body: bytes, clients: int, seconds: float) -> float:
    """200s per second answered to `clients` clients that each send the next request when answered."""
    ok = 0
    async with LoadClient(url, clients, timeout=60) as client:
        await asyncio.gather(*(client.post(f"/v2/models/{pipeline}/infer", body) for _ in range(clients)))
        stop = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal ok
            while time.monotonic() < stop:
                if await client.post(f"/v2/models/{pipeline}/infer", body) == 200:
                    ok += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    return ok / seconds


async def open_loop(url: str, spec: GraphSpec, load: float, seconds: float, resolution: int,
                    home: Path) -> list[RequestRecord]:
    """`ipa load` in its own process (as `ipa demo` runs it): Poisson at `load` rps for `seconds`."""
    trace_file, out = home / "trace.txt", home / "requests.csv"
    trace_file.write_text(" ".join([f"{load:.3f}"] * int(seconds)))
    command = load_command(url, spec.name, trace_file, out, seed=0, slo_ms=spec.slo_ms, resolution=resolution,
                           timeout_s=60)
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"})
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"ipa load failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    return read_records_csv(out)


async def measure(spec: GraphSpec, budget: float, policy: str, models: Path, seconds: float, resolution: int,
                  home: Path) -> str:
    load, decision = planned(spec, policy, budget)
    if decision.status != "optimal":
        return f"budget {budget:g}: no configuration serves any load within the SLO ({decision.reason})"
    capacity = min(s.capacity_rps for s in decision.stages)
    repos = {st.name: models / (st.family or st.name) for st in spec.stages}
    token_file = home / "token"
    write_token_file(token_file)
    payload = V2Payload.random(resolution)
    async with RouterProcess(spec.name, [st.name for st in spec.stages], port=0, token_file=token_file,
                             log=home / "router.log") as router:
        assert router.client is not None
        settings = LocalClusterSettings(home=home, token_file=token_file)
        async with LocalCluster(spec, repos, router=router.client, router_url=router.url,
                                settings=settings) as cluster:
            result = await cluster.apply(spec, decision)
            if not result.ok:
                raise SystemExit(f"budget {budget:g}: the decision was not applied: {result.failed}")
            first = decision.stages[0]
            clients = max(4, 4 * sum(r.batch * r.count for r in first.replicas))
            before = load_average()
            served = await closed_loop(router.url, spec.name, payload.body({"deadline_ms": 60_000.0}), clients,
                                       seconds)
            records = await open_loop(router.url, spec, load, seconds, resolution, home)
            after = load_average()
    within = sum(1 for r in records if r.status == 200 and r.latency_ms <= spec.slo_ms)
    codes: dict[int, int] = {}
    for r in records:
        codes[r.status] = codes.get(r.status, 0) + 1
    lag = np.percentile([r.sent_s - r.scheduled_s for r in records], 99) * 1000 if records else 0.0
    ok_ms = [r.latency_ms for r in records if r.status == 200]
    p50 = float(np.median(ok_ms)) if ok_ms else float("nan")
    config = "; ".join(f"{s.name}: " + ", ".join(f"{r.count}x {r.variant} b{r.batch} {r.cores:g}c" for r in s.replicas)
                       for s in decision.stages)
    return (f"budget {budget:g} cores ({config})\n"
            f"  closed loop, {clients} clients: {served:.1f} rps answered; profiled capacity {capacity:.1f} rps: "
            f"{served / capacity:.2f}x\n"
            f"  open loop at the planned {load:.1f} rps: {100 * within / max(1, len(records)):.1f} % within the "
            f"{spec.slo_ms:g} ms SLO, goodput {within / seconds:.1f} rps ({within / seconds / load:.2f}x planned); "
            f"answers {dict(sorted(codes.items()))}, median latency of 200s {p50:.0f} ms, p99 send lag {lag:.0f} ms\n"
            f"  load average {before} -> {after}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", type=Path, default=ROOT / "inference_graphs" / "resnet.yaml")
    ap.add_argument("--budgets", default="1,2")
    ap.add_argument("--policy", default="joint")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--models", type=Path, default=ROOT / "build" / "models")
    ap.add_argument("--resolution", type=int, default=64, help="the demo family's image size")
    args = ap.parse_args()
    spec = load_spec(args.graph, require_profiles=True)
    print(f"{spec.name}: live throughput vs profiled capacity, {os.cpu_count()} CPUs, policy {args.policy}",
          flush=True)
    for budget in (float(b) for b in args.budgets.split(",") if b.strip()):
        with tempfile.TemporaryDirectory(prefix="ipa-capacity-") as tmp:
            print(await measure(spec, budget, args.policy, args.models, args.seconds, args.resolution, Path(tmp)),
                  flush=True)


if __name__ == "__main__":
    asyncio.run(main())
