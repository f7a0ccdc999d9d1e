"""Overload through the real data plane: a 3x burst, then nominal load again. Prints the issue-12 targets.

    python benchmarks/overload.py [--models build/models/resnet] [--variant resnet18] [--batch 4] [--slo-ms 250]
                                  [--burst-s 30] [--calm-s 20] [--seed 0] [--relative]

One replica (`python -m mlserver_ipa.server`, the local cluster's) behind the router in its own process
(`adapter.control.router_process`), requests carrying the SLO as `deadline_ms` and, as `ipa load` sends them,
as an absolute `ipa-deadline` from their scheduled send (`--relative`: `deadline_ms` only). First the capacity: requests per second answered 200 (within
their deadline) by a closed loop of 8 clients. Then open-loop
Poisson arrivals: nominal (60 % of capacity) for `--calm-s`, 3x nominal for `--burst-s`, nominal for `--calm-s`.

Printed, against the targets: goodput during the burst (200s within deadline per second) as a share of the
capacity (>= 90 %); late 200s (answered 200 after the deadline, measured at the client from the scheduled send:
0); p99 of answered requests per phase (<= SLO); seconds after the burst until every 1-s window's p99 is under
the SLO again (<= 5 s); the router's RSS after the run, once its periodic heap trim has run, vs at the end of
the calm phase before the burst (within 10 %); per phase, the arrival rate the adapter reads against the rate the generator really sent (within 10 % during the burst). The adapter's reading is taken as
the live adapter takes it, by `DirectSource` (`adapter.control.monitor`) scraping the router's `/metrics` every
second and observing at each phase's end, in a process of its own (`--monitor`), apart from the load generator.
One run is noisy on a shared machine: run it more than once and quote the spread (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from adapter.control.monitor import DirectSource
from adapter.control.router_process import NICE, RouterProcess
from adapter.executors.cgroups import detect_cpu_controller
from adapter.workloads.loadgen import LoadPlan, RequestRecord, V2Payload, run_load, write_records_csv
from mlserver_ipa.auth import write_token_file
from mlserver_ipa.heap import TRIM_EVERY_S
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_harness import Server, model_repository  # noqa: E402


def late_200s_explained(records: list[RequestRecord]) -> str:
    """Where the late 200s lost their time: answered with time left at the router (its `deadline_ms` in the
    answer), they were late by this generator's send lag (counted from the scheduled send, while the router's
    clock starts at arrival with `--relative`) and by the sockets there and back."""
    told = [(x.latency_ms, (x.sent_s - x.scheduled_s) * 1000, x.deadline_ms, x.left_ms) for x in records
            if x.status == 200 and x.deadline_met is False and x.left_ms is not None and x.deadline_ms is not None]
    if not told:
        return "no late 200 said what was left at the router"
    lag = [g for _, g, _, _ in told]
    left = [f for _, _, _, f in told]
    wire = [lat - g - (d - f) for lat, g, d, f in told]
    return (f"{sum(f >= 0 for f in left)} of {len(told)} left the router with time left ({min(left):.1f} to "
            f"{max(left):.1f} ms); send lag {min(lag):.1f} to {max(lag):.1f} ms, sockets there and back "
            f"{min(wire):.1f} to {max(wire):.1f} ms")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def capacity(url: str, pipeline: str, payload: V2Payload, slo_ms: float, seconds: float = 8.0) -> float:
    """Requests per second answered 200 (so within their deadline, which the router and replica hold) by a
    closed loop of 8 clients: enough to keep a batch served and the next forming."""
    ok = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:

        async def client() -> None:
            nonlocal ok
            body = payload.body({"deadline_ms": slo_ms})
            while time.monotonic() < stop:
                r = await c.post(f"/v2/models/{pipeline}/infer", content=body,
                                 headers={"content-type": "application/json"})
                if r.status_code == 200:
                    ok += 1

        await asyncio.gather(*(client() for _ in range(8)))
    return ok / seconds


def phases(records: list[RequestRecord], calm_s: float, burst_s: float, slo_ms: float) -> dict[str, float]:
    def p99(rs: list[RequestRecord]) -> float:
        lat = [r.latency_ms for r in rs if r.status == 200]
        return float(np.percentile(lat, 99)) if lat else float("nan")

    def within(r: RequestRecord) -> bool:
        return r.status == 200 and r.latency_ms <= slo_ms

    burst = [r for r in records if calm_s <= r.scheduled_s < calm_s + burst_s]
    after = [r for r in records if r.scheduled_s >= calm_s + burst_s]
    end = calm_s + burst_s
    recovered = float("nan")
    for t in np.arange(end, end + calm_s, 0.5):
        later = [r for r in after if r.scheduled_s >= t]
        windows = [[r for r in later if w <= r.scheduled_s < w + 1] for w in np.arange(t, end + calm_s - 1, 1.0)]
        if all(not w or p99(w) <= slo_ms for w in windows):
            recovered = float(t - end)
            break
    return {
        "burst_goodput_rps": sum(map(within, burst)) / burst_s,
        "late_200": float(sum(1 for r in records if r.status == 200 and r.latency_ms > slo_ms)),
        "p99_before": p99([r for r in records if r.scheduled_s < calm_s]),
        "p99_burst": p99(burst),
        "p99_after": p99(after),
        "recovered_s": recovered,
        "shed_share_burst": sum(1 for r in burst if r.status in (503, 504)) / max(1, len(burst)),
    }


async def monitor(metrics_url: str, pipeline: str, start_epoch: float, ends_s: list[float]) -> None:
    """`--monitor`: what the adapter reads. Samples the router's arrival counter every second from
    `start_epoch` on and prints one JSON line per phase, observed at its end (`ends_s`, seconds after start)."""
    source = DirectSource(pipeline, metrics_url, dict, started_at=0.0)
    await source.observe(max(0.0, time.time() - start_epoch))  # the counter's value before the run
    for end in ends_s:
        while (now := time.time() - start_epoch) < end:
            await asyncio.sleep(min(1.0, end - now))
            if time.time() - start_epoch < end:
                await source.sample(time.time() - start_epoch)
        o = await source.observe(time.time() - start_epoch)
        print(json.dumps({"end_s": end, "window_s": o.window_s, "load_rps": o.load_rps, "requests": o.requests,
                          "p99_ms": o.p99_ms, "available": o.available}), flush=True)
    await source.aclose()


async def router_counters(url: str) -> dict[str, float]:
    """Where the router's answers came from: stage calls by status, and requests it shed itself, by status."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(base_url=url) as c:
        text = (await c.get("/metrics")).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("ipa_router_stage_requests", "ipa_router_shed"):
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = f"{family.name.removeprefix('ipa_router_')} {s.labels['code']}"
                    out[key] = out.get(key, 0.0) + s.value
        if family.name == "ipa_gc_pause_seconds":  # `mlserver_ipa.heap`: count and seconds by generation
            for s in family.samples:
                if s.name.endswith(("_count", "_sum")):
                    out[f"gc{s.labels['generation']}{s.name.removeprefix('ipa_gc_pause_seconds')}"] = s.value
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_at(start_epoch: float, ends_s: list[float], pids: dict[str, int]) -> list[dict[str, float]]:
    """CPU seconds each process used by the start and each phase's end (who was short of CPU), and its RSS
    (MB) then, under `rss <name>`."""
    out = []
    for t in [0.0, *ends_s]:
        await asyncio.sleep(max(0.0, start_epoch + t - time.time()))
        out.append({name: cpu_seconds(pid) for name, pid in pids.items()}
                   | {f"rss {name}": rss_mb(pid) for name, pid in pids.items()})
    return out


async def read_by_adapter(router_url: str, start_epoch: float, ends_s: list[float]) -> list[dict[str, float]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--monitor", f"{router_url}/metrics", "--monitor-start", repr(start_epoch),
        "--monitor-ends", ",".join(map(str, ends_s)), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("build/models/resnet"))
    parser.add_argument("--variant", default="resnet18")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--slo-ms", type=float, default=250.0)
    parser.add_argument("--burst-s", type=float, default=30.0)
    parser.add_argument("--calm-s", type=float, default=20.0)
    parser.add_argument("--resolution", type=int, default=64, help="the demo family's image size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relative", action="store_true",
                        help="requests carry only `deadline_ms`, counted from the router's arrival stamp (default: "
                             "also `ipa-deadline` from their scheduled send, as `ipa load` sends them)")
    parser.add_argument("--replica-cores", type=float, default=1.0,
                        help="the replica's CPU limit, as the local cluster sets it (cgroup quota; default "
                             "%(default)s): the rest of the machine is the router's and the load generator's")
    parser.add_argument("--capacity-s", type=float, default=15.0, help="length of the capacity measurement")
    parser.add_argument("--records", type=Path, help="write every request's record here (CSV)")
    parser.add_argument("--hop", choices=("grpc", "rest"), default="grpc",
                        help="how the router calls the replica (default %(default)s, as `ipa up` routes)")
    parser.add_argument("--nominal-rps", type=float, help="the nominal load (default: 60 %% of the capacity measured)")
    parser.add_argument("--generator-nice", type=int, default=NICE,
                        help="run the load generator at this niceness, its autogroup's too (default the router's, "
                             "%(default)s): it stands in for clients on other machines, and at its share of a loaded "
                             "2-core machine it sends late and reads its answers late")
    parser.add_argument("--monitor", metavar="METRICS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--monitor-start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--monitor-ends", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.monitor:
        await monitor(args.monitor, "bench", args.monitor_start, [float(x) for x in args.monitor_ends.split(",")])
        return
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="ipa-overload-"))
    repo, model = model_repository(args.models, args.variant, tmp / "repo", batch=args.batch,
                                   max_batch_time_ms=5)
    replica = Server(repo, None, tmp / "replica.log", command=[sys.executable, "-m", "mlserver_ipa.server"])
    token_file = tmp / "router.token"
    write_token_file(token_file, replica.token)
    limit = detect_cpu_controller().create(f"overload-{os.getpid()}", args.replica_cores)
    limit.attach(replica.process.pid)
    try:
        replica.wait_ready([model])
        async with RouterProcess("bench", ["classifier"], port=0, token_file=token_file,
                                 log=tmp / "router.log") as router:
            assert router.client is not None and router.proc is not None
            await router.client.update_stage("classifier", StageRoute(model=model, groups=[RouteGroup(
                variant=args.variant, replicas=[ReplicaRoute(
                    id="c-0", url=replica.url, grpc_port=replica.grpc_port if args.hop == "grpc" else None,
                    batch_size=args.batch)])]))
            payload = V2Payload.random(args.resolution)
            await capacity(router.url, "bench", payload, args.slo_ms, seconds=3.0)  # warm-up: estimates settle
            cap = await capacity(router.url, "bench", payload, args.slo_ms, seconds=args.capacity_s)
            nominal = args.nominal_rps or 0.6 * cap
            rates = [nominal] * int(args.calm_s) + [3 * nominal] * int(args.burst_s) + [nominal] * int(args.calm_s)
            rng = np.random.default_rng(args.seed)
            times = np.sort(np.concatenate([s + rng.random(rng.poisson(r)) for s, r in enumerate(rates)]))
            plan = LoadPlan(times, float(len(rates)), np.full(len(times), args.slo_ms))
            rss_before = rss_mb(router.proc.pid)
            ends = [args.calm_s, args.calm_s + args.burst_s, float(len(rates))]
            start_epoch = time.time() + 3.0  # the monitor process is up and has its first scrape by then
            reading = asyncio.create_task(read_by_adapter(router.url, start_epoch, ends))
            cpu_task = asyncio.create_task(cpu_at(start_epoch, ends, {"router": router.proc.pid,
                                                                      "generator": os.getpid()}))
            await asyncio.sleep(max(0.0, start_epoch - 0.05 - time.time()))  # run_load leads by 0.05 s
            # This process only (the monitor started before): the replica and router keep theirs.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, args.generator_nice)
                Path("/proc/self/autogroup").write_text(str(args.generator_nice))
            records = await run_load(router.url, "bench", plan, payload=payload, timeout_s=30,
                                     absolute_deadlines=not args.relative)
            read = await reading
            cpu = await cpu_task
            await asyncio.sleep(2)
            rss_after = rss_mb(router.proc.pid)
            # The router gives freed heap back every TRIM_EVERY_S (`heap.return_freed_memory`): 2 s after the
            # run may fall before its next pass, so the level the burst left is read once a pass has surely run.
            await asyncio.sleep(TRIM_EVERY_S + 0.5)
            rss_settled = rss_mb(router.proc.pid)
            counters = await router_counters(router.url)
    finally:
        replica.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        limit.remove()
    if args.records:
        write_records_csv(records, args.records)
    r = phases(records, args.calm_s, args.burst_s, args.slo_ms)
    print(f"replica {args.variant} batch {args.batch} on {args.replica_cores:g} core ({limit.kind}), {args.hop} hop, SLO {args.slo_ms:g} ms; capacity within SLO {cap:.1f} rps; "
          f"nominal {nominal:.1f} rps, burst {3 * nominal:.1f} rps for {args.burst_s:g} s; {len(records)} requests")
    print(f"goodput during burst   {r['burst_goodput_rps']:.1f} rps = {r['burst_goodput_rps'] / cap:.0%} of capacity "
          f"(target >= 90 %); shed {r['shed_share_burst']:.0%} of the burst")
    print(f"late 200s              {r['late_200']:.0f} (target 0; client-side, from the scheduled send)")
    print(f"                       {late_200s_explained(records)}")
    print(f"p99 answered           before {r['p99_before']:.0f} ms, burst {r['p99_burst']:.0f} ms, after "
          f"{r['p99_after']:.0f} ms (target <= {args.slo_ms:g})")
    print(f"recovered              {r['recovered_s']:.1f} s after the burst (target <= 5 s)")
    calm = cpu[1]["rss router"]  # at the end of the calm phase before the burst: the level the burst left
    print(f"router RSS             {calm:.0f} MB at the end of the calm phase before the burst -> {rss_settled:.0f} MB "
          f"{2 + TRIM_EVERY_S + 0.5:g} s after the run, a heap trim later ({rss_settled / calm - 1:+.0%}; target "
          f"within 10 %); {rss_after:.0f} MB 2 s after ({rss_after / calm - 1:+.0%}), {rss_before:.0f} MB before "
          f"any load, {cpu[2]['rss router']:.0f} MB at the burst's end")
    bounds = [0.0, *ends]
    for name, lo, hi, seen in zip(("before", "burst", "after"), bounds, bounds[1:], read, strict=False):
        sent = sum(1 for r in records if lo <= r.sent_s < hi) / (hi - lo)
        lag = np.percentile([r.sent_s - r.scheduled_s for r in records if lo <= r.scheduled_s < hi] or [0.0], 99)
        i = ("before", "burst", "after").index(name)
        used = {k: (cpu[i + 1][k] - cpu[i][k]) / (hi - lo) for k in cpu[i] if not k.startswith("rss")}
        print(f"arrivals read, {name:6} {seen['load_rps']:.1f} rps by the adapter vs {sent:.1f} rps sent "
              f"({seen['load_rps'] / sent - 1:+.1%}{'; target within 10 %' if name == 'burst' else ''}); "
              f"cores used: router {used['router']:.2f}, load generator {used['generator']:.2f}; p99 at the router "
              f"(from its arrival stamp) {seen['p99_ms'] or float('nan'):.0f} ms; generator's lag p99 {lag * 1000:.0f} ms")
    answers = {k: v for k, v in counters.items() if not k.startswith("gc")}
    print("router's answers       " + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(answers.items())))
    print("router's GC pauses     " + ", ".join(
        f"generation {g}: {counters.get(f'gc{g}_count', 0):.0f} taking {counters.get(f'gc{g}_sum', 0) * 1000:.0f} ms"
        for g in range(3)) + " (whole run, warm-up included)")
    print(f"load average           {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (1 min); load generator "
          f"at nice {os.getpriority(os.PRIO_PROCESS, 0)}")


if __name__ == "__main__":
    asyncio.run(main())
