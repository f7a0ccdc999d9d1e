"""The discrete-event engine: one explicit clock and a heap of events ordered by (time, priority, sequence).

Requests arrive from a sorted array (merged with the heap, so arrivals cost no heap operations), go through the
stages in order, and at every stage are routed, queued and batched by the runtime's own rules (see
`adapter.sim.cluster`). Events at the same time run in a fixed order of kinds (answers out, replica free,
replica ready, in-place switch done, routing cutover, adapter tick, batch timer), then in the order they were
scheduled: a run is a pure function of its inputs and seed.

Per request the engine keeps plain Python lists (scalar access to numpy arrays is slow in a hot loop); the
metrics module turns them into per-second columns with numpy at the end.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapter.decision.model import Decision, ReplicaGroup
from adapter.profiling.profile import Profile
from adapter.profiling.switch_profile import load_switch_costs
from adapter.sim.budget import BudgetGate, Grow
from adapter.sim.cluster import Replica, ReplicaConfig, ServiceTable, StagePool
from adapter.sim.service import NormalStream
from adapter.sim.settings import SimSettings
from adapter.spec import GraphSpec
from mlserver_ipa.batching import plan_batch, rejects_on_arrival

# Event kinds, in the order they run at the same instant.
DONE, FREE, READY, SWITCH, CUTOVER, TICK, TIMER = range(7)
# Why a request was dropped (`Engine.reason`); 0: not dropped.
SERVED, LATE, OVERLOADED, NO_REPLICA, UNFINISHED = range(5)
DROP_REASONS = {LATE: "deadline", OVERLOADED: "overloaded", NO_REPLICA: "no-replica", UNFINISHED: "unfinished"}


@dataclass(frozen=True)
class Counters:
    """Running totals the monitor differences between two adapter runs (as it does with /metrics counters)."""

    at: float
    answered: int  # requests the last stage answered
    dropped: int
    late: int  # answered after their deadline
    stage_arrivals: tuple[int, ...]
    stage_dropped: tuple[int, ...]
    stage_cpu_s: tuple[float, ...]  # core-seconds the stage's replicas spent serving batches


class Engine:
    """Runs one simulation; `apply(decision)` reconfigures, `run(...)` replays the arrivals."""

    def __init__(self, spec: GraphSpec, profiles: dict[str, Profile], settings: SimSettings, seed: int) -> None:
        self.spec, self.settings = spec, settings
        self.now = 0.0
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = itertools.count()
        self._rng = random.Random(seed)
        self._normals = NormalStream(np.random.default_rng([seed, 7]))
        self.pools = [StagePool(i, self._rng) for i in range(len(spec.stages))]
        self._profiles = [profiles[s.name] for s in spec.stages]
        self._tables: dict[tuple[int, str, float], ServiceTable] = {}
        self._ids = itertools.count()
        self._product = spec.accuracy == "product"
        self._switch_costs = dict(load_switch_costs(spec) if settings.switch_costs is None else settings.switch_costs)
        # per request
        self.deadline: list[float] = []
        self.acc: list[float] = []
        self.finish: list[float] = []
        self.reason: list[int] = []
        self.arrival: list[float] = []
        # monitoring
        self.cores = 0.0
        self.cores_log: list[tuple[float, float]] = [(0.0, 0.0)]
        self._gate = BudgetGate(spec.budget_cores)  # changes that add cores, waiting for the budget
        self._applying = False  # inside apply(): the drains of later stages are not marked yet
        self._warm = False
        self.latency_log: list[float] = []  # end-to-end seconds of served requests, in completion order
        self.drops = 0
        self.late = 0
        self.stage_drops = [0] * len(spec.stages)
        self.stage_arrivals = [0] * len(spec.stages)
        self.stage_cpu = [0.0] * len(spec.stages)

    # ------------------------------------------------------------------------------------------ scheduling

    def at(self, t: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._seq), kind, payload))

    def _charge(self, delta: float) -> None:
        self.cores += delta
        self.cores_log.append((self.now, self.cores))
        if delta < 0 and self._gate.waiting:
            self._admit(force=not self._applying)

    # ---------------------------------------------------------------------------------------- configuration

    def _config(self, stage: int, g: ReplicaGroup) -> ReplicaConfig:
        st = self.spec.stages[stage]
        return ReplicaConfig(g.variant, st.variant(g.variant).accuracy / 100.0, g.batch, g.cores,
                             st.max_batch_time_ms / 1000.0)

    def _table(self, stage: int, cfg: ReplicaConfig) -> ServiceTable:
        key = (stage, cfg.variant, cfg.cores)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = ServiceTable(self._profiles[stage], cfg.variant, cfg.cores)
        return table

    def apply(self, decision: Decision, warm: bool = False) -> None:
        """Carry out a decision from now on; `warm`: new replicas are ready at once (the initial deployment).

        The budget holds at every instant: changes that free or keep cores run at once (in place first: the
        pools reuse running replicas before they start new ones), and a change that adds cores — a new replica,
        an in-place switch to more cores — runs now only if it fits the budget on top of what is charged;
        otherwise it waits until replicas that drain or shrink have freed enough (`adapter.sim.budget`).
        """
        self._applying = True
        try:
            self._apply(decision, warm)
        finally:
            self._applying = False
        self._admit(force=True)

    def _apply(self, decision: Decision, warm: bool) -> None:
        s = self.settings
        self._gate.forget_switches()
        plans = []
        for pool, sd in zip(self.pools, (decision.stage(st.name) for st in self.spec.stages), strict=True):
            i = pool.index
            plans.append((pool, pool.plan(list(sd.replicas), lambda g, i=i: self._config(i, g), s.in_place,  # type: ignore[misc]
                                          s.switch_delay_s, s.resize_delay_s, self._switch_costs)))
        grows: list[Grow] = []
        for pool, change in plans:
            i = pool.index
            for r, cfg in change.keep:
                if r.pending is None or r.config.key == cfg.key:
                    r.pending = None  # a switch away from what is wanted again is called off
                    r.set_config(cfg, self._table(i, cfg))
                    if not r.waiting:
                        self._recharge(r, cfg.cores)
                else:
                    r.pending = cfg  # still switching to this (variant, cores): the new batch size comes with it
            for r, cfg, delay in change.switch:
                if r.waiting:  # a replica not started yet simply starts with the new configuration
                    r.set_config(cfg, self._table(i, cfg))
                elif cfg.cores > r.charged + 1e-9:
                    grows.append(Grow("switch", r, cfg, delay))  # more cores: only within the budget (below)
                else:
                    self._switch(r, cfg, delay)
        for pool, change in plans:
            i = pool.index
            started: list[Replica] = []
            for cfg in change.start:  # in the order of the empty slots of change.groups
                r = Replica(next(self._ids), i, cfg, self._table(i, cfg), s.queue_limit, s.on_late,
                            self.clock, s.ewma_alpha, s.service_time_deviations)
                r.charged = 0.0
                r.waiting = True
                started.append(r)
                pool.members.append(r)
                grows.append(Grow("start", r, cfg, 0.0))
            fresh = iter(started)
            groups = [(share, [rep if rep is not None else next(fresh) for rep, _ in slot])
                      for share, slot in change.groups]
            pool.epoch += 1
            pool.pending_groups = (groups, change.drain, started)
        # what adds cores: now where it fits (make before break), the rest once drains and shrinks free cores
        self._warm = warm
        self._gate.waiting += grows
        self._admit(force=False)
        for pool, _ in plans:
            groups, drain, started = pool.pending_groups
            deferred = any(r.waiting for r in started)
            ready_at = max((r.ready_at for r in started if not r.waiting), default=self.now)
            if not s.in_place and started and drain and ready_at > self.now and not deferred:
                # A rolling replacement: the old replicas keep serving until the new ones are up (both fit).
                self.at(ready_at, CUTOVER, (pool, pool.epoch, groups, drain))
            else:
                self._cutover(pool, groups, drain)

    def _switch(self, r: Replica, cfg: ReplicaConfig, delay: float) -> None:
        """Change a running replica in place (after `delay`; both sessions' cores are held meanwhile)."""
        i = r.stage
        if delay <= 0:
            r.pending = None
            r.set_config(cfg, self._table(i, cfg))
            self._recharge(r, cfg.cores)
            self._kick(r)
        else:
            r.pending = cfg
            self._recharge(r, max(r.config.cores, cfg.cores))
            self.at(self.now + delay, SWITCH, (r, cfg))

    def _admit(self, force: bool = True) -> None:
        self._gate.admit(lambda: self.cores, self._freeing, self._grow, force)

    def _freeing(self) -> bool:
        """Whether a replica is draining or switching to fewer cores (cores about to be freed)."""
        return any(x.draining or (x.pending is not None and x.pending.cores < x.charged - 1e-9)
                   for pool in self.pools for x in pool.members)

    def _grow(self, g: Grow) -> None:
        r = g.replica
        if g.kind == "switch":
            self._switch(r, g.config, g.delay)
            return
        r.waiting = False
        r.charged = r.config.cores
        self._charge(r.charged)
        if self._warm or self.settings.cold_start_s <= 0:
            r.ready = True
            r.ready_at = self.now
            self.pools[r.stage].refresh()
        else:
            r.ready_at = self.now + self.settings.cold_start_s
            self.at(r.ready_at, READY, r)

    def _cutover(self, pool: StagePool, groups: list[tuple[float, list[Replica]]], drain: list[Replica]) -> None:
        pool.groups = groups
        for r in drain:
            self._drain(r)
        pool.refresh()

    def _recharge(self, r: Replica, cores: float) -> None:
        if cores != r.charged:
            self._charge(cores - r.charged)
            r.charged = cores

    def clock(self) -> float:
        """The simulated time (what the replicas' queues and the policy's timer read)."""
        return self.now

    def _drain(self, r: Replica) -> None:
        if r.draining:
            return
        r.draining = True
        pool = self.pools[r.stage]
        pool.groups = [(share, [x for x in reps if x is not r]) for share, reps in pool.groups]
        pool.refresh()
        if not r.busy and not r.queue:
            self._remove(r)

    def _remove(self, r: Replica) -> None:
        if r.removed:
            return
        r.removed = True
        self.pools[r.stage].members.remove(r)
        self._charge(-r.charged)
        r.charged = 0.0

    # --------------------------------------------------------------------------------------------- requests

    def _drop(self, rid: int, why: int, stage: int) -> None:
        self.reason[rid] = why
        self.drops += 1
        self.stage_drops[stage] += 1

    def _route(self, stage: int, rid: int) -> None:
        self.stage_arrivals[stage] += 1
        pool = self.pools[stage]
        r = pool.pick()
        if r is None:
            self._drop(rid, NO_REPLICA, stage)
            return
        deadline = self.deadline[rid]
        now = self.now
        if self.settings.on_late == "drop":  # as the runtime's Batcher.submit
            busy_until = r.busy_until if r.busy else None
            if rejects_on_arrival(now, busy_until, r.queue.rows, deadline, r.estimate(1)):
                self._drop(rid, LATE, stage)
                return
        left = r.queue.push(rid, deadline=deadline)
        tries = 0
        while left is not None:  # the router sends an overloaded request to another replica of the stage
            if left.item != rid:
                self._drop(left.item, OVERLOADED, stage)  # a less urgent request was displaced
                break
            tries += 1
            r = self._other(pool, r) if tries <= self.settings.router_retries else None
            if r is None:
                self._drop(rid, OVERLOADED, stage)
                return
            left = r.queue.push(rid, deadline=deadline)
        if not r.busy:
            self._plan(r)

    def _other(self, pool: StagePool, tried: Replica) -> Replica | None:
        others = [x for _, reps in pool.ready_groups for x in reps if x is not tried and len(x.queue) < x.queue.limit]
        return min(others, key=lambda x: x.outstanding) if others else None

    def _kick(self, r: Replica) -> None:
        if not r.busy and r.queue:
            self._plan(r)

    def _plan(self, r: Replica) -> None:
        """The runtime batcher's loop body with the server free at `now`."""
        now = self.now
        plan = plan_batch(r.queue, now, r.policy, r.estimate, r.free_since)
        for d in plan.dropped:
            self._drop(d.entry.item, LATE, r.stage)
        batch = plan.batch
        if batch:
            n = len(batch)
            table = r.table
            if n >= len(table.times):
                table.extend(n)
            latency = table.times[n].draw(self._normals.next())
            if r.pending is not None and r.pending.variant in self._switch_costs:  # the new variant loads beside
                latency /= self._switch_costs[r.pending.variant].serving_ratio
            busy = latency * table.occupancy[n]
            r.observe(n, busy)  # the runtime times the compute of a batch
            r.busy = True
            r.busy_until = now + r.estimate(n)
            r.in_flight = n
            r.token += 1
            self.stage_cpu[r.stage] += busy * r.config.cores
            self.at(now + latency, DONE, (r, [e.item for e in batch], r.config.accuracy))
            self.at(now + busy, FREE, r)
        elif plan.wait_until is not None and plan.wait_until != r.timer_at:
            r.token += 1
            r.timer_at = plan.wait_until
            self.at(plan.wait_until, TIMER, (r, r.token))
        elif not r.queue and r.draining:
            self._remove(r)

    def _done(self, r: Replica, items: list[int], accuracy: float) -> None:
        now = self.now
        nxt = r.stage + 1
        last = nxt == len(self.pools)
        acc, deadline = self.acc, self.deadline
        for rid in items:
            acc[rid] = acc[rid] * accuracy if self._product else acc[rid] + accuracy
            if last:
                self.finish[rid] = now
                self.latency_log.append(now - self.arrival[rid])
                if now > deadline[rid]:
                    self.late += 1
            elif now >= deadline[rid]:
                self._drop(rid, LATE, nxt)  # the router answers 504 before the next stage
            else:
                self._route(nxt, rid)

    # -------------------------------------------------------------------------------------------------- run

    def run(self, arrivals: np.ndarray, budgets_s: np.ndarray, tick: Callable[[float], None],
            tick_times: list[float]) -> None:
        """Replay `arrivals` (sorted seconds) with per-request budgets (seconds to their deadline).

        `tick(now)` runs at each of `tick_times` (the adapter). Returns when every request is answered or dropped.
        """
        n = len(arrivals)
        arr = arrivals.tolist()
        self.deadline = (arrivals + budgets_s).tolist()
        self.acc = [1.0 if self._product else 0.0] * n
        self.finish = [math.nan] * n
        self.reason = [SERVED] * n
        self.arrival = arr
        for t in tick_times:
            self.at(t, TICK, None)
        heap = self._heap
        pop = heapq.heappop
        route = self._route
        i = 0
        next_arrival = arr[0] if n else math.inf
        while True:
            if heap and heap[0][0] <= next_arrival:
                t, _, _, kind, payload = pop(heap)
                self.now = t
                if kind == DONE:
                    self._done(*payload)
                elif kind == FREE:
                    r: Replica = payload
                    r.busy = False
                    r.free_since = t
                    r.in_flight = 0
                    if r.queue:
                        self._plan(r)
                    elif r.draining:
                        self._remove(r)
                elif kind == TIMER:
                    r, token = payload
                    if token == r.token and not r.busy and not r.removed:
                        r.timer_at = -1.0
                        self._plan(r)
                elif kind == TICK:
                    tick(t)
                elif kind == READY:
                    r = payload
                    if not r.removed:
                        r.ready = True
                        self.pools[r.stage].refresh()
                elif kind == SWITCH:
                    r = payload[0]
                    new: ReplicaConfig = payload[1]
                    # the switch still wanted (a later decision may have changed only its batch size)
                    if r.pending is not None and r.pending.key == new.key and not r.removed:
                        new = r.pending
                        r.pending = None
                        r.set_config(new, self._table(r.stage, new))
                        self._recharge(r, new.cores)
                        self._kick(r)
                elif kind == CUTOVER:
                    pool, epoch, groups, drain = payload
                    if epoch == pool.epoch:  # not overtaken by a later decision
                        self._cutover(pool, groups, drain)
            elif i < n:
                self.now = next_arrival
                route(0, i)
                i += 1
                next_arrival = arr[i] if i < n else math.inf
            else:
                break
        for rid in range(n):  # nothing is left waiting once the heap is empty; this is a safety net
            if self.reason[rid] == SERVED and self.finish[rid] != self.finish[rid]:
                self.reason[rid] = UNFINISHED

    def counters(self) -> Counters:
        """The running totals now (see `Counters`)."""
        return Counters(self.now, len(self.latency_log), self.drops, self.late, tuple(self.stage_arrivals),
                        tuple(self.stage_drops), tuple(self.stage_cpu))
