"""The deadline-aware batcher: when to run a batch, which requests go in it, and which can no longer make it.

Rules (all decided from an injected clock and measured service times, never from the wall clock):

- A batch takes the most urgent waiting requests (see `queueing`) up to `batch_size` rows.
- While the queue holds fewer rows than `batch_size`, the batcher waits for more, but at most
  `max_batch_time` after the oldest waiting request arrived or the server became free, whichever is later,
  and never past the moment when starting a full batch would miss the earliest waiting deadline. The window
  restarts when the server frees because the requests that would fill the batch are often the answers of the
  batch that just ended coming back (a closed loop of `b` clients, a pipeline's next stage): counting it from
  the arrival alone dispatches what waited through the busy period at once, while the rest is still in transit,
  and once a batch of `b` has split so (one late request), the halves alternate for good (batches of 3 and 5
  at `b` = 8, measured with `benchmarks/transformers_runtime.py`).
- With `on_late="drop"`, a request that would miss its deadline even if it were served alone at the earliest
  moment the server is free (queue wait + the measured service time for its rows) is rejected at once: when it
  arrives, whenever a batch is planned, and right after a batch is dispatched (the rest must wait for it).
  A request is not added to a batch if the larger batch would make any request in it late.
- Except: an idle replica with nothing that could make its deadline still serves its most urgent request whose
  deadline has not passed. Serving it alone now is its best chance, and the measurement refreshes an estimate that a run of slow batches may have
  pushed past every deadline; without this, such a replica would reject everything, measure nothing and never
  recover (the simulator showed replicas locking themselves out this way).
- With `on_late="serve"`, nothing is rejected for its deadline; late answers are counted by the runtime.

`plan_batch` is the decision, a pure function of the queue and `now`; `Batcher` is the thin async loop that
runs one batch at a time through an `execute` callback and sleeps until the next arrival or planned time.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from mlserver_ipa.queueing import DeadlineQueue, Entry

T = TypeVar("T")
log = logging.getLogger(__name__)

ServiceTime = Callable[[int], float]
"""Expected seconds to serve a batch of the given number of rows with the active session."""


@dataclass(frozen=True)
class BatchPolicy:
    batch_size: int = 1
    """Most rows per batch."""
    max_batch_time: float = 0.0
    """Most seconds a request waits for its batch to fill."""
    on_late: Literal["drop", "serve"] = "drop"


class ServiceTimes:
    """Measured service time per (configuration, batch rows), for deadline decisions.

    Per batch size it keeps an exponentially weighted mean and mean deviation (as TCP does for round-trip
    times) and estimates `mean + deviations * deviation`: on a machine whose speed varies (other processes,
    the event loop parsing a burst of requests), a request is admitted only if it makes its deadline in all
    but the slow tail of batches, rather than on average.

    A configuration is whatever changes the speed (here: variant and thread count). Estimates come from a
    curve through the batch sizes measured at least `min_samples` times (or seeded by a warm-up), made
    non-decreasing (a batch is never faster than a smaller one, even when noise measured it so): between
    points it interpolates, beyond the largest it extrapolates along the last slope. A batch size seen once or
    twice does not bend the curve, so one slow outlier does not make every larger batch look slow. Nothing
    measured yet means 0: no request is rejected on a guess.
    """

    def __init__(self, alpha: float = 0.2, min_samples: int = 3, deviations: float = 2.0) -> None:
        self.alpha = alpha
        self.min_samples = min_samples
        self.deviations = deviations
        self._table: dict[Hashable, dict[int, tuple[float, float, int]]] = {}
        self._curves: dict[Hashable, list[tuple[int, float]]] = {}

    def observe(self, config: Hashable, rows: int, seconds: float) -> None:
        known = self._table.setdefault(config, {})
        mean, dev, n = known.get(rows, (seconds, 0.0, 0))
        dev += self.alpha * (abs(seconds - mean) - dev)
        mean += self.alpha * (seconds - mean)
        known[rows] = (mean, dev, n + 1)
        self._curves.pop(config, None)

    def seed(self, config: Hashable, rows: int, seconds: float) -> None:
        """Set the estimate outright and trust it (warm-up measurements of a new session)."""
        self._table.setdefault(config, {})[rows] = (seconds, 0.0, self.min_samples)
        self._curves.pop(config, None)

    def table(self, config: Hashable) -> dict[int, float]:
        """The mean by batch rows, as measured."""
        return {r: mean for r, (mean, _, _) in sorted(self._table.get(config, {}).items())}

    def _curve(self, config: Hashable) -> list[tuple[int, float]]:
        curve = self._curves.get(config)
        if curve is None:
            known = {r: (mean + self.deviations * dev, n) for r, (mean, dev, n) in self._table.get(config, {}).items()}
            points = sorted((r, v) for r, (v, n) in known.items() if n >= self.min_samples) or sorted(
                (r, v) for r, (v, _) in known.items()
            )
            curve, top = [], 0.0
            for r, v in points:
                top = max(top, v)
                curve.append((r, top))
            self._curves[config] = curve
        return curve

    def estimate(self, config: Hashable, rows: int) -> float:
        curve = self._curve(config)
        if not curve:
            return 0.0
        if rows <= curve[0][0]:
            return curve[0][1]  # fewer rows than anything measured: never slower than that batch
        for (lo, t_lo), (hi, t_hi) in zip(curve, curve[1:], strict=False):
            if rows <= hi:
                return t_lo + (t_hi - t_lo) * (rows - lo) / (hi - lo)
        hi, t_hi = curve[-1]
        if len(curve) >= 2:
            lo, t_lo = curve[-2]
            return t_hi + (t_hi - t_lo) / (hi - lo) * (rows - hi)
        return t_hi * rows / hi


@dataclass(frozen=True)
class Drop(Generic[T]):
    """A request that cannot meet its deadline, with the numbers that show it."""

    entry: Entry[T]
    start: float
    """Earliest time it could start."""
    service: float
    """Expected service time of its rows alone."""


@dataclass
class Plan(Generic[T]):
    batch: list[Entry[T]] = field(default_factory=list)
    """Run these now (empty: nothing to run yet)."""
    dropped: list[Drop[T]] = field(default_factory=list)
    """Reject these for their deadline."""
    wait_until: float | None = None
    """With no batch: plan again at this time at the latest (None: at the next arrival)."""


def rejects_on_arrival(now: float, busy_until: float | None, queued_rows: int, deadline: float, service: float) -> bool:
    """Whether a request arriving at `now` is rejected at once for its deadline (`on_late="drop"`).

    `busy_until` is when the batch in flight ends (None: idle); `service` the estimate for its rows.
    """
    if busy_until is None and queued_rows == 0:
        return deadline <= now  # an idle replica tries any live request (see the module docstring)
    start = now if busy_until is None else max(now, busy_until)
    return start + service > deadline


def expire(
    queue: DeadlineQueue[T], start: float, service_time: ServiceTime, keep: Entry[T] | None = None
) -> list[Drop[T]]:
    """Remove the requests that would miss their deadline even if served alone from `start` on (but `keep`)."""
    if start + service_time(1) <= queue.earliest_deadline():
        return []  # the common case, decided without looking at every request
    times: dict[int, float] = {}

    def service(rows: int) -> float:
        if rows not in times:
            times[rows] = service_time(rows)
        return times[rows]

    gone = queue.remove_if(lambda e: e is not keep and start + service(e.rows) > e.deadline)
    return [Drop(e, start, service(e.rows)) for e in gone]


def _last_chance(queue: DeadlineQueue[T], now: float, service_time: ServiceTime) -> Entry[T] | None:
    """The request an idle replica serves although its estimate says it will be late: the most urgent one,
    and only when nothing waiting could make its deadline (so it costs no one else their chance)."""
    if not queue or now + service_time(1) <= queue.earliest_deadline():
        return None
    if any(now + service_time(e.rows) <= e.deadline for e in queue):
        return None
    live = [e for e in queue if e.deadline > now]
    return min(live, key=lambda e: (e.priority, e.deadline, e.sequence)) if live else None


def plan_batch(queue: DeadlineQueue[T], now: float, policy: BatchPolicy, service_time: ServiceTime,
               free_since: float | None = None) -> Plan[T]:
    """Decide, with the server free at `now`, what to run, what to reject and how long to wait.

    `free_since`: when the server's last batch ended (None: never, or not tracked); the batch window is
    counted from it when it is later than the oldest arrival (see the module docstring)."""
    drop = policy.on_late == "drop"
    dropped = expire(queue, now, service_time, _last_chance(queue, now, service_time)) if drop else []
    if not queue:
        return Plan(dropped=dropped)
    if queue.rows < policy.batch_size and policy.max_batch_time > 0:
        oldest = queue.oldest_arrival()
        opened = now if oldest is None else oldest
        if free_since is not None:
            opened = max(opened, free_since)
        window_end = opened + policy.max_batch_time
        latest_start = queue.earliest_deadline() - service_time(policy.batch_size)
        wait_until = min(window_end, latest_start)
        if wait_until > now:
            return Plan(dropped=dropped, wait_until=wait_until)
    batch: list[Entry[T]] = []
    rows, deadline = 0, math.inf
    while queue:
        head = queue.peek()
        assert head is not None
        if batch:
            if rows + head.rows > policy.batch_size:
                break
            if drop and now + service_time(rows + head.rows) > min(deadline, head.deadline):
                break  # a larger batch would make someone late: leave it for the next one
        batch.append(queue.pop())
        rows += head.rows
        deadline = min(deadline, head.deadline)
    if drop:
        dropped += expire(queue, now + service_time(rows), service_time)  # the rest wait for this batch
    return Plan(batch=batch, dropped=dropped)


@dataclass(frozen=True)
class Refusal:
    """Why a request arriving at `now` cannot meet its deadline: it could start at `start` at the earliest and
    its rows take `service` seconds."""

    now: float
    start: float
    service: float


@dataclass(frozen=True)
class Rejection(Generic[T]):
    """Why a request is answered without being served."""

    entry: Entry[T]
    reason: Literal["deadline", "overloaded"]
    now: float
    start: float = 0.0
    service: float = 0.0


class Batcher(Generic[T]):
    """Runs `plan_batch` in a loop: one batch in flight at a time, through `execute`.

    `execute(batch)` serves the requests (and answers them); `reject(rejection)` answers a request that will
    not be served. `service_time` reads the active session's estimates, so a variant switch is seen at once.
    """

    def __init__(
        self,
        queue: DeadlineQueue[T],
        policy: BatchPolicy,
        *,
        clock: Callable[[], float],
        service_time: ServiceTime,
        execute: Callable[[list[Entry[T]]], Awaitable[None]],
        reject: Callable[[Rejection[T]], None],
    ) -> None:
        self.queue = queue
        self._policy = policy
        self._clock = clock
        self._service_time = service_time
        self._execute = execute
        self._reject = reject
        self._wakeup = asyncio.Event()
        self._busy_until: float | None = None
        self._free_since: float | None = None
        """When the last batch ended: the batch window restarts there (`plan_batch`)."""
        self.in_flight = 0
        """Rows in the batch being served."""

    @property
    def policy(self) -> BatchPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: BatchPolicy) -> None:
        self._policy = policy
        self._wakeup.set()

    def refuses(self, *, deadline: float, rows: int = 1) -> Refusal | None:
        """Why a request of `rows` arriving now would be rejected for its deadline (`on_late="drop"`), else None.

        Nothing is queued or answered: the replica's HTTP layer asks this before the request's body is read."""
        if self._policy.on_late != "drop":
            return None
        now = self._clock()
        service = self._service_time(rows)
        if not rejects_on_arrival(now, self._busy_until, self.queue.rows, deadline, service):
            return None
        return Refusal(now, now if self._busy_until is None else max(now, self._busy_until), service)

    def submit(self, item: T, *, deadline: float = math.inf, priority: int = 0, rows: int = 1) -> None:
        """Queue a request, or reject it at once if it cannot meet its deadline or does not fit."""
        now = self._clock()
        refused = self.refuses(deadline=deadline, rows=rows)
        if refused is not None:
            entry = Entry(item, deadline, priority, now, rows)
            self._reject(Rejection(entry, "deadline", refused.now, refused.start, refused.service))
            return
        left_out = self.queue.push(item, deadline=deadline, priority=priority, rows=rows)
        if left_out is not None:
            self._reject(Rejection(left_out, "overloaded", now))
        self._wakeup.set()

    async def run(self) -> None:
        """Serve until cancelled."""
        while True:
            now = self._clock()
            plan = plan_batch(self.queue, now, self._policy, self._service_time, self._free_since)
            for d in plan.dropped:
                self._reject(Rejection(d.entry, "deadline", now, d.start, d.service))
            if plan.batch:
                rows = sum(e.rows for e in plan.batch)
                self._busy_until = now + self._service_time(rows)
                self.in_flight = rows
                try:
                    await self._execute(plan.batch)
                except Exception:  # execute answers its own requests; never let one batch stop the loop
                    log.exception("batch execution failed")
                finally:
                    self._busy_until = None
                    self._free_since = self._clock()
                    self.in_flight = 0
                continue
            self._wakeup.clear()
            timeout = None if plan.wait_until is None else max(0.0, plan.wait_until - now)
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass
