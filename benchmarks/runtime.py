"""Benchmark of the serving runtime: the same ONNX model three ways in one run, and a bursty overload.

    .venv/bin/python benchmarks/runtime.py            # full run (a few minutes)
    .venv/bin/python benchmarks/runtime.py --quick    # short points, for a smoke check

1. Throughput and latency in a closed loop (each client sends its next request when the last one is answered)
   at batch 1, 4 and 8: raw onnxruntime in this process (the floor: no HTTP, no JSON, batches handed in
   whole), stock MLServer (a minimal onnxruntime runtime with MLServer's adaptive batching,
   `benchmarks/stock_runtime.py`) and this project's `VariantRuntime`. Each request carries one image;
   concurrency is twice the batch size (at least 4), so batches can fill.
2. A bursty open-loop overload (bursts at 3x the measured capacity, 1.4x on average) with three deadline
   classes: the share of all requests answered successfully within their deadline, per system.

Both servers run with the same onnxruntime threads and are pinned to the same CPUs (`--server-cpus`); the
client is pinned to the others (`--client-cpus`), so the client's JSON work does not take the servers' CPU.
Other processes on the machine add noise: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvloop
from serving_harness import LoadClient, Server, process_cpu_seconds

from mlserver_ipa.session import VariantSession

ROOT = Path(__file__).resolve().parent.parent


# -- models -------------------------------------------------------------------------------------------------


def build_model(out: Path, variant: str, resolution: int) -> Path:
    from mlserver_ipa.zoo import build_repository

    build_repository("resnet", out, variants=[variant], resolution=resolution)
    return out / "resnet" / f"{variant}.onnx"


def write_repos(work: Path, onnx: Path, batches: list[int], threads: int, max_batch_time_ms: float,
                queue_limit: int) -> tuple[Path, Path]:
    stock, ours = work / "stock", work / "ipa"
    for b in batches:
        folder = stock / f"stock-b{b}"
        folder.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {"name": f"stock-b{b}", "implementation": "stock_runtime.StockOnnxRuntime",
                                    "parameters": {"extra": {"uri": str(onnx), "threads": threads}}}
        if b > 1:
            settings.update(max_batch_size=b, max_batch_time=max_batch_time_ms / 1000)
        (folder / "model-settings.json").write_text(json.dumps(settings))
    (ours / "ipa").mkdir(parents=True, exist_ok=True)
    (ours / "ipa" / "model-settings.json").write_text(json.dumps({
        "name": "ipa", "implementation": "mlserver_ipa.runtime.VariantRuntime",
        "parameters": {"extra": {"variants": [{"name": onnx.stem, "uri": str(onnx)}], "threads": threads,
                                 "max_batch_time_ms": max_batch_time_ms, "queue_limit": queue_limit}},
    }))
    return stock, ours


# -- measurements -------------------------------------------------------------------------------------------


@dataclass
class Point:
    system: str
    batch: int
    concurrency: int
    rps: float
    """Images per second."""
    p50_ms: float
    p99_ms: float
    errors: int = 0
    cpu_ms: float = float("nan")
    """CPU time the server process spent per image (all its threads): what it costs, whatever else runs."""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def raw_floor(onnx: Path, batch: int, threads: int, seconds: float, cpus: set[int] | None, image: np.ndarray) -> Point:
    """onnxruntime in this process, one batch after another: no serving at all."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        session = VariantSession(onnx.stem, onnx, threads)
        feeds = {"input": np.repeat(image, batch, axis=0)}
        for _ in range(3):
            session.run_sync(feeds)
        latencies: list[float] = []
        cpu0 = time.process_time()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            session.run_sync(feeds)
            latencies.append((time.perf_counter() - t0) * 1000)
        cpu = time.process_time() - cpu0
    finally:
        os.sched_setaffinity(0, before)
    total = sum(latencies) / 1000
    return Point("onnxruntime (floor)", batch, 1, batch * len(latencies) / total,
                 percentile(latencies, 50), percentile(latencies, 99), cpu_ms=1000 * cpu / (batch * len(latencies)))


def request_body(image: np.ndarray, **parameters: Any) -> bytes:
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": list(image.shape), "datatype": "FP32",
                                        "data": image.ravel().tolist()}]}
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body).encode()


@dataclass
class Samples:
    """Closed-loop observations of one system at one batch size, summed over rounds."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    cpu_seconds: float = 0.0
    cpu_images: int = 0

    def point(self, system: str, batch: int, concurrency: int) -> Point:
        return Point(system, batch, concurrency, len(self.latencies) / self.seconds if self.seconds else 0.0,
                     percentile(self.latencies, 50), percentile(self.latencies, 99), self.errors,
                     1000 * self.cpu_seconds / self.cpu_images if self.cpu_images else float("nan"))


async def closed_loop(url: str, model: str, body: bytes, concurrency: int, seconds: float, warmup: float,
                      into: Samples, pid: int) -> None:
    """`concurrency` clients, each sending its next request when the last is answered; adds to `into`."""
    path = f"/v2/models/{model}/infer"
    async with LoadClient(url, concurrency, timeout=60) as client:
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + seconds
        answered = 0

        async def worker() -> None:
            nonlocal answered
            while (now := time.perf_counter()) < end:
                status = await client.post(path, body)
                done = time.perf_counter()
                answered += status == 200
                if now >= measure_from:
                    if status == 200:
                        into.latencies.append((done - now) * 1000)
                    else:
                        into.errors += 1

        async def cpu_window() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            cpu0, n0 = process_cpu_seconds(pid), answered
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            into.cpu_seconds += process_cpu_seconds(pid) - cpu0
            into.cpu_images += answered - n0

        await asyncio.gather(cpu_window(), *(worker() for _ in range(concurrency)))
    into.seconds += seconds


# -- overload -----------------------------------------------------------------------------------------------


@dataclass
class OverloadResult:
    system: str
    sent: int
    within: int
    by_class: dict[str, tuple[int, int]] = field(default_factory=dict)
    """class -> (sent, answered within deadline)."""
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.within / self.sent if self.sent else float("nan")

    def add(self, other: OverloadResult) -> None:
        self.sent += other.sent
        self.within += other.within
        for c, (n, w) in other.by_class.items():
            n0, w0 = self.by_class.get(c, (0, 0))
            self.by_class[c] = (n0 + n, w0 + w)
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v


def overload_schedule(capacity: float, seconds: float, classes: dict[str, float], seed: int) -> list[tuple[float, str]]:
    """Poisson arrivals in 2 s cycles: 0.7 s at 3x capacity, 1.3 s at 0.5x (1.375x on average)."""
    rng = random.Random(seed)
    names = list(classes)
    t, out = 0.0, []  # type: tuple[float, list[tuple[float, str]]]
    while True:
        rate = capacity * (3.0 if (t % 2.0) < 0.7 else 0.5)
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append((t, rng.choice(names)))


async def open_loop(url: str, model: str, schedule: list[tuple[float, str]], bodies: dict[str, bytes],
                    classes: dict[str, float], system: str) -> OverloadResult:
    path = f"/v2/models/{model}/infer"
    statuses: Counter[str] = Counter()
    per_class: dict[str, list[int]] = {c: [0, 0] for c in classes}
    max_deadline = max(classes.values()) / 1000
    async with LoadClient(url, 4000, timeout=max_deadline + 1) as client:
        start = time.perf_counter()

        async def one(at: float, cls: str) -> None:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            sent = time.perf_counter()
            per_class[cls][0] += 1
            status = await client.post(path, bodies[cls])
            statuses[str(status) if status else "no answer"] += 1
            if status == 200 and (time.perf_counter() - sent) * 1000 <= classes[cls]:
                per_class[cls][1] += 1

        await asyncio.gather(*(one(at, cls) for at, cls in schedule))
    return OverloadResult(system, sum(s for s, _ in per_class.values()), sum(w for _, w in per_class.values()),
                          {c: (s, w) for c, (s, w) in per_class.items()}, dict(statuses))


# -- report -------------------------------------------------------------------------------------------------


def print_points(points: list[Point]) -> None:
    print(f"{'system':<22}{'batch':>6}{'conc':>6}{'img/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'CPU ms/img':>12}")
    for p in points:
        print(f"{p.system:<22}{p.batch:>6}{p.concurrency:>6}{p.rps:>10.1f}{p.p50_ms:>9.1f}{p.p99_ms:>9.1f}"
              f"{p.errors:>8}{p.cpu_ms:>12.2f}")


def print_overload(results: list[OverloadResult], classes: dict[str, float]) -> None:
    head = "".join(f"{c + f' ({ms:.0f}ms)':>16}" for c, ms in classes.items())
    print(f"{'system':<18}{'sent':>7}{'within':>8}{'share':>8}{head}  answers")
    for r in results:
        cols = "".join(f"{(w / s if s else 0):>16.0%}" for s, w in r.by_class.values())
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()))
        print(f"{r.system:<18}{r.sent:>7}{r.within:>8}{r.share:>8.0%}{cols}  {answers}")


def cpu_set(text: str) -> set[int] | None:
    if not text:
        return None
    available = os.sched_getaffinity(0)
    cpus = {int(c) for c in text.split(",") if c.strip()}
    return cpus & available or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one round of short points (3 s, overload 8 s)")
    parser.add_argument("--variant", default="resnet50", help="ResNet variant of the demo zoo (default resnet50)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per closed-loop point and round")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=4,
                        help="repeat every measurement, alternating which server goes first (drift cancels)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch-time-ms", type=float, default=5.0)
    parser.add_argument("--overload-batch", type=int, default=4)
    parser.add_argument("--overload-seconds", type=float, default=10.0, help="seconds of overload per round")
    parser.add_argument("--server-cpus", default="1", help="CPUs both servers are pinned to ('' = no pinning)")
    parser.add_argument("--client-cpus", default="0", help="CPUs this client is pinned to ('' = no pinning)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "runtime")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.overload_seconds, args.rounds = 3.0, 1.0, 8.0, 1
    batches = [int(b) for b in args.batches.split(",")]
    ob = args.overload_batch
    server_cpus, client_cpus = cpu_set(args.server_cpus), cpu_set(args.client_cpus)
    if server_cpus and client_cpus:
        client_cpus = (client_cpus - server_cpus) or None
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)

    args.work.mkdir(parents=True, exist_ok=True)
    print(f"building {args.variant} at {args.resolution}x{args.resolution} ...", flush=True)
    onnx = build_model(args.work / "models", args.variant, args.resolution)
    stock_repo, ours_repo = write_repos(args.work, onnx, sorted(set(batches) | {ob}), args.threads,
                                       args.max_batch_time_ms, queue_limit=256)
    image = np.random.default_rng(0).standard_normal((1, 3, args.resolution, args.resolution)).astype(np.float32)
    body = request_body(image)

    stock = Server(stock_repo, server_cpus, args.work / "stock.log")
    ours = Server(ours_repo, server_cpus, args.work / "ipa.log")
    try:
        stock.wait_ready([f"stock-b{b}" for b in sorted(set(batches) | {ob})])
        ours.wait_ready(["ipa"])
        print(f"model {args.variant} @{args.resolution}x{args.resolution}, onnxruntime threads {args.threads}, "
              f"server CPUs {sorted(server_cpus or [])}, client CPUs {sorted(client_cpus or [])}, "
              f"{args.rounds} x {args.seconds:.0f} s per point, max batch time {args.max_batch_time_ms} ms\n",
              flush=True)

        def set_batch(b: int) -> None:
            httpx.post(f"{ours.url}/v2/models/ipa/control", json={"batch_size": b}, timeout=120,
                       headers={"authorization": f"Bearer {ours.token}"}).raise_for_status()

        points: list[Point] = []
        floors: dict[int, Point] = {}
        for b in batches:
            conc = max(4, 2 * b)
            floors[b] = raw_floor(onnx, b, args.threads, args.seconds, server_cpus, image)
            set_batch(b)
            samples = {"stock MLServer": Samples(), "this runtime": Samples()}
            runs = [("stock MLServer", stock, f"stock-b{b}"), ("this runtime", ours, "ipa")]
            for r in range(args.rounds):
                for system, server, model in runs if r % 2 == 0 else runs[::-1]:
                    uvloop.run(closed_loop(server.url, model, body, conc, args.seconds, args.warmup,
                                           samples[system], server.process.pid))
            new = [floors[b], *(samples[s].point(s, b, conc) for s in samples)]
            print_points(new)
            points += new
        print("\nClosed loop, images per second and client-side latency:")
        print_points(points)
        ratios = {}
        for b in batches:
            s = next(p for p in points if p.system == "stock MLServer" and p.batch == b)
            o = next(p for p in points if p.system == "this runtime" and p.batch == b)
            ratios[b] = o.rps / s.rps if s.rps else float("inf")
        print("throughput this runtime / stock MLServer: "
              + ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratios.items()) + "  (target >= 0.95x)")
        cpu_ratios = {}
        for b in batches:
            s = next(p for p in points if p.system == "stock MLServer" and p.batch == b)
            o = next(p for p in points if p.system == "this runtime" and p.batch == b)
            cpu_ratios[b] = s.cpu_ms / o.cpu_ms if o.cpu_ms else float("nan")
        print("images per CPU second this runtime / stock MLServer (insensitive to other load on the machine): "
              + ", ".join(f"batch {b}: {r:.2f}x" for b, r in cpu_ratios.items()))

        # Overload: capacity is the better of the two systems at the overload batch size in this run; deadlines
        # are multiples of the time onnxruntime alone takes for one full batch.
        served = [p.rps for p in points if p.batch == ob and p.system != "onnxruntime (floor)"]
        capacity = max(served) if served else 50.0
        full_batch_ms = (floors.get(ob) or raw_floor(onnx, ob, args.threads, 2.0, server_cpus, image)).p50_ms
        classes = {"tight": 3 * full_batch_ms, "medium": 8 * full_batch_ms, "loose": 20 * full_batch_ms}
        bodies = {c: request_body(image, deadline_ms=ms) for c, ms in classes.items()}
        set_batch(ob)
        results = {name: OverloadResult(name, 0, 0) for name in ("this runtime", "stock MLServer")}
        overload_runs = [("this runtime", ours.url, "ipa"), ("stock MLServer", stock.url, f"stock-b{ob}")]
        total = 0
        for r in range(args.rounds):
            schedule = overload_schedule(capacity, args.overload_seconds, classes, args.seed + r)
            total += len(schedule)
            for system, url, model in overload_runs if r % 2 == 0 else overload_runs[::-1]:
                results[system].add(uvloop.run(open_loop(url, model, schedule, bodies, classes, system)))
                time.sleep(2.0)  # let a backlog drain before the other system runs
        print(f"\nBursty overload: batch {ob}, {args.rounds} x {args.overload_seconds:.0f} s, capacity {capacity:.0f} "
              f"img/s, bursts at 3x (0.7 s of every 2 s), 1.4x on average, {total} requests per system")
        print("share of requests answered (HTTP 200) within their deadline, measured at the client:")
        print_overload(list(results.values()), classes)
        ours_share, stock_share = results["this runtime"].share, results["stock MLServer"].share
        share_ratio = ours_share / stock_share if stock_share else float("inf")
        print(f"share within deadline this runtime / stock MLServer: {share_ratio:.2f}x  (target >= 1.5x)")
        if args.json:
            args.json.write_text(json.dumps({
                "args": {k: str(v) for k, v in vars(args).items()},
                "points": [asdict(p) for p in points], "throughput_ratio": ratios, "cpu_efficiency_ratio": cpu_ratios,
                "overload": [{**asdict(r), "share": r.share} for r in results.values()], "share_ratio": share_ratio,
                "classes_ms": classes, "capacity": capacity,
            }, indent=2))
    finally:
        stock.stop()
        ours.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
