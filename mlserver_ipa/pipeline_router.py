"""The pipeline router's core: one request through every stage of the pipeline, as `mlserver_ipa.router` serves it.

Per request, per stage: a replica is picked from the routing table (`route_table`), the request waits for one of
its in-flight slots in deadline order (`dispatch`), the absolute deadline (`deadlines`) is carried to the stage,
and the stage's `output` becomes the next stage's `input`. A stage is called over V2 gRPC with raw tensor
contents (`grpc_hop`) when its route says `protocol: grpc` (the default) and the replica has a `grpc_port`, else
over REST/JSON; tensors keep the form they came in (`wire_tensors`: raw bytes or lists) until a hop or the
answer needs the other one. Arrivals are counted as they come in, and per-pipeline
request counts, latency histograms, outstanding requests and the budgets requests arrive with
(`arrival_budgets`) are exported for Prometheus. The HTTP app, the
client of its table and the process entry point are in `mlserver_ipa.router`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mlserver_ipa.arrival_budgets import ArrivalBudgets
from mlserver_ipa.deadlines import (
    DEADLINE_HEADER,
    DEADLINE_PARAM,
    RELATIVE_PARAM,
    BadDeadline,
    Clocks,
    absolute_deadline,
    format_epoch_ms,
    parse_epoch_ms,
)
from mlserver_ipa.dispatch import DispatchSettings, Shed, StageDispatch
from mlserver_ipa.grpc_hop import GrpcHop
from mlserver_ipa.route_table import Pick, RouterStatus, RouteTable, StageRoute, StageStatus, Upstreams
from mlserver_ipa.settings import MAX_DEADLINE_MS
from mlserver_ipa.wire_tensors import compact, listed_all

ROUTER_WRITES = [("PUT", r"/router/stages/[^/]+"), ("PUT", r"/router/upstreams")]  # what changes the router
MAX_REQUEST_ID_CHARS = 128

CHAIN_OUTPUT, CHAIN_INPUT = "output", "input"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


class PipelineError(Exception):
    """A request the pipeline could not answer; `status` is the HTTP status it is answered with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Arrival:
    """When a request came in (before its body was read) and the deadline header it came with."""

    monotonic: float
    epoch_ms: float
    deadline_header: str | None = None


class _Retry(Exception):
    """A replica failed in a way another replica of the stage may not (gone, overloaded)."""


class _OutstandingCollector(Collector):
    def __init__(self, router: PipelineRouter) -> None:
        self.router = router

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("ipa_router_outstanding_requests", "Requests in flight per replica",
                              labels=["pipeline", "stage", "replica"])
        for rid, n in self.router.table.outstanding.items():
            g.add_metric([self.router.pipeline, self.router.table.stage_of.get(rid, ""), rid], n)
        yield g


class PipelineRouter:
    """Chains the stages of one pipeline over their replicas; the table is changed in place while serving."""

    def __init__(
        self,
        pipeline: str,
        stages: Sequence[str],
        *,
        retries: int = 3,
        timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
        upstreams: Upstreams | None = None,
        dispatch: DispatchSettings | None = None,
        budget_window_s: float = 30.0,
    ) -> None:
        """`retries`: other replicas tried after one that failed; `timeout_s`: longest wait for a stage when
        the request carries no deadline; `registry`: where the metrics go (a fresh one when None);
        `upstreams`: where routes may send requests (loopback replicas when None); `dispatch`: in-flight slots
        per replica and the bounded queue at the router (`mlserver_ipa.dispatch`); `budget_window_s`: the window
        of the arrival budgets exported for the adapter's cl_max (`mlserver_ipa.arrival_budgets`)."""
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.pipeline = pipeline
        self.table = RouteTable(list(stages), upstreams=upstreams or Upstreams())
        self.retries = retries
        self.timeout_s = timeout_s
        self.clock = clock
        self.clocks = Clocks(clock, time.time)
        self.settings = dispatch or DispatchSettings()
        self._dispatch = {s: StageDispatch(self.table, s, self.settings, clock) for s in stages}
        self.registry = registry if registry is not None else CollectorRegistry()
        self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=64))
        self._grpc = GrpcHop()
        self._changed = asyncio.Event()
        labels = ["pipeline"]
        # Arrivals are counted when a request comes in, answers when it leaves: under overload the two differ,
        # and the adapter must see the load that arrives, not the load that was served.
        self.m_arrivals = Counter("ipa_router_arrivals", "Pipeline requests received", labels,
                                  registry=self.registry)
        self.m_requests = Counter("ipa_router_requests", "Pipeline requests answered, by HTTP status",
                                  [*labels, "code"], registry=self.registry)
        self.m_latency = Histogram("ipa_router_request_duration_seconds", "End-to-end pipeline latency",
                                   labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.m_stage = Counter("ipa_router_stage_requests", "Stage calls by variant and HTTP status",
                               [*labels, "stage", "variant", "code"], registry=self.registry)
        self.m_stage_latency = Histogram("ipa_router_stage_duration_seconds", "Latency of one stage call",
                                         [*labels, "stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.m_shed = Counter("ipa_router_shed", "Requests answered at the router without a replica call "
                              "(code 503: its queue full; 504: the deadline cannot be met)",
                              [*labels, "stage", "code"], registry=self.registry)
        self.m_retries = Counter("ipa_router_retries", "Stage calls sent again to another replica",
                                 [*labels, "stage"], registry=self.registry)
        self.registry.register(_OutstandingCollector(self))
        self.budgets = ArrivalBudgets(pipeline, clock, budget_window_s)
        self.registry.register(self.budgets)

    @property
    def stages(self) -> list[str]:
        return self.table.stages

    # -- the table -------------------------------------------------------------------------------------

    async def update_stage(self, stage: str, route: StageRoute) -> StageStatus:
        """Replace the routing of `stage`; requests already sent finish where they are. `ValueError` when the
        route names a replica the router may not send to (nothing changes then)."""
        self.table.set_route(stage, route)
        self._dispatch[stage].wake()  # new replicas: new slots
        await self._grpc.prune({a for r in self.table.routes.values() for g in r.groups for rep in g.replicas
                                if (a := rep.grpc_address) is not None})
        return await self.stage_status(stage)

    async def set_upstreams(self, addresses: Collection[str]) -> None:
        """The `host:port` of every replica the cluster started: from now on, the only ones a route may name
        (routes already set stay until replaced)."""
        allowed = frozenset(addresses)
        self.table.upstreams = replace(self.table.upstreams, addresses=lambda: allowed)

    async def stage_status(self, stage: str) -> StageStatus:
        return self.table.stage_status(stage).model_copy(update={"waiting": len(self._dispatch[stage].queue)})

    def status(self) -> RouterStatus:
        status = self.table.status(self.pipeline)
        return status.model_copy(update={"stages": [
            s.model_copy(update={"waiting": len(self._dispatch[s.name].queue)}) for s in status.stages]})

    @property
    def grpc_channels(self) -> list[str]:
        """The replica addresses the router holds a gRPC channel to (those of the table, and any still busy)."""
        return self._grpc.addresses

    @property
    def ready(self) -> bool:
        return all(self.table.ready(s) for s in self.stages)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._grpc.aclose()

    # -- serving ---------------------------------------------------------------------------------------

    async def infer(self, body: Any, arrival: Arrival | None = None) -> dict[str, Any]:
        """Serve one V2 request through all stages; raises `PipelineError` with the status to answer.

        `arrival`: when and with which deadline header the request came in (stamped before its body was read);
        None: now, without one (and it is counted as an arrival)."""
        arrival = arrival or self.arrived()
        code = 200
        try:
            return await self._infer(body, arrival)
        except PipelineError as e:
            code = e.status
            raise
        finally:
            self.m_requests.labels(self.pipeline, str(code)).inc()
            self.m_latency.labels(self.pipeline).observe(self.clock() - arrival.monotonic)

    def arrived(self, deadline_header: str | None = None) -> Arrival:
        """Stamp a request's arrival (its first byte handled) and count it: called before its body is read."""
        self.m_arrivals.labels(self.pipeline).inc()
        return Arrival(self.clock(), self.clocks.now_ms(), deadline_header)

    def _deadline(self, params: dict[str, Any], arrival: Arrival) -> float | None:
        """The request's absolute deadline, epoch ms (`deadlines`), or None."""
        for key in (RELATIVE_PARAM, DEADLINE_PARAM):
            raw = params.get(key)
            if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int | float)):
                raise PipelineError(400, f"parameters.{key} must be a number")
        relative = params.get(RELATIVE_PARAM)
        if relative is not None and not -MAX_DEADLINE_MS <= relative <= MAX_DEADLINE_MS:
            raise PipelineError(400, f"parameters.deadline_ms must be a number of ms, at most {MAX_DEADLINE_MS:.0f}")
        try:
            at_ms = parse_epoch_ms(arrival.deadline_header, f"header {DEADLINE_HEADER}")
            if at_ms is None:
                at_ms = parse_epoch_ms(params.get(DEADLINE_PARAM), f"parameters.{DEADLINE_PARAM}")
        except BadDeadline as e:
            raise PipelineError(400, str(e)) from e
        return absolute_deadline(at_ms, None if relative is None else float(relative), arrival.epoch_ms)

    async def _infer(self, body: Any, arrival: Arrival) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
            raise PipelineError(400, "not a V2 inference request: expected a JSON object with a list of `inputs`")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise PipelineError(400, "`parameters` must be a JSON object")
        if "id" in body and (not isinstance(body["id"], str) or len(body["id"]) > MAX_REQUEST_ID_CHARS):
            raise PipelineError(400, f"id must be a string of at most {MAX_REQUEST_ID_CHARS} characters")
        user_at = self._deadline(params, arrival)
        reserve_ms = self.settings.reply_reserve_ms
        deadline_at: float | None = None  # what the stages are given: the answer must leave with the reply reserve to spare
        if user_at is not None:
            self.budgets.add(arrival.monotonic, user_at - arrival.epoch_ms)
            deadline_at = user_at - reserve_ms
        # On this router's clock from here on; the wall clock only to say it to the next hop.
        deadline = (math.inf if deadline_at is None
                    else arrival.monotonic + (deadline_at - arrival.epoch_ms) / 1000.0)
        priority = params.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise PipelineError(400, "parameters.priority must be an integer")
        try:
            inputs: list[Any] = compact(body["inputs"])  # raw while it waits here (`wire_tensors`)
        except ValueError as e:
            raise PipelineError(400, str(e)) from e
        extra: list[dict[str, Any]] = []
        variants: list[str] = []
        for i, stage in enumerate(self.stages):
            request: dict[str, Any] = {"inputs": inputs, "parameters": dict(params)}
            if "id" in body:
                request["id"] = body["id"]
            response, variant = await self._call_stage(stage, request, deadline, deadline_at, priority)
            variants.append(f"{stage}={variant}")
            outputs = response.get("outputs") or []
            if i == len(self.stages) - 1:
                out_params: dict[str, Any] = {"variants": ",".join(variants)}
                if user_at is not None:
                    left_ms = (deadline - self.clock()) * 1000.0 + reserve_ms
                    if left_ms < reserve_ms:  # nothing is answered 200 that would reach the client late
                        raise PipelineError(504, f"deadline exceeded: the answer came with {left_ms:.1f} ms left, "
                                                 f"{reserve_ms:g} ms are kept for its way back")
                    out_params[RELATIVE_PARAM] = round(left_ms, 3)
                    out_params[DEADLINE_PARAM] = user_at
                result = {"model_name": self.pipeline, "outputs": [*outputs, *extra], "parameters": out_params}
                if "id" in body:
                    result["id"] = body["id"]
                return result
            chained = [o for o in outputs if o.get("name") == CHAIN_OUTPUT]
            if not chained:
                raise PipelineError(502, f"stage {stage!r} answered without an `{CHAIN_OUTPUT}` tensor to pass on")
            inputs = [{**chained[0], "name": CHAIN_INPUT}]
            extra += [{**o, "name": f"{stage}.{o.get('name')}"} for o in outputs if o.get("name") != CHAIN_OUTPUT]
        raise AssertionError("unreachable")

    async def _call_stage(
        self, stage: str, request: dict[str, Any], deadline: float, deadline_at: float | None, priority: int
    ) -> tuple[dict[str, Any], str]:
        dispatch = self._dispatch[stage]
        tried: list[str] = []
        last_problem = "no ready replica"
        for attempt in range(self.retries + 1):
            left_s = deadline - self.clock()
            if left_s <= 0:
                raise PipelineError(504, f"deadline exceeded before stage {stage!r} ({-left_s * 1000:.1f} ms late)")
            try:
                pick = await dispatch.acquire(deadline, priority, exclude=tried)
            except Shed as e:
                self.m_shed.labels(self.pipeline, stage, str(e.status)).inc()
                raise PipelineError(e.status, str(e)) from e
            if pick is None:
                if not tried:
                    raise PipelineError(503, f"stage {stage!r} has no ready replica")
                break
            if attempt:
                self.m_retries.labels(self.pipeline, stage).inc()
            timeout = self.timeout_s
            headers = {"content-type": "application/json"}
            if deadline_at is not None:
                left_s = deadline - self.clock()
                request["parameters"][RELATIVE_PARAM] = round(left_s * 1000.0, 3)
                request["parameters"][DEADLINE_PARAM] = deadline_at
                headers[DEADLINE_HEADER] = format_epoch_ms(deadline_at)
                timeout = max(0.0, left_s) + 0.05  # the replica answers 504 itself; this only guards a hang
            tried.append(pick.replica.id)
            try:
                return await self._post(stage, pick, request, headers, timeout), pick.variant
            except _Retry as e:
                last_problem = str(e)
        raise PipelineError(502, f"stage {stage!r} failed on {len(tried)} replica(s); last: {last_problem}")

    async def _post(self, stage: str, pick: Pick, request: dict[str, Any], headers: dict[str, str],
                    timeout: float) -> dict[str, Any]:
        route = self.table.routes[stage]
        dispatch = self._dispatch[stage]
        address = pick.replica.grpc_address if route.protocol == "grpc" else None
        t0 = self.clock()
        code = "error"
        try:
            # One bound on the whole call: httpx applies a float timeout to each phase (connect, write, read,
            # pool) on its own, so a slow replica could hold a request for several times what was left.
            async with asyncio.timeout(timeout):
                if address is not None:
                    status, payload = await self._grpc.call(address, route.model, request, headers, timeout)
                else:
                    status, payload = await self._rest(f"{pick.replica.url}/v2/models/{route.model}/infer",
                                                       request, headers, timeout)
            code = str(status)
        except (httpx.TimeoutException, TimeoutError) as e:
            code = "504"
            raise PipelineError(504, f"deadline exceeded in stage {stage!r} (replica {pick.replica.id})") from e
        except httpx.TransportError as e:
            raise _Retry(f"replica {pick.replica.id} unreachable: {type(e).__name__}") from e
        finally:
            dispatch.release(pick)
            elapsed = self.clock() - t0
            if code == "200":
                dispatch.observe(pick, elapsed)
            self.m_stage.labels(self.pipeline, stage, pick.variant, code).inc()
            self.m_stage_latency.labels(self.pipeline, stage).observe(elapsed)
        if not isinstance(payload, dict) or not isinstance(payload.get("outputs", []), list):
            raise PipelineError(502, f"stage {stage!r} answered HTTP {status} with no V2 response")
        if status == 200:
            return payload
        message = payload.get("error") or payload.get("detail") or "no reason given"
        if status == 503:
            raise _Retry(f"replica {pick.replica.id} overloaded or gone: {message}")
        if status == 504:
            raise PipelineError(504, f"stage {stage!r}: {message}")
        if 400 <= status < 500:
            raise PipelineError(status, f"stage {stage!r}: {message}")
        raise PipelineError(502, f"stage {stage!r} failed (HTTP {status}): {message}")

    async def _rest(self, url: str, request: dict[str, Any], headers: dict[str, str],
                    timeout: float) -> tuple[int, Any]:
        """One V2 REST/JSON call; tensors that came raw (gRPC) are listed for JSON here."""
        body = {**request, "inputs": listed_all(request["inputs"])}
        resp = await self._client.post(url, content=orjson.dumps(body), timeout=timeout, headers=headers)
        try:
            return resp.status_code, orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            return resp.status_code, {"error": resp.text[:200]}
