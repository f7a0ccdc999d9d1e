"""`ipa demo runtime`: serve a variant family, show what the runtime does with a burst of mixed deadlines.

    ipa demo runtime [--models build/models/resnet] [--requests 300] [--switch-to VARIANT] [--keep-log]

(`ipa demo` alone is the adaptive demo, `adapter.cli.demo`; this one shows one replica's runtime.)

Builds the ResNet family into `--models` if it is not there, starts `mlserver start` on free loopback ports in
its own process group (from a run folder beside the repository: the repository is never modified), sets the
batch size through the control endpoint, sends a burst with three deadline classes and priorities (calm, a
burst at about twice the measured capacity, calm again), switches the active variant in place in the middle,
prints what happened per class, and stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from adapter.errors import UsageError
from mlserver_ipa.auth import TOKEN_FILE_ENV, bearer, write_token_file
from mlserver_ipa.client import InferResult, V2Client, V2TransportError

DEFAULT_MODELS = Path("build/models/resnet")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `runtime` to the subcommands of `ipa demo`."""
    p = subparsers.add_parser(
        "runtime",
        help="the runtime alone: serve a variant family and send it a burst with mixed deadlines",
        description="Build the ResNet family if missing, serve it with mlserver on free loopback ports, set the "
        "batch size in place, send a burst with three deadline classes and priorities, switch the variant "
        "midway, print what happened per class, and stop the server.",
    )
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS,
                   help=f"model repository to serve (built with the ResNet family if missing; default {DEFAULT_MODELS})")
    p.add_argument("--requests", type=int, default=300, help="requests in the burst (default 300)")
    p.add_argument("--batch-size", type=int, default=4, help="batch size set through the control endpoint")
    p.add_argument("--switch-to", help="variant switched to midway (default: the next one in the family)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep-log", action="store_true", help="print where the server log was kept")
    p.set_defaults(func=run)


# -- the server ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoServer:
    """The replica server (`python -m mlserver_ipa.server`) serving `repo` on free loopback ports, in its own
    process group, with a token of its own for control changes (`self.token`)."""

    def __init__(self, repo: Path, run_dir: Path) -> None:
        self.http_port, self.grpc_port, self.metrics_port = _free_port(), _free_port(), _free_port()
        run_dir.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {}
        if (repo / "settings.json").is_file():
            settings = json.loads((repo / "settings.json").read_text())
        settings.update(parallel_workers=0, host="127.0.0.1", http_port=self.http_port,
                        grpc_port=self.grpc_port, metrics_port=self.metrics_port)
        (run_dir / "settings.json").write_text(json.dumps(settings, indent=2))
        for child in repo.iterdir():
            if child.name != "settings.json":
                (run_dir / child.name).symlink_to(child.resolve(), target_is_directory=child.is_dir())
        self.log = run_dir / "mlserver.log"
        token_file = run_dir.parent / "token"
        self.token = write_token_file(token_file)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlserver_ipa.server", str(run_dir)],
                stdout=out, stderr=subprocess.STDOUT, cwd=run_dir, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_FILE_ENV: str(token_file)},
            )
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, model: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UsageError(f"mlserver exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                index = httpx.post(f"{self.url}/v2/repository/index", json={}, timeout=2).json()
                state = {m["name"]: m for m in index}.get(model, {})
                if state.get("state") == "READY":
                    return
                if state.get("state") == "FAILED":
                    raise UsageError(f"model {model} failed to load: {state.get('reason')}\n{self.log_tail()}")
            time.sleep(0.3)
        raise UsageError(f"mlserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _find_model(repo: Path) -> tuple[str, list[dict[str, Any]], str]:
    """The first VariantRuntime model in `repo`: its name, variants and active variant."""
    for path in sorted(repo.rglob("model-settings.json")):
        settings = json.loads(path.read_text())
        extra = (settings.get("parameters") or {}).get("extra") or {}
        if "variants" in extra:
            variants = extra["variants"]
            return settings.get("name", path.parent.name), variants, extra.get("active") or variants[0]["name"]
    raise UsageError(f"{repo}: no model served by mlserver_ipa.runtime.VariantRuntime (no parameters.extra.variants)")


def _ensure_models(repo: Path) -> None:
    if any(repo.rglob("model-settings.json")):
        return
    from mlserver_ipa.zoo import build_repository

    print(f"building the ResNet family into {repo} (once; a few minutes) ...", flush=True)
    build_repository("resnet", repo, progress=lambda v: print(f"  {v.name}: {v.size_bytes / 1e6:.0f} MB", flush=True))


# -- the burst ----------------------------------------------------------------------------------------------


@dataclass
class DeadlineClass:
    name: str
    deadline_ms: float | None
    priority: int
    sent: int = 0
    in_time: int = 0
    late: int = 0
    """Answered after the deadline, as the client measured it."""
    late_here: int = 0
    """Of those, answered late by the runtime's own clock (it said so: response `deadline_ms` below 0)."""
    dropped: int = 0
    overloaded: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class BurstLog:
    batch_sizes: Counter[int] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    error_texts: Counter[str] = field(default_factory=Counter)


def _schedule(n: int, capacity: float, rng: random.Random) -> list[float]:
    """Send times: a calm 40 % at 0.6x capacity, a burst of 30 % at 2x, a calm 30 % at 0.6x."""
    times, t = [], 0.0
    for i in range(n):
        rate = capacity * (2.0 if 0.4 * n <= i < 0.7 * n else 0.6)
        t += rng.expovariate(rate)
        times.append(t)
    return times


async def _burst(url: str, token: str, model: str, shape: list[int], classes: list[DeadlineClass], n: int,
                 capacity: float,
                 switch_to: str | None, seed: int) -> tuple[BurstLog, dict[str, Any] | None, int]:
    rng = random.Random(seed)
    times = _schedule(n, capacity, rng)
    picks = [rng.choice(classes) for _ in range(n)]
    image = np.random.default_rng(seed).standard_normal([1, *shape[1:]]).astype(np.float32)
    bodies = {c.name: V2Client.encode_request(image, deadline_ms=c.deadline_ms, priority=c.priority)
              for c in classes}
    path = V2Client.infer_path(model)
    log = BurstLog()
    switch: dict[str, Any] | None = None
    failed_during_switch = 0
    switching = False
    async with V2Client(url, max_connections=512, timeout=60, token=token) as client:
        start = time.perf_counter()

        async def one(at: float, cls: DeadlineClass) -> None:
            nonlocal failed_during_switch
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            cls.sent += 1
            t0 = time.perf_counter()
            try:
                result: InferResult = await client.infer_raw(path, bodies[cls.name])
            except V2TransportError as e:
                result = InferResult(0, error=str(e))
            ms = (time.perf_counter() - t0) * 1000
            if result.ok:
                cls.latencies.append(ms)
                log.batch_sizes[int(result.parameters.get("batch_size", 0))] += 1
                log.variants[str(result.parameters.get("variant"))] += 1
                if cls.deadline_ms is not None and ms > cls.deadline_ms:
                    cls.late += 1
                    cls.late_here += float(result.parameters.get("deadline_ms", 0)) < 0
                else:
                    cls.in_time += 1
            elif result.status == 504:
                cls.dropped += 1
            elif result.status == 503:
                cls.overloaded += 1
            else:
                cls.errors += 1
                log.error_texts[f"{result.status}: {result.error}"] += 1
                failed_during_switch += switching

        async def switcher() -> None:
            nonlocal switch, switching
            if switch_to is None:
                return
            await asyncio.sleep(max(0.0, start + times[n // 2] - time.perf_counter()))
            switching = True
            t0 = time.perf_counter()
            state = await client.control(model, variant=switch_to)
            switching = False
            switch = {"to": switch_to, "ms": (time.perf_counter() - t0) * 1000, "state": state}

        await asyncio.gather(switcher(), *(one(at, cls) for at, cls in zip(times, picks, strict=True)))
    return log, switch, failed_during_switch


async def _calibrate(url: str, model: str, shape: list[int], concurrency: int, seconds: float = 2.0) -> float:
    """Images per second the server answers in a closed loop (HTTP and JSON included, on this machine now)."""
    body = V2Client.encode_request(np.zeros([1, *shape[1:]], dtype=np.float32))
    path = V2Client.infer_path(model)
    served = 0
    async with V2Client(url, max_connections=concurrency) as client:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal served
            while time.perf_counter() < end:
                ok = (await client.infer_raw(path, body)).ok  # awaited first: `served += await ...` loses counts
                served += ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return served / seconds


def _pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "-"


def _print_table(classes: list[DeadlineClass]) -> None:
    head = (f"{'class':<12}{'deadline':>10}{'priority':>9}{'sent':>6}{'in time':>9}{'late':>6}{'(here)':>8}"
            f"{'dropped':>9}{'overload':>9}{'errors':>7}{'p50 ms':>8}{'p99 ms':>8}")
    print(head)
    print("-" * len(head))
    for c in classes:
        deadline = f"{c.deadline_ms:.0f} ms" if c.deadline_ms is not None else "none"
        print(f"{c.name:<12}{deadline:>10}{c.priority:>9}{c.sent:>6}{c.in_time:>9}{c.late:>6}{c.late_here:>8}"
              f"{c.dropped:>9}{c.overloaded:>9}{c.errors:>7}{_pct(c.latencies, 50):>8}{_pct(c.latencies, 99):>8}")
    print("in time / late: measured at the client; (here): late by the runtime's own clock. The difference is\n"
          "time spent outside the runtime (HTTP, JSON parsing, this client) on a busy machine. dropped: HTTP 504,\n"
          "the runtime saw the deadline could not be met; overload: HTTP 503, its queue was full.")


def run(args: argparse.Namespace) -> int:
    repo: Path = args.models
    if args.requests < 10:
        raise UsageError("--requests: at least 10")
    if args.batch_size < 1:
        raise UsageError("--batch-size: at least 1")
    _ensure_models(repo)
    model, variants, active = _find_model(repo)
    names = [v["name"] for v in variants]
    switch_to = args.switch_to
    if switch_to is None and len(names) > 1:
        switch_to = names[(names.index(active) + 1) % len(names)]
    if switch_to is not None and switch_to not in names:
        raise UsageError(f"--switch-to: {model} has no variant {switch_to!r}; it has {', '.join(names)}")

    run_dir = Path(tempfile.mkdtemp(prefix="ipa-demo-"))
    server = DemoServer(repo.resolve(), run_dir / "repo")
    try:
        print(f"starting mlserver for {repo} on {server.url} ...", flush=True)
        server.wait_ready(model)
        meta = httpx.get(f"{server.url}/v2/models/{model}", timeout=10).json()
        shape = meta["inputs"][0]["shape"]
        state = httpx.post(f"{server.url}/v2/models/{model}/control", headers=bearer(server.token),
                           json={"batch_size": args.batch_size, "max_batch_time_ms": 5}, timeout=120).json()
        t_batch = state["service_time_ms"][str(args.batch_size)]
        capacity = asyncio.run(_calibrate(server.url, model, shape, 2 * args.batch_size))
        if capacity <= 0:
            raise UsageError(f"the server answered no request while calibrating:\n{server.log_tail()}")
        classes = [
            DeadlineClass("interactive", max(50.0, 4 * t_batch), 0),
            DeadlineClass("standard", max(150.0, 12 * t_batch), 1),
            DeadlineClass("background", None, 2),
        ]
        accuracy = ", ".join(f"{v['name']} ({v.get('accuracy', '?')})" for v in variants)
        print(f"model {model}: variants {accuracy}; active {active}, batch size {args.batch_size}, "
              f"{t_batch:.1f} ms per batch of {args.batch_size}; answers ~{capacity:.0f} img/s over HTTP here now")
        print(f"sending {args.requests} requests: calm at 0.6x, a burst at 2x that capacity, calm again; "
              f"switching to {switch_to or '(no other variant)'} midway\n", flush=True)
        log, switch, failed_during_switch = asyncio.run(
            _burst(server.url, server.token, model, shape, classes, args.requests, capacity, switch_to, args.seed))
        _print_table(classes)
        print()
        print("batch sizes seen: " + ", ".join(f"{b}: {n}" for b, n in sorted(log.batch_sizes.items())))
        print("served by:        " + ", ".join(f"{v}: {n}" for v, n in log.variants.items()))
        if switch is not None:
            print(f"variant switch:   {active} -> {switch['to']} in {switch['ms']:.0f} ms (new session built and "
                  f"warmed beside the old one), {failed_during_switch} failed requests during the switch")
        errors = sum(c.errors for c in classes)
        print(f"errors other than deadline (504) and overload (503): {errors}")
        for text, n in log.error_texts.most_common(3):
            print(f"  {n} x {text}")
        metrics = httpx.get(server.metrics_url, timeout=10).text
        dropped = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("ipa_requests_dropped_total{"))
        print(f"server metrics:   ipa_requests_dropped_total = {dropped:.0f} (see {server.metrics_url} while it runs)")
        return 0 if errors == 0 else 1
    finally:
        server.stop()
        if args.keep_log:
            print(f"server log: {server.log}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
