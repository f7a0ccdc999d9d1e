"""The simulated cluster: replicas with their deadline queues, how a stage's load is split, and how a decision
is carried out with its reconfiguration costs.

A `Replica` holds the runtime's own `DeadlineQueue`, batching policy and service-time estimator
(`mlserver_ipa.queueing`, `mlserver_ipa.batching`: `ServiceTimes`, per (variant, cores) and batch rows an
exponentially weighted mean plus `deviations` mean deviations of the measured busy times, seeded at warm-up for
batch 1 and the batch size as the runtime's session switch measures them), and the `ServiceTable` its batches are
drawn from.

A `StagePool` routes as the runtime's router does (`mlserver_ipa.route_table`): a replica group drawn with
probability proportional to its `load_share` (groups without a ready replica skipped), then the replica of the
group with the fewest outstanding requests, ties broken at random. It is a lean copy rather than the router's
`RouteTable` itself because that one is built on pydantic route models and URL strings and recomputes its
candidate lists on every pick; the rule is the same.

`StagePool.plan(groups, now)` turns a stage's part of a decision into `Change`s, the way the local executor
applies one: replicas that already run a wanted (variant, cores) keep running (a batch-size change is
immediate, as on the runtime's control endpoint); other wanted slots reuse surplus replicas *in place*, serving
the old setting meanwhile: after the variant's switch time (`SimSettings.switch_costs`, profiles/switch.csv,
scaled to the replica's cores as the decision scales it; `switch_delay_s` for a variant without one) when a new
session is built (another variant or another thread count), the old one serving at the measured
`serving_ratio` of its speed meanwhile (the engine), after `resize_delay_s` when only the CPU quota changes; slots still
missing get new replicas that start serving after `cold_start_s`; replicas left over drain (no new requests,
finish their queue, then free their cores). With `in_place=False` (an executor that replaces pods, as a
Kubernetes VPA does) nothing is reused: a changed replica is a new one plus a drained one, and the old ones keep
serving until the new ones of their stage are ready.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from adapter.decision.model import ReplicaGroup
from adapter.decision.switching import SwitchCost, switch_seconds
from adapter.profiling.profile import Profile
from adapter.sim.service import ServiceTime
from mlserver_ipa.batching import BatchPolicy, ServiceTimes
from mlserver_ipa.queueing import DeadlineQueue
from mlserver_ipa.settings import OnLate


class ServiceTable:
    """Service-time distributions of one (variant, cores) for batches of 1..n rows, built as they are asked for.

    A batch's *latency* (when its answers go out) is drawn from the profile point's fit (`ServiceTime`); the
    replica is *busy* with it for `latency · occupancy[n]`, where `occupancy[n] = period / mean latency` and
    `period = 1000·b / throughput_rps` is the measured time per batch at saturation. The runtime overlaps the
    codecs and HTTP of one batch with the compute of the next, so a replica sustains more than `b / latency`;
    with this split the simulated replica sustains exactly the measured throughput while its requests see the
    measured latencies. `busy[n]` (the period, seconds) is what the replica's service-time estimate starts from:
    the runtime measures the compute of a batch, not the HTTP around it.
    """

    __slots__ = ("_profile", "variant", "cores", "times", "occupancy", "busy")

    def __init__(self, profile: Profile, variant: str, cores: float) -> None:
        self._profile, self.variant, self.cores = profile, variant, cores
        self.times: list[ServiceTime] = []
        self.occupancy: list[float] = []
        self.busy: list[float] = []
        self.extend(1)

    def extend(self, rows: int) -> None:
        """Make sure batches of up to `rows` rows have a distribution (index = rows; index 0 repeats 1)."""
        while len(self.times) <= rows:
            n = max(len(self.times), 1)
            p = self._profile.point(self.variant, n, self.cores)
            st = ServiceTime.fit(p.p50_ms, p.p99_ms, p.mean_ms)
            period = n / p.throughput_rps if p.throughput_rps > 0 else st.mean
            for _ in range(2 if not self.times else 1):
                self.times.append(st)
                self.occupancy.append(period / st.mean)
                self.busy.append(period)


@dataclass(frozen=True)
class ReplicaConfig:
    """What a replica runs: the variant (with its accuracy as a fraction), batch size, cores, batching window."""

    variant: str
    accuracy: float
    batch: int
    cores: float
    max_batch_time: float

    @property
    def key(self) -> tuple[str, float]:
        """What changes the speed: the variant and the cores (the runtime keys its estimates the same way)."""
        return (self.variant, self.cores)


class Replica:
    """One simulated replica of a stage (plain state; the engine drives it)."""

    __slots__ = (
        "id", "stage", "config", "table", "queue", "policy", "times", "estimate", "busy", "busy_until",
        "in_flight", "ready", "draining", "token", "timer_at", "pending", "charged", "removed", "waiting",
        "ready_at", "free_since",
    )

    def __init__(
        self, rid: int, stage: int, config: ReplicaConfig, table: ServiceTable, queue_limit: int,
        on_late: OnLate, clock: Callable[[], float], ewma_alpha: float, deviations: float,
    ) -> None:
        self.id, self.stage = rid, stage
        self.queue: DeadlineQueue[int] = DeadlineQueue(queue_limit, clock)
        self.times = ServiceTimes(ewma_alpha, deviations=deviations)
        self.busy = False
        self.busy_until = 0.0
        self.free_since: float | None = None  # when its last batch ended: the batch window opens no earlier
        self.in_flight = 0
        self.ready = False
        self.draining = False
        self.removed = False
        self.waiting = False  # a new replica not started yet: it waits for cores the budget does not have yet
        self.ready_at = 0.0
        self.token = 0  # the batch timer in force; older timers are stale
        self.timer_at = -1.0  # when the timer in force fires
        self.pending: ReplicaConfig | None = None  # an in-place change on its way
        self.charged = config.cores  # cores counted for this replica right now
        self.config = config
        self.table = table
        self.policy = BatchPolicy(config.batch, config.max_batch_time, on_late)
        self.estimate: Callable[[int], float] = self._estimator()
        self.set_config(config, table)

    def set_config(self, config: ReplicaConfig, table: ServiceTable) -> None:
        """Take a configuration into use as the runtime does: a new session (variant or cores) is measured at
        batch 1 and at its batch size before it serves, a new batch size alone is measured once; here the
        measurement is the profile's batch period."""
        new_session = config.key != self.config.key  # the first call: known is empty, so all is seeded
        self.config, self.table = config, table
        self.policy = BatchPolicy(config.batch, config.max_batch_time, self.policy.on_late)
        table.extend(config.batch)
        known = self.times.table(config.key)
        for rows in sorted({1, config.batch}):
            if new_session or rows not in known:
                self.times.seed(config.key, rows, table.busy[rows])
        self.estimate = self._estimator()

    def observe(self, rows: int, seconds: float) -> None:
        """A batch of `rows` kept the replica busy `seconds`: the runtime times each batch's compute."""
        self.times.observe(self.config.key, rows, seconds)

    def _estimator(self) -> Callable[[int], float]:
        estimate, key = self.times.estimate, self.config.key
        return lambda rows: estimate(key, rows)

    @property
    def outstanding(self) -> int:
        return len(self.queue) + self.in_flight

    @property
    def target(self) -> ReplicaConfig:
        """The configuration this replica is (or will soon be) running."""
        return self.pending if self.pending is not None else self.config


def threads(cores: float) -> int:
    """onnxruntime threads of a replica with `cores` (the executor gives it ⌈cores⌉)."""
    return max(1, math.ceil(cores - 1e-9))


def reconfigure_delay(old: ReplicaConfig, new: ReplicaConfig, switch_delay_s: float, resize_delay_s: float,
                      switch_costs: Mapping[str, SwitchCost] | None = None) -> float:
    """How long an in-place change takes: a new session (variant or thread count: the variant's measured switch
    time on its cores, as the decision counts it, else `switch_delay_s`) or only a quota write."""
    if old.variant != new.variant or threads(old.cores) != threads(new.cores):
        costs = switch_costs or {}
        return switch_seconds(costs, new.variant, new.cores) if new.variant in costs else switch_delay_s
    return resize_delay_s if old.cores != new.cores else 0.0


@dataclass
class Change:
    """What applying a decision does to one stage; the engine schedules the timed parts."""

    keep: list[tuple[Replica, ReplicaConfig]] = field(default_factory=list)  # same variant and cores
    switch: list[tuple[Replica, ReplicaConfig, float]] = field(default_factory=list)  # in place, after a delay
    start: list[ReplicaConfig] = field(default_factory=list)  # new replicas (cold start)
    drain: list[Replica] = field(default_factory=list)
    groups: list[tuple[float, list[tuple[Replica | None, ReplicaConfig]]]] = field(default_factory=list)


class StagePool:
    """The replicas of one stage and its routing table (groups of ready replicas with their load shares)."""

    def __init__(self, index: int, rng: random.Random) -> None:
        self.index = index
        self.rng = rng
        self.members: list[Replica] = []  # every replica not yet removed, draining ones included
        self.groups: list[tuple[float, list[Replica]]] = []  # (load share, assigned replicas) per group
        self.ready_groups: list[tuple[float, list[Replica]]] = []
        self.ready_total = 0.0
        self.epoch = 0  # decisions applied; a deferred cutover of an older one is void
        # the routing groups, drains and new replicas of the decision being applied (Engine.apply)
        self.pending_groups: tuple[list[tuple[float, list[Replica]]], list[Replica], list[Replica]] = ([], [], [])

    def pick(self) -> Replica | None:
        """The replica for the next request, or None when the stage has no ready replica."""
        groups = self.ready_groups
        if not groups:
            return None
        if len(groups) == 1:
            reps = groups[0][1]
        else:
            x = self.rng.random() * self.ready_total
            reps = groups[-1][1]
            for share, rs in groups:
                x -= share
                if x < 0:
                    reps = rs
                    break
        if len(reps) == 1:
            return reps[0]
        best = reps[0]
        fewest = len(best.queue) + best.in_flight
        ties = 1
        for r in reps[1:]:
            n = len(r.queue) + r.in_flight
            if n < fewest:
                best, fewest, ties = r, n, 1
            elif n == fewest:
                ties += 1  # reservoir sampling: each tied replica is chosen with equal probability
                if self.rng.random() * ties < 1:
                    best = r
        return best

    def refresh(self) -> None:
        """Recompute the routing lists after a replica became ready or a decision changed the groups."""
        ready = [(share, [r for r in reps if r.ready and not r.draining]) for share, reps in self.groups]
        ready = [(share, reps) for share, reps in ready if reps]
        if ready and sum(s for s, _ in ready) <= 0:  # no shares decided: spread by replica count
            ready = [(float(len(reps)), reps) for _, reps in ready]
        self.ready_groups = ready
        self.ready_total = sum(s for s, _ in ready)

    def plan(self, groups: list[ReplicaGroup], make: Callable[[ReplicaGroup], ReplicaConfig],
             in_place: bool, switch_delay_s: float, resize_delay_s: float,
             switch_costs: Mapping[str, SwitchCost] | None = None) -> Change:
        """Match the wanted groups against the replicas there are (see the module docstring)."""
        change = Change()
        free = [r for r in self.members if not r.draining]
        wanted = [(g, make(g)) for g in groups if g.count > 0]
        slots: list[list[tuple[Replica | None, ReplicaConfig]]] = [[] for _ in wanted]
        need: list[int] = [g.count for g, _ in wanted]
        # 1. replicas already running (or switching to) the wanted variant and cores
        for i, (_, cfg) in enumerate(wanted):
            for r in list(free):
                if need[i] == 0:
                    break
                if r.target.key == cfg.key:
                    free.remove(r)
                    slots[i].append((r, cfg))
                    change.keep.append((r, cfg))
                    need[i] -= 1
        # 2. surplus replicas changed in place: same variant first (only cores change), then any
        if in_place:
            for same_variant in (True, False):
                for i, (_, cfg) in enumerate(wanted):
                    for r in list(free):
                        if need[i] == 0:
                            break
                        if same_variant and r.target.variant != cfg.variant:
                            continue
                        delay = reconfigure_delay(r.target, cfg, switch_delay_s, resize_delay_s, switch_costs)
                        free.remove(r)
                        slots[i].append((r, cfg))
                        change.switch.append((r, cfg, delay))
                        need[i] -= 1
        # 3. new replicas for what is still missing; 4. the rest drains
        for i, (_, cfg) in enumerate(wanted):
            for _ in range(need[i]):
                slots[i].append((None, cfg))
                change.start.append(cfg)
        change.drain = free
        change.groups = [(g.load_share, slot) for (g, _), slot in zip(wanted, slots, strict=True)]
        return change
