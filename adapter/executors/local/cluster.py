"""The embedded local cluster: a pipeline's replicas as `mlserver start` processes on this machine, and the
executor that brings them to a `Decision`. With the router in the same process (what `ipa up` does):

    router = PipelineRouter(spec.name, [s.name for s in spec.stages])
    async with serve(router, host, port) as url, LocalCluster(
            spec, {"classifier": Path("build/models/resnet")}, router=router, router_url=url) as cluster:
        cancel_on_signals()                           # SIGTERM/SIGINT unwind the `async with`: nothing left behind
        result = await cluster.apply(spec, decision)  # an ApplyResult, never an exception for a failed step
        snapshot = await cluster.state()              # also in .ipa/<pipeline>/state.json for `ipa status`
        cluster.metrics_urls()                        # {stage: [replica /metrics URLs]}; the router's is url/metrics

With the router in its own process (`python -m mlserver_ipa.router ...`), pass `router=RouterClient(url)`.

Applying a decision, per stage (stages in parallel): the running replicas are matched to the decided ones
(keeping what already fits: same variant, batch and cores first, then same variant, then any); missing replicas
are started and join the router once ready; matched replicas change cores (CPU limit + runtime threads),
variant and batch in place; the router gets the decided load shares; replicas no longer needed leave the
router, finish their outstanding requests (drain) and are stopped. Each step is tried `retries` times and then
reported in the `ApplyResult`; if new replicas of a stage could not start, as many old ones are kept.

The router gets the `host:port` of every replica started before every route written (its allow-list: a route
naming anything else is refused). A replica process that exits on its own is noticed at once (a watcher awaits every process), leaves the
router and is replaced by one with the same configuration; so is one that stops answering its health or metrics
route for `probe_failures` probes in a row (`liveness`), taken out of the router first, then killed. `shutdown()` stops every process group and removes
every cgroup; replicas die with the cluster process even when it is killed (PR_SET_PDEATHSIG), and cgroups
left by a killed run are removed at the next start.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar, cast

import httpx

from adapter.decision.model import Decision, StageDecision
from adapter.errors import UsageError
from adapter.executors import ApplyResult, StepFailure
from adapter.executors.cgroups import CpuController, CpuLimitError, detect_cpu_controller
from adapter.executors.local.liveness import unresponsive
from adapter.executors.local.plan import StagePlan, match_replicas, replica_targets, variant_shares
from adapter.executors.local.replica import HOST, ReplicaConfig, ReplicaError, ReplicaProcess, stage_template
from adapter.executors.local.settings import LocalClusterSettings
from adapter.executors.local.stages import ClusterReplica, ClusterStage, RouteTarget
from adapter.executors.local.state import (
    TARGETS_FILE,
    ClusterState,
    ReplicaState,
    StageState,
    prometheus_targets,
    read_state,
    state_path,
    write_state,
    write_text_atomic,
)
from adapter.executors.ordering import CoreChange, phases
from adapter.spec import GraphSpec

T = TypeVar("T")
_STEP_ERRORS = (ReplicaError, CpuLimitError, OSError, httpx.HTTPError)


class LocalCluster:
    """A pipeline's replicas on this machine; an `Executor` (see module doc)."""

    def __init__(
        self,
        spec: GraphSpec,
        repositories: Mapping[str, Path] | None = None,
        *,
        router: RouteTarget | None = None,
        router_url: str | None = None,
        settings: LocalClusterSettings | None = None,
        controller: CpuController | None = None,
    ) -> None:
        """`repositories`: per stage name, its built model repository (see `stage_template`); `router`: the
        table the cluster keeps up to date (None: no routing, e.g. replicas used directly); `router_url`: shown
        in the state; `controller`: how CPU is limited (detected when None)."""
        self.spec = spec
        self.settings = settings or LocalClusterSettings()
        self.router = router
        self.router_url = router_url
        self.controller = controller or detect_cpu_controller()
        repos = dict(repositories or {})
        unknown = sorted(set(repos) - {s.name for s in spec.stages})
        if unknown:
            raise UsageError(f"repositories given for unknown stages: {unknown}")
        self._stages = {s.name: ClusterStage(s, stage_template(spec, s, repos.get(s.name))) for s in spec.stages}
        self.folder = self.settings.home / spec.name
        self.state_file = state_path(spec.name, self.settings.home)
        self.targets_file = self.state_file.with_name(TARGETS_FILE)
        self._targets = ""
        self._lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.replaced = {"exited": 0, "unresponsive": 0}
        """Replicas replaced since start: those that exited on their own, those that stopped answering."""
        self._last: ApplyResult = ApplyResult()
        self._started = self._closed = False

    # -- life cycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Prepare the folder, the state file and the router's allow-list (empty); no replica runs before `apply()`."""
        if self.state_file.exists():
            with contextlib.suppress(ValueError, OSError):
                old = read_state(self.state_file)
                if not old.stale and old.owner_pid != os.getpid():
                    raise UsageError(f"pipeline {self.spec.name!r} already runs here (pid {old.owner_pid}, "
                                     f"{self.state_file}); stop it first")
        removed = await asyncio.to_thread(self.controller.remove_stale)
        if removed:
            print(f"ipa: removed {len(removed)} cgroup(s) left by a killed run", file=sys.stderr)
        shutil.rmtree(self.folder / "replicas", ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._started = True
        if self.router is not None:  # the allow-list before any route: none of this cluster's replicas yet
            await self.router.set_upstreams(set())
        atexit.register(self._kill_now)
        self._spawn(self._refresh_state())
        await self._write_state()

    async def shutdown(self) -> None:
        """Stop every replica (process group) and remove its cgroup and the state file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        replicas = [r for st in self._stages.values() for r in st.replicas]
        for r in replicas:
            r.phase = "stopping"
        for st in self._stages.values():
            with contextlib.suppress(Exception):
                await self._publish(st)
        await asyncio.gather(*(r.process.stop(self.settings.stop_timeout_s) for r in replicas),
                             return_exceptions=True)
        for st in self._stages.values():
            st.replicas.clear()
        for path in (self.state_file, self.targets_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        atexit.unregister(self._kill_now)

    def _kill_now(self) -> None:
        """Last resort at interpreter exit without `shutdown()`: kill the groups, remove the cgroups."""
        for st in self._stages.values():
            for r in st.replicas:
                if r.process.pid is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(r.process.pid, signal.SIGKILL)
                if r.process.limit is not None:
                    with contextlib.suppress(Exception):
                        r.process.limit.remove()
        for path in (self.state_file, self.targets_file):
            with contextlib.suppress(OSError):
                path.unlink()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- applying a decision ---------------------------------------------------------------------------

    async def apply(self, spec: GraphSpec, decision: Decision) -> ApplyResult:
        """Bring the replicas to `decision` (module doc); failed steps are in the result, never raised."""
        if not self._started or self._closed:
            raise RuntimeError("LocalCluster.apply() needs a started cluster (use `async with` or start())")
        result = ApplyResult()
        async with self._lock:
            plans = []
            for sd in decision.stages:
                st = self._stages.get(sd.name)
                if st is None:
                    result.failed.append(StepFailure(f"stage {sd.name}", "apply", "no such stage in the cluster"))
                    continue
                with contextlib.suppress(KeyError):
                    st.spec = spec.stage(sd.name)
                plan = self._plan_stage(st, sd, result)
                if plan is not None:
                    plans.append(plan)
            held = sum(r.process.config.cores for st in self._stages.values() for r in st.replicas
                       if r.phase in ("starting", "ready", "draining"))
            order = phases([c for p in plans for c in p.changes()], spec.budget_cores, held)
            # in place first, then what adds cores and fits, the stops, and what adds cores once they are done
            await asyncio.gather(*(self._run(p, c, result) for p in plans for c in order.in_place if p.owns(c)))
            await asyncio.gather(*(self._run(p, c, result) for p in plans for c in order.make if p.owns(c)))
            await asyncio.gather(*(self._leave(p, result) for p in plans))
            if order.after:
                result.applied.append(f"{len(order.after)} change(s) that add cores waited for the stops (budget "
                                      f"{spec.budget_cores:g} cores)")
            await asyncio.gather(*(self._run(p, c, result) for p in plans for c in order.after if p.owns(c)))
        self._last = result
        await self._write_state()
        return result

    def _plan_stage(self, st: ClusterStage, sd: StageDecision, result: ApplyResult) -> StagePlan | None:
        known = {v["name"] for v in st.template.get("parameters", {}).get("extra", {}).get("variants", [])}
        unknown = sorted({g.variant for g in sd.replicas} - known)
        if unknown:
            result.failed.append(StepFailure(f"stage {st.name}", "apply", f"unknown variants {unknown}"))
            return None
        targets = replica_targets(sd, st.spec.max_batch_time_ms)
        st.targets = targets
        live = [r for r in st.replicas if r.phase == "ready"]
        pairs, to_start, to_stop = match_replicas([r.process.config for r in live], targets)
        return StagePlan(st, sd, targets, live, pairs, to_start, to_stop)

    async def _run(self, p: StagePlan, change: CoreChange, result: ApplyResult) -> None:
        """One start or in-place change of a stage's plan."""
        _, kind, c, t = cast("tuple[StagePlan, str, int, int]", change.key)
        if kind == "start":
            if await self._start_replica(p.st, p.targets[t], result) is None:
                p.failed_starts += 1
        elif kind == "pair":
            r, cfg = p.live[c], p.targets[t]
            what = f"reconfigure {r.process.id} to {cfg.variant} b{cfg.batch} {cfg.cores:g} cores"
            r.changing = True
            try:
                changed = await self._attempt(f"stage {p.st.name}", what, lambda: r.process.reconfigure(cfg), result)
            finally:
                r.changing = False
            if changed:
                result.applied.append(f"{r.process.id}: {', '.join(changed)}")
                await self._publish(p.st)

    async def _leave(self, p: StagePlan, result: ApplyResult) -> None:
        """The decided shares; the replicas to stop leave the router (as many kept as new ones failed), drain and
        stop."""
        st = p.st
        st.shares = shares = variant_shares(p.sd)
        stopping = [p.live[c] for c in p.to_stop][p.failed_starts:]
        for r in stopping:
            r.phase = "draining"

        async def publish() -> bool:
            await self._publish(st)
            return True

        if await self._attempt(f"stage {st.name}", "update router", publish, result):
            result.applied.append(f"stage {st.name}: shares {', '.join(f'{v}={x:.2f}' for v, x in shares.items())}")
        await asyncio.gather(*(self._drain_and_stop(st, r, result) for r in stopping))

    async def _attempt(
        self, target: str, action: str, step: Callable[[], Awaitable[T]], result: ApplyResult
    ) -> T | None:
        """Run a step up to `retries` times; after the last failure record it and return None."""
        last: BaseException | None = None
        for attempt in range(max(1, self.settings.retries)):
            if attempt:
                await asyncio.sleep(self.settings.retry_delay_s)
            try:
                return await step()
            except _STEP_ERRORS as e:
                last = e
        result.failed.append(StepFailure(target, action, str(last), retryable=True))
        return None

    async def _start_replica(self, st: ClusterStage, cfg: ReplicaConfig, result: ApplyResult | None,
                             restarts: int = 0) -> ClusterReplica | None:
        what = f"start {cfg.variant} b{cfg.batch} {cfg.cores:g} cores"

        async def attempt() -> ClusterReplica:
            rid = f"{st.name}-{st.next_index}"
            st.next_index += 1
            process = ReplicaProcess(rid, st.name, self.folder / "replicas" / rid, st.template,
                                     ReplicaConfig(cfg.variant, cfg.batch, cfg.cores, cfg.max_batch_time_ms),
                                     self.controller, token_file=self.settings.token_file)
            replica = ClusterReplica(process, "starting", restarts)
            st.replicas.append(replica)
            try:
                await process.start()
                await self._write_state()
                await process.wait_ready(self.settings.ready_timeout_s)
            except BaseException:
                st.replicas.remove(replica)
                await asyncio.shield(process.stop(self.settings.stop_timeout_s))
                raise
            replica.phase = "ready"
            self._spawn(self._watch(st, replica))
            if self.settings.probe_failures > 0:
                self._spawn(self._probe(st, replica))
            await self._publish(st)
            return replica

        sink = result if result is not None else ApplyResult()
        replica = await self._attempt(f"stage {st.name}", what, attempt, sink)
        if replica is not None:
            sink.applied.append(f"stage {st.name}: started {replica.process.id} ({what[6:]})")
        return replica

    async def _drain_and_stop(self, st: ClusterStage, r: ClusterReplica, result: ApplyResult) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        while self.router is not None and loop.time() < deadline and r.process.running:
            with contextlib.suppress(*_STEP_ERRORS):
                status = await self.router.stage_status(st.name)
                if not any(x.id == r.process.id and x.outstanding > 0 for x in status.replicas):
                    break
            await asyncio.sleep(0.05)
        else:
            if self.router is not None and r.process.running:
                result.failed.append(StepFailure(r.process.id, "drain", "outstanding requests after "
                                                 f"{self.settings.drain_timeout_s:g} s; stopped anyway"))
        r.phase = "stopping"
        await r.process.stop(self.settings.stop_timeout_s)
        if r in st.replicas:
            st.replicas.remove(r)
        shutil.rmtree(r.process.folder, ignore_errors=True)
        result.applied.append(f"stage {st.name}: stopped {r.process.id}")

    # -- supervision -----------------------------------------------------------------------------------

    async def _watch(self, st: ClusterStage, r: ClusterReplica) -> None:
        assert r.process.proc is not None
        code = await r.process.proc.wait()
        if r.phase in ("stopping", "unresponsive") or self._closed:
            return
        self.replaced["exited"] += 1
        replace = r.phase == "ready"
        r.phase = "crashed"
        print(f"ipa: replica {r.process.id} exited with {code}; "
              f"{'replacing it' if replace else 'it was draining'} (log: {r.process.log})", file=sys.stderr)
        with contextlib.suppress(*_STEP_ERRORS):
            await self._publish(st)
        await r.process.stop(self.settings.stop_timeout_s)  # removes its cgroup
        if replace:
            self._spawn(self._replace(st, r))
        elif r in st.replicas:
            st.replicas.remove(r)
        await self._write_state()

    async def _probe(self, st: ClusterStage, r: ClusterReplica) -> None:
        s = self.settings
        why = await unresponsive(r.process, interval_s=s.probe_interval_s, timeout_s=s.probe_timeout_s,
                                 failures=s.probe_failures, serving=lambda: r.phase == "ready" and not self._closed,
                                 changing=lambda: r.changing)
        if why is None or r.phase != "ready" or self._closed:
            return
        self.replaced["unresponsive"] += 1
        r.phase = "unresponsive"  # out of the router's table before anything else, so no request goes to it
        print(f"ipa: replica {r.process.id} stopped answering ({why}); taken out of the router, killing and "
              f"replacing it (log: {r.process.log})", file=sys.stderr)
        with contextlib.suppress(*_STEP_ERRORS):
            await self._publish(st)
        await r.process.stop(0.0)  # SIGKILL at once: a stopped process never handles SIGTERM
        self._spawn(self._replace(st, r))
        await self._write_state()

    async def _replace(self, st: ClusterStage, crashed: ClusterReplica) -> None:
        cfg = crashed.process.config
        while not self._closed:
            async with self._lock:
                # An apply meanwhile may have started the replicas it needs already (or wants fewer now).
                if sum(1 for r in st.replicas if r.phase == "ready") >= len(st.targets):
                    break
                new = await self._start_replica(st, cfg, None, restarts=crashed.restarts + 1)
            if new is not None:
                break
            await asyncio.sleep(self.settings.retry_delay_s)
        if crashed in st.replicas:
            st.replicas.remove(crashed)
        await self._write_state()

    # -- routing and state -----------------------------------------------------------------------------

    async def _publish(self, st: ClusterStage) -> None:
        """The stage's route to the router, after the allow-list of every replica started (so the route's
        replicas are on it, and a replica gone is no longer)."""
        if self.router is not None:
            async with self._publish_lock:
                await self.router.set_upstreams(self.replica_addresses())
                await self.router.update_stage(st.name, st.route(self.spec.transport))
        await self._write_state()

    def replica_addresses(self) -> set[str]:
        """`host:port` of every replica process this cluster runs (started, serving or draining): the only places
        the router may send to (a port of a replica gone may be another process's next)."""
        return {f"{HOST}:{port}" for st in self._stages.values() for r in st.replicas
                if r.phase in ("starting", "ready", "draining")
                for port in (r.process.http_port, r.process.grpc_port) if port}

    def metrics_urls(self) -> dict[str, list[str]]:
        """Per stage, the Prometheus endpoints of its ready replicas (what the adapter's monitor scrapes)."""
        return {s: [r.process.metrics_url for r in st.replicas if r.phase == "ready"]
                for s, st in self._stages.items()}

    async def state(self) -> ClusterState:
        """A snapshot: stages, replicas (pid, ports, variant, batch, cores, ready, outstanding), last apply."""
        stages = []
        for st in self._stages.values():
            outstanding: dict[str, int] = {}
            if self.router is not None:
                with contextlib.suppress(*_STEP_ERRORS):
                    outstanding = {x.id: x.outstanding for x in (await self.router.stage_status(st.name)).replicas}
            rows = []
            for r in st.replicas:
                p = r.process
                rows.append(ReplicaState(
                    id=p.id, phase=r.phase, pid=p.pid, url=p.url, http_port=p.http_port, grpc_port=p.grpc_port,
                    metrics_port=p.metrics_port, metrics_url=p.metrics_url, variant=p.config.variant,
                    batch=p.config.batch, cores=p.config.cores, threads=p.config.threads,
                    cpu_limit=self.controller.kind, cgroup=str(p.limit.path) if p.limit and p.limit.path else None,
                    ready=r.phase == "ready", outstanding=outstanding.get(p.id, 0), started_at=p.started_at,
                    restarts=r.restarts, log=str(p.log)))
            stages.append(StageState(name=st.name, model=st.name, load_shares=dict(st.shares), replicas=rows))
        return ClusterState(
            pipeline=self.spec.name, owner_pid=os.getpid(), updated_at=time.time(), cpu_limit=self.controller.kind,
            router_url=self.router_url, stages=stages, crashes=self.replaced["exited"], unresponsive=self.replaced["unresponsive"],
            last_apply=list(self._last.applied),
            last_failures=[f"{f.target}: {f.action}: {f.reason}" for f in self._last.failed])

    async def _write_state(self) -> None:
        if self._started and not self._closed:
            state = await self.state()
            write_state(self.state_file, state)
            targets = json.dumps(prometheus_targets(state), indent=2)
            if targets != self._targets:  # Prometheus re-reads the file on change: write only then
                write_text_atomic(self.targets_file, targets)
                self._targets = targets

    async def _refresh_state(self) -> None:
        while True:
            await asyncio.sleep(self.settings.state_interval_s)
            with contextlib.suppress(OSError):
                await self._write_state()


LocalExecutor = LocalCluster
"""The local cluster is the local executor: `await LocalExecutor(spec, ...).apply(spec, decision)`."""
