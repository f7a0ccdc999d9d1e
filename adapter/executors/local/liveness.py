"""Liveness of a local replica: whether its process still answers, probed as Kubernetes' liveness and readiness
probes would, so that a replica that hangs (stopped, deadlocked, swapping) is noticed and replaced.

A probe is `GET /v2/health/ready` on its V2 server and `GET /metrics` on its metrics server, each within
`probe_timeout_s`; a probe fails when either does not answer 200 in time. `unresponsive()` probes a serving replica
every `probe_interval_s` and returns why once `probe_failures` probes in a row failed (then the cluster takes it
out of the router, kills it and starts a fresh one of the same configuration: `LocalCluster`). A probe while the
cluster changes the replica in place (a variant switch loads a model) is not counted, nor one while it no longer
serves. A process that exits is not this module's: the cluster's watcher sees that at once.

With the defaults (`LocalClusterSettings`: every 2 s, 5 s each, 3 in a row) a replica that stops answering is
replaced within about 20 s; a replica on a fraction of a core that is busy answers its health route from its
event loop, which inference does not hold (it runs in threads), so it is not mistaken for a hung one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from adapter.executors.local.replica import ReplicaProcess


async def probe(client: httpx.AsyncClient, process: ReplicaProcess, timeout_s: float) -> str | None:
    """None when the replica answers its health and metrics routes; else what did not answer."""
    checks = {"/v2/health/ready": f"{process.url}/v2/health/ready", "/metrics": process.metrics_url}

    async def one(url: str) -> str | None:
        try:
            resp = await client.get(url, timeout=timeout_s)
        except httpx.TimeoutException:
            return f"no answer within {timeout_s:g} s"
        except httpx.HTTPError as e:
            return type(e).__name__
        return None if resp.status_code == 200 else f"HTTP {resp.status_code}"

    results = await asyncio.gather(*(one(url) for url in checks.values()))
    failed = [f"{route}: {why}" for route, why in zip(checks, results, strict=True) if why is not None]
    return "; ".join(failed) or None


async def unresponsive(process: ReplicaProcess, *, interval_s: float, timeout_s: float, failures: int,
                       serving: Callable[[], bool], changing: Callable[[], bool]) -> str | None:
    """Probe until `failures` probes in a row failed (returns why) or the replica stops `serving()` (None)."""
    failed = 0
    async with httpx.AsyncClient() as client:
        while serving():
            await asyncio.sleep(interval_s)
            if not serving():
                return None
            problem = await probe(client, process, timeout_s)
            if problem is None or changing():
                failed = 0
                continue
            failed += 1
            if failed >= failures:
                return f"{problem} ({failed} probes in a row, {interval_s:g} s apart)"
    return None
