"""The Kubernetes executor: brings a Seldon Core pipeline to a `Decision` with SeldonDeployment patches, in-place
pod resizes and the runtime's control endpoint.

    client = KubernetesClient.from_config()
    executor = KubernetesExecutor(client, KubernetesSettings(namespace="ipa", mode="in-place"))
    result = await executor.apply(spec, decision)     # ApplyResult: what took effect, what did not and why
    result = await executor.reconcile(spec)           # bring pods back to the plan written on the deployment

Two modes:

- `in-place` (default): the SeldonDeployment gets the replica counts (and the traffic split of a multi-variant
  stage); each running pod then gets its CPU through the `resize` subresource (Kubernetes >= 1.33), waited for
  until the kubelet has actuated it (pod conditions `PodResizePending` / `PodResizeInProgress`; `Infeasible` is
  reported at once, `Deferred` after `resize_timeout_s`), and then its variant, batch size, batch window and
  thread count (one per core it now has) through the runtime's control endpoint. No pod restarts. Pods that
  shrink go first, so the CPU they free is there for the pods that grow; a pod grows only while every pod's
  CPU (pending and terminating ones included) stays within `budget_cores`, else it keeps its CPU this interval
  and the step is reported retryable (`adapter.executors.ordering` states the rule the local executor follows).
- `rollout` (IPA's original way): variant, batch, threads and CPU go into the pod template of the
  SeldonDeployment too, and Seldon rolls the pods.

Either way the plan is written on the SeldonDeployment (annotation `ipa/plan`): pods that Kubernetes recreates
start from the template and are brought back to the plan at the next `apply` or `reconcile`. The deployment
patch carries the resourceVersion; a 409 is retried on a fresh read. 404 (gone), 403 (RBAC) and 422 (rejected)
are reported with the object and the API server's reason, and the executor carries on with what it can do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from adapter.decision.model import Decision
from adapter.executors import ApplyResult, StepFailure
from adapter.kubernetes.client import KubernetesClient, KubernetesError
from adapter.kubernetes.patch import deployment_patch
from adapter.kubernetes.seldon import (
    LABEL_GRAPH,
    LABEL_PREDICTOR,
    LABEL_STAGE,
    PlanError,
    PredictorPlan,
    ReplicaConfig,
    cpu_quantity,
    parse_cpu,
    plan_deployment,
    plan_from_annotation,
    threads_for,
)
from adapter.spec import GraphSpec
from mlserver_ipa.client import ControlError, V2Client, V2TransportError

Mode = Literal["in-place", "rollout"]


@dataclass(frozen=True)
class KubernetesSettings:
    """Where the pipeline runs on Kubernetes and how the executor changes it."""

    namespace: str = "default"
    """Namespace of the SeldonDeployment and its pods."""
    deployment: str | None = None
    """Name of the SeldonDeployment; the graph's name when None (what `ipa manifests` renders)."""
    mode: Mode = "in-place"
    """`in-place`: replicas by patching, CPU by pod resize, variant/batch/threads by the runtime's control
    endpoint, no restarts. `rollout`: everything into the pod template; Seldon rolls the pods."""
    resize_timeout_s: float = 60.0
    """How long to wait for the kubelet to actuate a resize (a Deferred one may become possible meanwhile)."""
    poll_interval_s: float = 1.0
    """Time between two reads of a pod while waiting for its resize."""
    conflict_retries: int = 3
    """Fresh reads and retries of the deployment patch after a 409 Conflict."""
    control_timeout_s: float = 30.0
    """Timeout of one call to a runtime's control endpoint (a variant switch builds a session first)."""


async def runtime_control(base_url: str, model: str, changes: Mapping[str, Any] | None = None, *,
                          timeout_s: float = 30.0) -> dict[str, Any]:
    """The runtime's control endpoint (`/v2/models/<model>/control`, mlserver_ipa.client): its state when
    `changes` is empty, else the state after applying them (variant, batch_size, max_batch_time_ms, threads)."""
    async with V2Client(base_url, timeout=timeout_s) as client:
        return await client.control(model, **dict(changes or {}))


def _container(pod: Mapping[str, Any], name: str, where: str = "spec") -> Mapping[str, Any]:
    key = "containers" if where == "spec" else "containerStatuses"
    for c in (pod.get(where) or {}).get(key) or []:
        if c.get("name") == name:
            return dict(c)
    return {}


def _cpu(resources: Mapping[str, Any] | None) -> float | None:
    resources = resources or {}
    return parse_cpu((resources.get("limits") or {}).get("cpu") or (resources.get("requests") or {}).get("cpu"))


def resize_state(pod: Mapping[str, Any], container: str, cores: float) -> tuple[str, str]:
    """Where a pod's resize to `cores` stands: `done`, `waiting`, `deferred`, `infeasible` or `error`, and the
    kubelet's message. Kubernetes >= 1.33 reports it in pod conditions; <= 1.32 in `status.resize`."""
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    pending, progress = conditions.get("PodResizePending"), conditions.get("PodResizeInProgress")
    legacy = status.get("resize")
    if pending is not None or legacy in ("Deferred", "Infeasible"):
        reason = (pending or {}).get("reason") or legacy
        message = (pending or {}).get("message") or ""
        return ("infeasible" if reason == "Infeasible" else "deferred"), message
    if progress is not None:
        if progress.get("reason") == "Error":
            return "error", str(progress.get("message") or "")
        return "waiting", str(progress.get("message") or "")
    generation, observed = (pod.get("metadata") or {}).get("generation"), status.get("observedGeneration")
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        return "waiting", "the kubelet has not seen the change yet"
    if legacy in ("Proposed", "InProgress"):
        return "waiting", f"status.resize {legacy}"
    actual = _cpu(_container(pod, container, "status").get("resources"))
    if actual is None:
        return "done", ""  # a kubelet that reports no actual resources: the conditions are all there is
    if abs(actual - cores) < 1e-6:
        return "done", ""
    return "waiting", f"running with {actual:g} cores"


@dataclass(eq=False)
class _PodJob:
    pod: dict[str, Any]
    stage: str
    config: ReplicaConfig
    state: dict[str, Any]

    @property
    def name(self) -> str:
        return str((self.pod.get("metadata") or {}).get("name"))

    @property
    def cores(self) -> float | None:
        return _cpu(_container(self.pod, self.stage).get("resources"))


class KubernetesExecutor:
    """Applies decisions to one SeldonDeployment; see the module docstring."""

    def __init__(self, client: KubernetesClient, settings: KubernetesSettings | None = None, *,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.settings = settings or KubernetesSettings()
        self._sleep, self._clock = sleep, clock

    def _name(self, spec: GraphSpec) -> str:
        return self.settings.deployment or spec.name

    async def apply(self, spec: GraphSpec, decision: Decision) -> ApplyResult:
        result = ApplyResult()
        target = f"seldondeployment/{self._name(spec)}"
        live = await self._read(spec, result)
        if live is None:
            return result
        try:
            plan = plan_deployment(spec, decision, plan_from_annotation(live) or ())
        except PlanError as e:
            result.failed.append(StepFailure(target, "plan the decision", f"decision {e}"))
            return result
        await self._write(spec, plan, live, result)
        if self.settings.mode == "in-place":
            await self._configure_pods(spec, plan, result)
        return result

    async def reconcile(self, spec: GraphSpec) -> ApplyResult:
        """Bring the running pods to the plan written on the SeldonDeployment (in-place mode; in rollout mode
        the pod template already holds it)."""
        result = ApplyResult()
        live = await self._read(spec, result)
        if live is None:
            return result
        plan = plan_from_annotation(live)
        if plan is None:
            result.failed.append(StepFailure(f"seldondeployment/{self._name(spec)}", "read the plan",
                                             "no readable ipa/plan annotation: apply a decision first"))
        elif self.settings.mode == "in-place":
            await self._configure_pods(spec, plan, result)
        return result

    # -- the SeldonDeployment -----------------------------------------------------------------------------

    async def _read(self, spec: GraphSpec, result: ApplyResult) -> dict[str, Any] | None:
        try:
            return await self.client.get_seldon_deployment(self.settings.namespace, self._name(spec))
        except KubernetesError as e:
            result.failed.append(StepFailure(e.target, "read", e.describe(), e.retryable))
            return None

    async def _write(self, spec: GraphSpec, plan: Sequence[PredictorPlan], live: dict[str, Any],
                     result: ApplyResult) -> None:
        rollout = self.settings.mode == "rollout"
        summary = ", ".join(f"{p.name}/{c.stage}={c.replicas}" for p in plan for c in p.components)
        if len(plan) > 1:
            summary += "; traffic " + ", ".join(f"{p.name}={p.traffic}%" for p in plan)
        if rollout:
            for p in plan:
                for c in p.components:
                    if len(c.groups) > 1:
                        t = c.template
                        result.failed.append(StepFailure(
                            f"seldondeployment/{self._name(spec)}", f"roll out {len(c.groups)} configurations of "
                            f"stage {c.stage}", f"a pod template holds one: all {c.replicas} replicas run {t.variant} "
                            f"batch {t.batch} on {t.cores:g} cores; --mode in-place runs several"))
        for attempt in range(self.settings.conflict_retries + 1):
            patch = deployment_patch(live, spec, plan, rollout=rollout)
            if patch is None:
                return
            try:
                await self.client.patch_seldon_deployment(self.settings.namespace, self._name(spec), patch)
            except KubernetesError as e:
                if e.status == 409 and attempt < self.settings.conflict_retries:
                    fresh = await self._read(spec, result)
                    if fresh is None:
                        return
                    live = fresh
                    continue
                result.failed.append(StepFailure(e.target, f"patch replicas {summary}", e.describe(), e.retryable))
                return
            result.applied.append(f"seldondeployment/{self._name(spec)}: replicas {summary}"
                                  + (" (rollout of the pod templates)" if rollout and "spec" in patch else ""))
            return

    # -- the pods -----------------------------------------------------------------------------------------

    async def _configure_pods(self, spec: GraphSpec, plan: Sequence[PredictorPlan], result: ApplyResult) -> None:
        graph = spec.name  # the pods' label, whatever the SeldonDeployment is called
        try:
            pods = await self.client.list_pods(self.settings.namespace, f"{LABEL_GRAPH}={graph}")
        except KubernetesError as e:
            result.failed.append(StepFailure(e.target, "list the pipeline's pods", e.describe(), e.retryable))
            return
        jobs: list[_PodJob] = []
        for p in plan:
            for c in p.components:
                members = [pod for pod in pods if _labels(pod).get(LABEL_PREDICTOR) == p.name
                           and _labels(pod).get(LABEL_STAGE) == c.stage and _labels(pod).get(LABEL_GRAPH) == graph
                           and not (pod.get("metadata") or {}).get("deletionTimestamp")]
                running = []
                for pod in sorted(members, key=lambda x: str((x.get("metadata") or {}).get("name"))):
                    if (pod.get("status") or {}).get("phase") == "Running" and (pod.get("status") or {}).get("podIP"):
                        running.append(pod)
                    else:
                        name = (pod.get("metadata") or {}).get("name")
                        phase = (pod.get("status") or {}).get("phase") or "unknown"
                        result.failed.append(StepFailure(f"pod/{name}", "configure", f"not running yet ({phase}); "
                                                         "configured at the next interval", retryable=True))
                states = await asyncio.gather(*(self._state(pod, c.stage, result) for pod in running))
                known = [(pod, s) for pod, s in zip(running, states, strict=True) if s is not None]
                jobs += _assign(known, c.stage, c.groups)
        shrinking = [j for j in jobs if j.cores is not None and j.config.cores < j.cores - 1e-9]
        await asyncio.gather(*(self._configure(j, result) for j in shrinking))
        # what grows only within the budget, on top of every pod's CPU (pending and terminating pods hold theirs)
        held = sum(_pod_cpu(pod) for pod in pods) - sum((j.cores or 0.0) - j.config.cores for j in shrinking)
        rest = []
        for j in (j for j in jobs if j not in shrinking):
            grow = j.config.cores - (j.cores or 0.0) if j.cores is not None else 0.0
            if grow > 1e-9 and held + grow > spec.budget_cores * (1 + 1e-9) + 1e-9:
                result.failed.append(StepFailure(
                    f"pod/{j.name}", f"resize cpu to {cpu_quantity(j.config.cores)}",
                    f"waits for the budget: {held:g} of {spec.budget_cores:g} cores held; resized at the next "
                    "interval, once pods that shrink or stop have freed them", retryable=True))
                j = _PodJob(j.pod, j.stage, replace(j.config, cores=j.cores or j.config.cores), j.state)
            else:
                held += max(grow, 0.0)
            rest.append(j)
        await asyncio.gather(*(self._configure(j, result) for j in rest))

    def _base_url(self, pod: Mapping[str, Any], stage: str) -> str:
        container = _container(pod, stage)
        port = next((p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == "http"), None)
        if port is None:
            port = next((e.get("value") for e in container.get("env") or [] if e.get("name") == "MLSERVER_HTTP_PORT"),
                        9000)
        ip = str((pod.get("status") or {}).get("podIP"))
        return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"

    async def _control(self, pod: Mapping[str, Any], stage: str, changes: Mapping[str, Any] | None,
                       result: ApplyResult, action: str) -> dict[str, Any] | None:
        target = f"pod/{(pod.get('metadata') or {}).get('name')}"
        try:
            return await runtime_control(self._base_url(pod, stage), stage, changes,
                                         timeout_s=self.settings.control_timeout_s)
        except V2TransportError as e:
            result.failed.append(StepFailure(target, action, f"runtime did not answer: {e}", retryable=True))
        except ControlError as e:  # 404: the model is not loaded (yet); 4xx otherwise: the change is refused
            result.failed.append(StepFailure(target, action, f"runtime refused: {e}",
                                             retryable=e.status >= 500 or e.status == 404))
        return None

    async def _state(self, pod: Mapping[str, Any], stage: str, result: ApplyResult) -> dict[str, Any] | None:
        return await self._control(pod, stage, None, result, "read the runtime's configuration")

    async def _configure(self, job: _PodJob, result: ApplyResult) -> None:
        target, config = f"pod/{job.name}", job.config
        cores = job.cores
        if cores is None or abs(cores - config.cores) > 1e-9:
            cores = await self._resize(job, result)
            if cores is None:
                return  # the pod is gone
        changes: dict[str, Any] = {}
        wanted = {"variant": config.variant, "batch_size": config.batch,
                  "max_batch_time_ms": config.max_batch_time_ms, "threads": threads_for(cores)}
        for key, value in wanted.items():
            if job.state.get(key) != value:
                changes[key] = value
        if not changes:
            return
        action = ", ".join(f"{k} {job.state.get(k)} -> {v}" for k, v in changes.items())
        if await self._control(job.pod, job.stage, changes, result, action) is not None:
            result.applied.append(f"{target}: {action}")

    async def _resize(self, job: _PodJob, result: ApplyResult) -> float | None:
        """Resize the pod's CPU to the plan and wait until the kubelet has done it; the cores it then runs
        with (the old ones if the resize failed), or None if the pod is gone."""
        target, want, ns = f"pod/{job.name}", job.config.cores, self.settings.namespace
        action = f"resize cpu {cpu_quantity(job.cores or 0)} -> {cpu_quantity(want)}"
        quantity = cpu_quantity(want)
        patch = {"spec": {"containers": [{"name": job.stage, "resources": {
            "requests": {"cpu": quantity}, "limits": {"cpu": quantity}}}]}}
        actual = _cpu(_container(job.pod, job.stage, "status").get("resources")) or job.cores or want
        try:
            await self.client.resize_pod(ns, job.name, patch)
        except KubernetesError as e:
            result.failed.append(StepFailure(target, action, e.describe(), e.retryable))
            return None if e.status == 404 else actual
        deadline = self._clock() + self.settings.resize_timeout_s
        while True:
            try:
                pod = await self.client.get_pod(ns, job.name)
            except KubernetesError as e:
                result.failed.append(StepFailure(target, action, e.describe(), e.retryable))
                return None if e.status == 404 else actual
            state, message = resize_state(pod, job.stage, want)
            actual = _cpu(_container(pod, job.stage, "status").get("resources")) or actual
            if state == "done":
                result.applied.append(f"{target}: {action}")
                return want
            if state in ("infeasible", "error"):
                what = "Infeasible" if state == "infeasible" else "failed"
                result.failed.append(StepFailure(target, action, f"resize {what}: {message}", state == "error"))
                return actual
            if self._clock() >= deadline:
                what = "Deferred" if state == "deferred" else "not done"
                result.failed.append(StepFailure(
                    target, action, f"resize {what} after {self.settings.resize_timeout_s:g} s: {message}", True))
                return actual
            await self._sleep(self.settings.poll_interval_s)


def _pod_cpu(pod: Mapping[str, Any]) -> float:
    """The CPU a pod of the pipeline holds: its stage container's request (limit), 0 when it states none."""
    stage = _labels(pod).get(LABEL_STAGE)
    if not stage:
        return 0.0
    try:
        return _cpu(_container(pod, stage).get("resources")) or 0.0
    except (KeyError, StopIteration, TypeError, ValueError):
        return 0.0


def _labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("labels") or {}


def _assign(pods: Sequence[tuple[dict[str, Any], dict[str, Any]]], stage: str,
            groups: Sequence[tuple[ReplicaConfig, int]]) -> list[_PodJob]:
    """Give each running pod a replica configuration, keeping pods on what they already run where the counts
    allow (same variant, batch and cores first, then same variant, then any); pods beyond the planned count
    (a scale-down in progress) get the template's configuration."""
    free = list(pods)
    need = {i: n for i, (_, n) in enumerate(groups)}
    jobs: list[_PodJob] = []

    def fits(pod: dict[str, Any], state: dict[str, Any], config: ReplicaConfig, level: int) -> bool:
        if level == 2:
            return True
        cores = _cpu(_container(pod, stage).get("resources"))
        same_variant = state.get("variant") == config.variant
        return same_variant if level == 1 else (
            same_variant and state.get("batch_size") == config.batch and cores == config.cores)

    for level in range(3):
        for i, (config, _) in enumerate(groups):
            for pod, state in list(free):
                if need[i] > 0 and fits(pod, state, config, level):
                    jobs.append(_PodJob(pod, stage, config, state))
                    free.remove((pod, state))
                    need[i] -= 1
    jobs += [_PodJob(pod, stage, groups[0][0], state) for pod, state in free]
    return jobs
