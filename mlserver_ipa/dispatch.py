"""The router's admission per stage: in-flight slots on every replica, and a bounded deadline-ordered queue of
the requests waiting for one. Never an unbounded queue, never a wait that cannot end in time.

Slots: a replica takes at most `max(min_in_flight, in_flight_per_batch * batch_size)` requests at once (its
`ReplicaRoute.batch_size`, as decided; `default_in_flight` when the route does not say): a batch being served,
the next forming in its own deadline queue and a couple in transit, so it never idles for a round trip between
batches, and never holds a queue the router could route elsewhere. (With one or two batches only, a replica on
a fraction of a core waited for the router between calls and served a fifth of its capacity.)
A request goes to a replica with a free slot (by the table's shares and least-outstanding rule, among replicas
with a free slot); when none has one it waits here:

- in a `DeadlineQueue` (priority class, then earliest deadline first), bounded at `queue_per_slot` requests per
  slot of the stage (at least `min_queue`): when it is full, the least urgent request is answered 503 at once;
- for as long as its deadline allows and no longer: a request that, by the stage's call time `L` (measured:
  mean plus two mean deviations, as replicas plan) and the `k` requests ahead of it, cannot start in time to
  finish before its deadline (`now + (k + 1) / slots * L + L > deadline`: every slot turns over once per call)
  is answered 504 at once (shed in milliseconds, not at its deadline); one still waiting at its deadline is
  answered 504 then;
- a slot that frees goes to the most urgent waiting request, taken for it (a newcomer cannot take it first),
  unless what is left of its deadline is shorter than `L`: it is answered 504 there and then, not sent to
  a replica that would refuse it (or serve it late) while the slot could serve a request that makes it.

Time is an input (`clock`): deadlines here are on the router's monotonic clock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from mlserver_ipa.batching import ServiceTimes
from mlserver_ipa.queueing import DeadlineQueue
from mlserver_ipa.route_table import Pick, RouteTable


class Shed(Exception):
    """A request the router answers without sending it on: `status` 503 (queue full) or 504 (deadline)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DispatchSettings:
    """How many requests a replica gets at once, and how many may wait at the router."""

    in_flight_per_batch: int = 4
    """Slots per replica, in batches of its batch size (one served, one forming, two in transit)."""
    min_in_flight: int = 8
    """Slots of a replica at least, whatever its batch size (small batches still need requests in transit)."""
    default_in_flight: int = 8
    """Slots of a replica whose route gives no batch size."""
    queue_per_slot: int = 8
    """Requests that may wait per slot of the stage (the queue's bound)."""
    min_queue: int = 256
    """The queue's bound when the stage has few slots (as a replica's own default `queue_limit`: requests
    without a deadline wait here rather than there; those with one are shed by their deadline long before)."""
    max_wait_s: float = 60.0
    """Longest wait for a slot of a request without a deadline (then 504)."""
    ewma_alpha: float = 0.1
    """Weight of the newest call in the stage's measured call time."""
    call_deviations: float = 2.0
    """The call time planned with: its mean plus this many mean deviations (as a replica plans its batches,
    `batching.ServiceTimes`). With the mean alone the router admitted requests to finish exactly at their
    deadline; the replica, planning with its slow tail, then refused them after their wait here (a third of the
    calls under a 3x burst)."""
    reply_reserve_ms: float = 5.0
    """Kept of every deadline for the answer's way back to the client: the stages are given the deadline less
    this, and an answer with less left is 504, not a 200 the client reads late (Sponge's communication latency,
    on the way out; the way in is already off the absolute deadline). From the router to a load generator on
    the same loaded 2-core machine an answer took 2.4-3.0 ms at the median, 11 ms at the 90th percentile
    (`benchmarks/overload.py --records`, its `left_ms` against the latency)."""


@dataclass(frozen=True)
class _Refusal:
    """What a waiter is handed instead of a slot: the `Shed` its request is answered with.

    Not the exception itself: a future keeps what it was given, and a raised exception's traceback holds the
    frame that awaited the future, which holds the future. Each request shed from the queue made such a cycle,
    with its tensors in it, until the collector's next full pass (its young passes run every 10 000
    allocations, `heap.YOUNG_EVERY`): the router's RSS stayed up after a burst."""

    status: int
    message: str


@dataclass
class _Waiter:
    future: asyncio.Future[Pick | _Refusal] = field(repr=False)
    exclude: tuple[str, ...] = ()
    """Replicas that already failed this request."""


class StageDispatch:
    """The slots of one stage's replicas and the requests waiting for one (see module doc)."""

    def __init__(self, table: RouteTable, stage: str, settings: DispatchSettings,
                 clock: Callable[[], float]) -> None:
        self.table = table
        self.stage = stage
        self.settings = settings
        self.clock = clock
        self.queue: DeadlineQueue[_Waiter] = DeadlineQueue(settings.min_queue, clock)
        self._calls = ServiceTimes(alpha=settings.ewma_alpha, min_samples=1, deviations=settings.call_deviations)

    @property
    def call_time(self) -> float | None:
        """Seconds one call to a replica of this stage is planned to take: per (variant, batch size) the stage
        routes to now (answered calls: EWMA mean plus `call_deviations` mean deviations), the slowest; None while
        one of them has not answered yet (just switched in: the replica, which knows its own speed, decides
        alone). One average over them all kept planning a fast variant with the slow one it replaced."""
        configs = self.table.configs(self.stage)
        if not configs or not all(self._calls.table(c) for c in configs):
            return None
        return max(self._calls.estimate(c, 1) for c in configs)

    def limit(self, replica_id: str) -> int:
        batch = self.table.batch_size_of(self.stage, replica_id)
        s = self.settings
        return s.default_in_flight if batch is None else max(s.min_in_flight, s.in_flight_per_batch * batch)

    def slots(self) -> int:
        return sum(self.limit(rid) for rid in self.table.replica_ids(self.stage))

    def _free(self, replica_id: str) -> bool:
        return self.table.outstanding.get(replica_id, 0) < self.limit(replica_id)

    async def acquire(self, deadline: float, priority: int, exclude: Collection[str] = ()) -> Pick | None:
        """A replica with a free slot, its slot taken (`release` gives it back); None when the stage has no
        replica left to try. Raises `Shed` when the request is answered here instead."""
        pick = self._take(exclude)
        if pick is not None:
            return pick
        if self.table.pick(self.stage, exclude=exclude) is None:
            return None  # no replica at all (not just none free)
        return await self._wait(deadline, priority, exclude)

    def _take(self, exclude: Collection[str]) -> Pick | None:
        pick = self.table.pick(self.stage, exclude=exclude, admit=self._free)
        if pick is not None:
            self.table.begin(self.stage, pick.replica.id)
        return pick

    def release(self, pick: Pick) -> None:
        self.table.end(pick.replica.id)
        self.wake()

    def observe(self, pick: Pick, seconds: float) -> None:
        """An answered call to the replica `pick` took `seconds`."""
        self._calls.observe((pick.variant, pick.replica.batch_size), 1, seconds)

    def wake(self) -> None:
        """Hand the free slots to the most urgent waiting requests, each its slot taken for it (a call ended or
        the table changed). While the stage has no replica (one being replaced), they keep waiting for one,
        within their deadline."""
        now = self.clock()
        while self.queue:
            head = self.queue.peek()
            assert head is not None
            waiter = head.item
            if waiter.future.done():
                self.queue.pop()
                continue
            if head.deadline <= now:
                self.queue.pop()
                waiter.future.set_result(_Refusal(504, self._late(now - head.deadline)))
                continue
            call = self.call_time
            if call is not None and now + call > head.deadline:  # it waited here too long to make it: not sent
                self.queue.pop()
                waiter.future.set_result(_Refusal(504, f"deadline cannot be met at stage {self.stage!r}: "
                                                       f"{(head.deadline - now) * 1000:.1f} ms left after its wait, "
                                                       f"a call takes {call * 1000:.1f} ms"))
                continue
            # A retry avoids the replicas that failed it, unless only they have a slot.
            pick = self._take(waiter.exclude) or (self._take(()) if waiter.exclude else None)
            if pick is None:
                return  # no free slot: the next release wakes it
            self.queue.pop()
            waiter.future.set_result(pick)

    async def _wait(self, deadline: float, priority: int, exclude: Collection[str]) -> Pick:
        now = self.clock()
        slots = self.slots()
        self.queue.limit = max(self.settings.min_queue, self.settings.queue_per_slot * slots)
        if self.call_time is not None and slots and not math.isinf(deadline):
            ahead = sum(1 for e in self.queue if (e.priority, e.deadline) <= (priority, deadline))
            start = now + (ahead + 1) / slots * self.call_time  # each slot turns over once per call time
            if start + self.call_time > deadline:
                raise Shed(504, f"deadline cannot be met at stage {self.stage!r}: {(deadline - now) * 1000:.1f} "
                                f"ms left, {ahead} request(s) wait ahead for {slots} slot(s) and a call takes "
                                f"{self.call_time * 1000:.1f} ms")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), tuple(exclude))
        left_out = self.queue.push(waiter, deadline=deadline, priority=priority)
        if left_out is not None and not left_out.item.future.done():
            left_out.item.future.set_result(_Refusal(503, f"overloaded: {len(self.queue)} requests wait for "
                                                          f"{slots} slot(s) of stage {self.stage!r}"))
        timeout = self.settings.max_wait_s if math.isinf(deadline) else max(0.0, deadline - now)
        try:
            got = await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except (TimeoutError, asyncio.CancelledError) as e:
            self.queue.remove_if(lambda e: e.item is waiter)
            handed = waiter.future.result() if waiter.future.done() and not waiter.future.cancelled() else None
            if isinstance(handed, Pick):
                self.release(handed)  # handed a slot just as it gave up: pass it on
            if isinstance(e, TimeoutError):
                raise Shed(504, self._late(0.0)) from None
            raise
        if isinstance(got, _Refusal):
            raise Shed(got.status, got.message)
        return got

    def _late(self, by_s: float) -> str:
        return (f"deadline exceeded waiting for a replica of stage {self.stage!r} "
                f"({len(self.queue)} waiting, {self.slots()} slot(s))" + (f", {by_s * 1000:.1f} ms late" if by_s else ""))
