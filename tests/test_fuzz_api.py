"""Fuzzing the adapter's REST API from its own OpenAPI document (schemathesis): every operation, with the
token and without, against a real server on loopback over a real service (real loop and policies, the dry-run
executor, a real router's metrics). Every answer must conform to the document: its status is documented, its
body matches the documented schema and content type, nothing is a 5xx, and what the schema allows is accepted.
Bounded: `FUZZ_EXAMPLES` (default 120) spread over the operations, about 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from adapter.control.api import ApiSettings, create_app
from adapter.control.loop import AdaptationLoop
from adapter.control.monitor import DirectSource
from adapter.control.service import AdapterService, AdapterSettings
from adapter.decision.policy_types import PolicyConfig, PolicySettings
from adapter.executors.dry_run import DryRunExecutor
from adapter.spec import parse_spec
from mlserver_ipa.router import PipelineRouter, serve, serve_app

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
PROFILE = str(Path(__file__).resolve().parents[1] / "profiles" / "resnet.csv")
SPEC = parse_spec({
    "name": "fuzz", "slo_ms": 200, "budget_cores": 2, "interval_s": 30, "accuracy": "mean",
    "objective": {"alpha": 0.1, "beta": 0.5, "delta": 0.001},
    "stages": [{"name": "classifier", "family": "resnet", "profile": PROFILE, "batch_sizes": [1, 2],
                "cores": [0.25, 0.5, 1], "max_replicas": 2,
                "variants": [{"name": "resnet18", "accuracy": 69.76}, {"name": "resnet152", "accuracy": 78.31}]}]})


@contextlib.contextmanager
def adapter_server() -> Iterator[str]:
    """The adapter API served on loopback from its own thread and event loop; yields its URL."""
    ready: list[str] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run() -> None:
        router = PipelineRouter(SPEC.name, ["classifier"])
        async with serve(router, port=0) as router_url:
            policy = AdaptationLoop(PolicyConfig.create(SPEC, settings=PolicySettings(policy="joint")), "reactive")
            monitor = DirectSource(SPEC.name, f"{router_url}/metrics", lambda: {}, started_at=0.0)
            service = AdapterService(policy, DryRunExecutor(), monitor, AdapterSettings(interval_s=30))
            await service.start()
            async with serve_app(create_app(ApiSettings(token=TOKEN), service), port=0) as url:
                ready.append(url)
                started.set()
                await stop.wait()
            await monitor.aclose()

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    assert started.wait(30), "the adapter API did not start"
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    with adapter_server() as url:
        yield url


def test_the_api_conforms_to_its_openapi(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        for headers in (AUTH, {}):  # with the token, and without: writes must answer the documented 401

            def fuzz(operation: Any, headers: dict[str, str]) -> None:
                @settings(max_examples=max(EXAMPLES // 20, 3), deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy())
                def run(case: schemathesis.Case) -> None:
                    case.call_and_validate(headers=headers, timeout=30)

                run()

            try:
                fuzz(operation, headers)
            except Exception as e:  # every operation is tried; all failures are reported together
                failures.append(f"{operation.label} ({'token' if headers else 'no token'}): {str(e)[:1500]}")
    assert not failures, "\n\n".join(failures)
