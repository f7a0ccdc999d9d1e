"""The whole system on one machine: the router (its own process), the local cluster, the adapter and its REST API
(`ipa up`).

    async with EmbeddedPipeline(spec, UpSettings(policy="joint", port=8080, adapter_port=8090)) as up:
        up.endpoint      # <router>/v2/models/<pipeline>/infer: the pipeline as one V2 model
        up.api_url       # the adapter's REST API (OpenAPI at /docs); writes need up.token
        await up.wait()  # until cancelled (Ctrl-C / SIGTERM through `cancel_on_signals`)

Entering: builds the demo models the stages' families need (`<models>/<family>`; a family already there is used
as it is, never written, `zoo.served_family`), starts
the router, the local cluster (or the dry-run executor), the monitor (direct scraping, or a Prometheus server),
takes and applies the first decision (the policy's for a small load), serves the API, starts the loop, and
writes `<IPA_HOME>/<pipeline>/up.json` (pid and URLs) for `ipa down`. Leaving stops all of it in reverse order:
no process, cgroup or file is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI

from adapter.control.api import ApiSettings, create_app
from adapter.control.loop import AdaptationLoop
from adapter.control.monitor import DirectSource, MetricsSource
from adapter.control.monitor_prometheus import PrometheusSettings, PrometheusSource
from adapter.control.router_process import RouterProcess
from adapter.control.service import AdapterService, AdapterSettings, DecisionRecord
from adapter.decision.policy_types import PolicyConfig, PolicySettings
from adapter.errors import UsageError
from adapter.executors import Executor
from adapter.executors.dry_run import DryRunExecutor
from adapter.executors.local.cluster import LocalCluster
from adapter.executors.local.settings import LocalClusterSettings
from adapter.executors.local.state import ipa_home, write_text_atomic
from adapter.spec import GraphSpec
from mlserver_ipa.auth import TOKEN_FILE_ENV, load_token, write_token_file
from mlserver_ipa.router import serve_app as serve_asgi

UP_FILE = "up.json"
TOKEN_FILE = "token"


@dataclass(frozen=True)
class UpSettings:
    """How `ipa up` runs a pipeline."""

    host: str = "127.0.0.1"
    """interface the router and the API listen on"""
    port: int = 8080
    """the router's port (the V2 endpoint); 0 picks a free one"""
    adapter_port: int = 8090
    """the adapter API's port; 0 picks a free one"""
    policy: str = "joint"
    predictor: str = "reactive"
    interval_s: float | None = None
    """seconds between decisions (default: the spec's `interval_s`)"""
    scale_down_intervals: int = 3
    """intervals a lower need must hold before resources are given back"""
    token: str | None = None
    """the pipeline's token (default: the file `$IPA_TOKEN_FILE` names, `$IPA_TOKEN`, else a new one); it is kept
    in `<home>/<pipeline>/token` (mode 0600) for the replicas and the user, never logged"""
    models: Path = Path("build/models")
    """where demo families are: `<models>/<family>`, built there when missing, never written when there"""
    repositories: Mapping[str, Path] = field(default_factory=dict)
    """per stage, a built model repository to use instead of `<models>/<family>`"""
    prometheus: str | None = None
    """a Prometheus server to read metrics from (it must scrape `<home>/<pipeline>/prometheus-targets.json`)"""
    dry_run: bool = False
    """start no replica: decide and record only (the router answers 503)"""
    home: Path | None = None
    """where state is kept (default `$IPA_HOME` or ./.ipa)"""
    initial_load_rps: float = 1.0
    cluster: LocalClusterSettings | None = None

    def policy_settings(self) -> PolicySettings:
        """What the adapter decides with; a simulation of this pipeline is to be given the very same."""
        return PolicySettings(policy=self.policy, scale_down_intervals=self.scale_down_intervals)


def build_models(spec: GraphSpec, settings: UpSettings, progress: Callable[[str], None] = print) -> dict[str, Path]:
    """Per stage, its model repository: given in `settings.repositories`, else the stage's demo family from
    `<models>/<family>`: built there when it is not, read as it is when it is (`zoo.served_family`: never
    written; an encoder variant without its ONNX export is served from the export cache)."""
    from mlserver_ipa.zoo import FAMILIES, BuildArgumentError, ExportCache, served_family

    repos: dict[str, Path] = {}
    wanted: dict[str, set[str]] = {}
    for stage in spec.stages:
        if stage.name in settings.repositories:
            repos[stage.name] = Path(settings.repositories[stage.name])
        elif stage.family is not None and any(v.model is None for v in stage.variants):
            if stage.family not in FAMILIES:
                raise UsageError(f"stage {stage.name!r}: unknown demo family {stage.family!r}; "
                                 f"known: {', '.join(FAMILIES)}")
            wanted.setdefault(stage.family, set()).update(v.name for v in stage.variants)
    served: dict[str, Path] = {}
    try:
        cache = ExportCache.from_environment()
    except ValueError as e:
        raise UsageError(str(e)) from e
    for family, names in wanted.items():
        variants = [v for v in FAMILIES[family].variant_names if v in names]
        progress(f"ipa up: demo models {family} ({', '.join(variants)}) in {settings.models / family}")
        try:
            served[family] = served_family(family, settings.models / family, variants, cache, progress)
        except BuildArgumentError as e:
            raise UsageError(f"demo family {family}: {e}") from e
    for stage in spec.stages:
        if stage.name not in repos and stage.family in served:
            repos[stage.name] = served[stage.family]
    return repos


@contextlib.asynccontextmanager
async def serve_app(app: FastAPI, host: str, port: int) -> AsyncIterator[str]:
    """`mlserver_ipa.router.serve_app`, with a port that cannot be had as the user's mistake."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            url = await stack.enter_async_context(serve_asgi(app, host, port))
        except OSError as e:
            raise UsageError(f"could not listen on {host}:{port} (is the port in use? --port/--adapter-port)") from e
        yield url


class EmbeddedPipeline:
    """Router, cluster, adapter and API of one pipeline in this process (see module doc)."""

    def __init__(self, spec: GraphSpec, settings: UpSettings | None = None, *,
                 on_record: Callable[[DecisionRecord], None] | None = None,
                 progress: Callable[[str], None] = print) -> None:
        self.settings = s = settings or UpSettings()
        if s.interval_s is not None:
            spec = spec.model_copy(update={"interval_s": s.interval_s})
        self.spec = spec
        self.home = s.home if s.home is not None else ipa_home()
        given = s.token or load_token()  # ValueError (an unreadable $IPA_TOKEN_FILE) is the caller's to report
        self.token_generated = given is None
        named = None if s.token else os.environ.get(TOKEN_FILE_ENV)
        self._owns_token_file = not named  # written at start, removed at stop
        self.token_file = Path(named) if named else self.home / spec.name / TOKEN_FILE
        self.token = given or ""
        self.up_file = self.home / spec.name / UP_FILE
        self.on_record, self.progress = on_record, progress
        self.router_url = self.api_url = ""
        self.grpc_address = ""
        """the pipeline over V2 gRPC (`host:port`, `tritonclient.grpc`'s form)"""
        self.cluster: LocalCluster | None = None
        self.service: AdapterService | None = None
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.router_url}/v2/models/{self.spec.name}/infer"

    async def __aenter__(self) -> EmbeddedPipeline:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self) -> None:
        s, spec = self.settings, self.spec
        spec.require_profiles()
        config = PolicyConfig.create(spec, settings=s.policy_settings())
        loop = AdaptationLoop(config, s.predictor)  # bad policy/predictor names fail here, before anything starts
        repos = {} if s.dry_run else await asyncio.to_thread(build_models, spec, s, self.progress)

        if self._owns_token_file:  # one token for every component of the pipeline
            self.token = write_token_file(self.token_file, self.token or None)
            self._stack.callback(self.token_file.unlink, missing_ok=True)
        # The router is its own process (`router_process`): a burst cannot starve the adapter's loop, nor the
        # adapter the router's. It sends only to loopback replicas the cluster started (no route passes before
        # the cluster's list), and writes to its table need the token.
        router_process = await self._stack.enter_async_context(RouterProcess(
            spec.name, [st.name for st in spec.stages], host=s.host, port=s.port, token_file=self.token_file,
            log=self.home / spec.name / "router.log", budget_window_s=spec.interval_s, require_upstreams=True))
        assert router_process.client is not None
        router = router_process.client
        self.router_url = router_process.url
        self.grpc_address = router_process.grpc_address
        executor: Executor
        if s.dry_run:
            executor = DryRunExecutor()
        else:
            cluster_settings = s.cluster or LocalClusterSettings(home=self.home)
            cluster_settings.token_file = self.token_file
            self.cluster = LocalCluster(spec, repos, router=router, router_url=self.router_url,
                                        settings=cluster_settings)
            await self._stack.enter_async_context(self.cluster)
            executor = self.cluster
        started = time.monotonic()
        monitor: MetricsSource
        if s.prometheus:
            monitor = PrometheusSource(spec.name, [st.name for st in spec.stages], PrometheusSettings(s.prometheus),
                                       started_at=started)
        else:
            cluster = self.cluster
            monitor = DirectSource(spec.name, f"{self.router_url}/metrics",
                                   cluster.metrics_urls if cluster is not None else dict, started_at=started)
        self._stack.push_async_callback(monitor.aclose)
        self.service = service = AdapterService(
            loop, executor, monitor, AdapterSettings(interval_s=spec.interval_s, initial_load_rps=s.initial_load_rps),
            on_record=self.on_record)
        first = await service.start()
        if not first.apply.ok:
            self.progress(f"ipa up: the first deployment did not fully apply: {first.reason}")
        self.api_url = await self._stack.enter_async_context(
            serve_app(create_app(ApiSettings(token=self.token, title=f"IPA adapter: {spec.name}"), service),
                      s.host, s.adapter_port))
        self._task = asyncio.create_task(service.run())
        write_text_atomic(self.up_file, json.dumps({
            "pipeline": spec.name, "pid": os.getpid(), "endpoint": self.endpoint, "router_url": self.router_url,
            "grpc_address": self.grpc_address, "api_url": self.api_url, "started_at": time.time()}, indent=2))
        self._stack.callback(self.up_file.unlink, missing_ok=True)

    async def wait(self) -> None:
        """Until the loop ends (it runs until cancelled; an error in it ends the wait with that error)."""
        assert self._task is not None, "use `async with EmbeddedPipeline(...)`"
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop the loop, the API, the cluster (every replica and cgroup) and the router. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._stack.aclose()
