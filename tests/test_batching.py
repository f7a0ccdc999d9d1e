"""The batcher's decisions in virtual time: batch formation, the batch window, deadline rejection, and the
service-time estimates they rest on. No sleeping, no wall clock."""

from __future__ import annotations

import asyncio
import math

import pytest

from mlserver_ipa.batching import (
    Batcher,
    BatchPolicy,
    Rejection,
    ServiceTimes,
    plan_batch,
    rejects_on_arrival,
)
from mlserver_ipa.queueing import DeadlineQueue, Entry


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def linear(per_row: float, fixed: float = 0.0):
    """Service time model: fixed + per_row * rows seconds."""
    return lambda rows: fixed + per_row * rows


def names(entries) -> list[str]:
    return [e.item for e in entries]


# -- plan_batch ---------------------------------------------------------------------------------------------


def test_takes_most_urgent_up_to_batch_size_rows() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock())
    for name, deadline in [("d", 40.0), ("a", 10.0), ("c", 30.0), ("b", 20.0), ("e", 50.0)]:
        q.push(name, deadline=deadline)
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=3), linear(0.01))
    assert names(plan.batch) == ["a", "b", "c"]
    assert plan.dropped == [] and plan.wait_until is None
    assert names(plan_batch(q, 1.0, BatchPolicy(batch_size=3), linear(0.01)).batch) == ["d", "e"]


def test_batch_counts_rows_and_never_splits_a_request() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock())
    q.push("two", deadline=1.0, rows=2)
    q.push("three", deadline=2.0, rows=3)
    q.push("one", deadline=3.0, rows=1)
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=4), linear(0.001))
    assert names(plan.batch) == ["two"]  # "three" would make 5 rows: it waits for the next batch
    assert names(plan_batch(q, 0.0, BatchPolicy(batch_size=4), linear(0.001)).batch) == ["three", "one"]


def test_a_request_larger_than_the_batch_size_runs_alone() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock())
    q.push("big", rows=16)
    q.push("small")
    assert names(plan_batch(q, 0.0, BatchPolicy(batch_size=4), linear(0.001)).batch) == ["big"]


def test_waits_for_the_batch_to_fill_at_most_max_batch_time_after_the_oldest_arrival() -> None:
    clock = Clock(10.0)
    q: DeadlineQueue[str] = DeadlineQueue(100, clock)
    q.push("a")
    policy = BatchPolicy(batch_size=4, max_batch_time=0.005)
    plan = plan_batch(q, 10.001, policy, linear(0.001))
    assert plan.batch == [] and plan.wait_until == pytest.approx(10.005)
    clock.t = 10.002
    q.push("b")
    assert plan_batch(q, 10.002, policy, linear(0.001)).wait_until == pytest.approx(10.005)
    plan = plan_batch(q, 10.005, policy, linear(0.001))
    assert names(plan.batch) == ["a", "b"]


def test_the_batch_window_restarts_when_the_server_frees() -> None:
    # "a" arrived at 10.0 and waited through a batch that ended at 10.3, long past its window of 50 ms: it still
    # waits up to 50 ms from 10.3 for the batch to fill (the answers just sent are coming back as requests).
    clock = Clock(10.0)
    q: DeadlineQueue[str] = DeadlineQueue(100, clock)
    q.push("a")
    policy = BatchPolicy(batch_size=2, max_batch_time=0.050)
    plan = plan_batch(q, 10.3, policy, linear(0.001), free_since=10.3)
    assert plan.batch == [] and plan.wait_until == pytest.approx(10.35)
    clock.t = 10.31
    q.push("b")
    assert names(plan_batch(q, 10.31, policy, linear(0.001), free_since=10.3).batch) == ["a", "b"]
    # a window opened by a later arrival is not shortened by an earlier end of the last batch
    clock.t = 10.32
    q.push("c")
    assert plan_batch(q, 10.33, policy, linear(0.001), free_since=9.0).wait_until == pytest.approx(10.37)
    # without the end of the last batch (the rule before): what waited through it leaves at once, alone
    assert names(plan_batch(q, 10.5, policy, linear(0.001)).batch) == ["c"]


def test_the_restarted_window_never_waits_past_what_the_earliest_deadline_allows() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock(0.0))
    q.push("a", deadline=1.030)
    plan = plan_batch(q, 1.0, BatchPolicy(batch_size=2, max_batch_time=0.050), linear(0.010), free_since=1.0)
    assert plan.batch == [] and plan.wait_until == pytest.approx(1.010)  # 30 ms left - 20 ms for a full batch


def closed_loop(batch: int, late: dict[tuple[int, int], float], rounds: int, *, restart: bool) -> list[int]:
    """Batch sizes `plan_batch` forms for `batch` closed-loop clients in virtual time: each resends 5 ms after
    its answer (`late[(client, k)]` instead for its k-th request), a batch takes 200 ms, the window is 50 ms."""
    clock = Clock()
    q: DeadlineQueue[int] = DeadlineQueue(100, clock)
    policy = BatchPolicy(batch_size=batch, max_batch_time=0.050)
    sent = [0] * batch
    arrivals = [(0.001 * c, c) for c in range(batch)]
    sizes: list[int] = []
    free_since: float | None = None
    while len(sizes) < rounds:
        arrivals.sort()
        now = clock.t
        while arrivals and arrivals[0][0] <= now:
            clock.t, client = arrivals.pop(0)  # stamped with its own arrival time
            q.push(client)
        clock.t = now
        plan = plan_batch(q, clock.t, policy, lambda rows: 0.200, free_since if restart else None)
        if plan.batch:
            clock.t += 0.200
            free_since = clock.t
            sizes.append(len(plan.batch))
            for e in plan.batch:
                sent[e.item] += 1
                arrivals.append((clock.t + late.get((e.item, sent[e.item]), 0.005), e.item))
            continue
        nxt = [arrivals[0][0]] if arrivals else []
        clock.t = min(nxt + ([plan.wait_until] if plan.wait_until is not None else []))
    return sizes


def test_a_closed_loop_of_batch_size_clients_gets_full_batches_again_after_one_late_request() -> None:
    late = {(3, 2): 0.080}  # client 3's third request comes 80 ms after its answer, past the window
    # the third batch runs without it; the fourth waits for the three answered with that batch to come back
    assert closed_loop(4, late, 8, restart=True) == [4, 4, 3, 4, 4, 4, 4, 4]
    # counted from the arrival alone, what waited through the busy period leaves at once: split for good
    assert closed_loop(4, late, 8, restart=False) == [4, 4, 3, 1, 3, 1, 3, 1]


def test_a_full_batch_does_not_wait() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock())
    for n in "abcd":
        q.push(n)
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=4, max_batch_time=1.0), linear(0.001))
    assert names(plan.batch) == ["a", "b", "c", "d"]


def test_never_waits_so_long_that_the_earliest_deadline_is_missed() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock(0.0))
    q.push("tight", deadline=0.050)
    q.push("loose", deadline=10.0)
    policy = BatchPolicy(batch_size=8, max_batch_time=1.0)
    service = linear(0.005, fixed=0.010)  # a full batch of 8 takes 50 ms
    plan = plan_batch(q, 0.0, policy, service)
    # Starting a full batch after t=0 would end after 0.050: no waiting at all.
    assert names(plan.batch) == ["tight", "loose"]

    q2: DeadlineQueue[str] = DeadlineQueue(100, Clock(0.0))
    q2.push("tight", deadline=0.080)
    plan = plan_batch(q2, 0.0, policy, service)
    assert plan.batch == [] and plan.wait_until == pytest.approx(0.030)  # 80 ms - 50 ms for a full batch


def test_drops_requests_that_cannot_meet_their_deadline_even_alone() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock(0.0))
    q.push("hopeless", deadline=0.005)
    q.push("fine", deadline=0.100)
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=4), linear(0.010))
    assert names(d.entry for d in plan.dropped) == ["hopeless"]
    assert plan.dropped[0].start == 0.0 and plan.dropped[0].service == pytest.approx(0.010)
    assert names(plan.batch) == ["fine"]


def test_does_not_grow_a_batch_past_the_point_where_someone_in_it_would_be_late() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock(0.0))
    q.push("a", deadline=0.025)  # fits in a batch of at most 2 (10 ms per row)
    q.push("b", deadline=1.0)
    q.push("c", deadline=1.0)
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=8), linear(0.010))
    assert names(plan.batch) == ["a", "b"]
    assert names(e for e in q) == ["c"]


def test_after_dispatch_drops_waiting_requests_that_the_batch_in_flight_makes_hopeless() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock(0.0))
    q.push("first", deadline=0.015, priority=0)
    q.push("second", deadline=0.015, priority=1)  # must wait 10 ms for "first": 20 ms > 15 ms
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=1), linear(0.010))
    assert names(plan.batch) == ["first"]
    assert names(d.entry for d in plan.dropped) == ["second"]
    assert plan.dropped[0].start == pytest.approx(0.010)


def test_on_late_serve_keeps_hopeless_requests() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock(0.0))
    q.push("hopeless", deadline=0.001)
    q.push("fine", deadline=1.0)
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=4, on_late="serve"), linear(0.010))
    assert plan.dropped == []
    assert names(plan.batch) == ["hopeless", "fine"]


def test_empty_queue_waits_for_the_next_arrival() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock())
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=4, max_batch_time=0.1), linear(0.01))
    assert plan.batch == [] and plan.wait_until is None


def test_priority_class_fills_the_batch_before_earlier_deadlines_of_lower_classes() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock())
    q.push("low-early", deadline=0.5, priority=2)
    q.push("high-late", deadline=5.0, priority=0)
    q.push("high-none", priority=0)
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=2), linear(0.001))
    assert names(plan.batch) == ["high-late", "high-none"]


# -- ServiceTimes -------------------------------------------------------------------------------------------


def test_service_times_ewma_and_estimates() -> None:
    times = ServiceTimes(alpha=0.5, min_samples=2, deviations=0)
    assert times.estimate("v", 4) == 0.0  # nothing measured: never reject on a guess
    times.observe("v", 1, 0.010)
    assert times.estimate("v", 1) == pytest.approx(0.010)  # untrusted, but all there is
    times.observe("v", 1, 0.020)
    assert times.estimate("v", 1) == pytest.approx(0.015)  # EWMA
    assert times.estimate("v", 4) == pytest.approx(0.060)  # one point: proportional
    times.seed("v", 8, 0.050)
    assert times.estimate("v", 4) == pytest.approx(0.015 + (0.050 - 0.015) * 3 / 7)  # interpolated
    assert times.estimate("v", 16) == pytest.approx(0.050 + (0.050 - 0.015) / 7 * 8)  # along the last slope
    assert times.estimate("other", 1) == 0.0
    assert times.table("v") == {1: pytest.approx(0.015), 8: pytest.approx(0.050)}


def test_a_larger_batch_is_never_estimated_faster_than_a_smaller_one() -> None:
    times = ServiceTimes()
    times.seed("v", 1, 0.020)
    times.seed("v", 4, 0.010)  # a noisy warm-up
    assert times.estimate("v", 4) == pytest.approx(0.020)
    assert times.estimate("v", 2) == pytest.approx(0.020)


def test_a_batch_size_seen_rarely_does_not_bend_the_curve() -> None:
    times = ServiceTimes(min_samples=3, deviations=0)
    times.seed("v", 1, 0.010)
    times.seed("v", 4, 0.025)
    times.observe("v", 2, 0.200)  # one slow outlier (another process took the CPU)
    assert times.estimate("v", 3) == pytest.approx(0.020)
    for _ in range(20):
        times.observe("v", 2, 0.014)
    assert times.estimate("v", 2) == pytest.approx(0.014, rel=0.25)  # trusted now; the EWMA forgot the outlier


def test_estimates_add_the_measured_spread_so_deadlines_hold_in_slow_batches_too() -> None:
    times = ServiceTimes(alpha=0.5, deviations=2.0)
    times.seed("v", 1, 0.010)
    assert times.estimate("v", 1) == pytest.approx(0.010)  # a warm-up has no spread yet
    for seconds in (0.010, 0.020, 0.010, 0.020):
        times.observe("v", 1, seconds)
    mean, spread = times.table("v")[1], times.estimate("v", 1) - times.table("v")[1]
    assert 0.010 < mean < 0.020 and spread > 0.005  # noisy: admit only what also fits a slow batch
    steady = ServiceTimes(alpha=0.5, deviations=2.0)
    for _ in range(10):
        steady.observe("v", 1, 0.010)
    assert steady.estimate("v", 1) == pytest.approx(0.010)  # steady: no margin needed


# -- Batcher.submit: admission in virtual time ---------------------------------------------------------------


def make_batcher(clock: Clock, policy: BatchPolicy, service, limit: int = 100):
    q: DeadlineQueue[str] = DeadlineQueue(limit, clock)
    rejected: list[Rejection[str]] = []

    async def execute(batch: list[Entry[str]]) -> None:
        pass

    batcher = Batcher(q, policy, clock=clock, service_time=service, execute=execute, reject=rejected.append)
    return batcher, q, rejected


async def test_submit_rejects_at_once_what_cannot_make_it_and_reports_the_numbers() -> None:
    clock = Clock(1.0)
    batcher, q, rejected = make_batcher(clock, BatchPolicy(batch_size=2), linear(0.020))
    batcher.submit("ok", deadline=1.050)
    batcher.submit("hopeless", deadline=1.010)
    assert names(q) == ["ok"]
    assert [(r.entry.item, r.reason) for r in rejected] == [("hopeless", "deadline")]
    assert rejected[0].start == 1.0 and rejected[0].service == pytest.approx(0.020)


async def test_submit_with_serve_late_accepts_everything_that_fits() -> None:
    clock = Clock()
    batcher, q, rejected = make_batcher(clock, BatchPolicy(on_late="serve"), linear(0.020))
    batcher.submit("late", deadline=-1.0)
    assert names(q) == ["late"] and rejected == []


async def test_submit_answers_overloaded_for_whatever_does_not_fit() -> None:
    clock = Clock()
    batcher, q, rejected = make_batcher(clock, BatchPolicy(), linear(0.0), limit=2)
    batcher.submit("a", deadline=5.0)
    batcher.submit("b", deadline=6.0)
    batcher.submit("c", deadline=7.0)  # least urgent: itself left out
    batcher.submit("d", deadline=1.0)  # more urgent than "b": displaces it
    assert names(q) == ["d", "a"]
    assert [(r.entry.item, r.reason) for r in rejected] == [("c", "overloaded"), ("b", "overloaded")]


async def test_batcher_loop_serves_in_plan_order() -> None:
    """The loop itself, driven by a virtual clock that only execute advances (no sleeping)."""
    clock = Clock()
    q: DeadlineQueue[str] = DeadlineQueue(100, clock)
    served: list[list[str]] = []
    done = asyncio.Event()

    async def execute(batch: list[Entry[str]]) -> None:
        served.append(names(batch))
        clock.t += 0.010
        if sum(map(len, served)) == 5:
            done.set()

    batcher = Batcher(q, BatchPolicy(batch_size=2), clock=clock, service_time=linear(0.005),
                      execute=execute, reject=lambda r: None)
    for name, deadline in [("e", 5.0), ("b", 2.0), ("d", 4.0), ("a", 1.0), ("c", 3.0)]:
        batcher.submit(name, deadline=deadline)
    task = asyncio.create_task(batcher.run())
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    assert served == [["a", "b"], ["c", "d"], ["e"]]
    assert math.isclose(clock.t, 0.030)


async def test_the_batcher_loop_survives_an_execute_that_raises() -> None:
    """A batch whose execution raises (answered by execute itself) must not stop the loop: the next is served."""
    clock = Clock()
    q: DeadlineQueue[str] = DeadlineQueue(100, clock)
    served: list[list[str]] = []
    done = asyncio.Event()

    async def execute(batch: list[Entry[str]]) -> None:
        clock.t += 0.010
        if names(batch) == ["a"]:
            raise RuntimeError("onnxruntime fell over")
        served.append(names(batch))
        done.set()

    batcher = Batcher(q, BatchPolicy(batch_size=1), clock=clock, service_time=linear(0.005),
                      execute=execute, reject=lambda r: None)
    batcher.submit("a", deadline=1.0)
    batcher.submit("b", deadline=2.0)
    task = asyncio.create_task(batcher.run())
    await asyncio.wait_for(done.wait(), 10)
    assert not task.done()  # still running
    task.cancel()
    assert served == [["b"]] and batcher.in_flight == 0


def test_an_idle_replica_whose_estimate_rules_out_everyone_still_tries_the_most_urgent() -> None:
    # A run of slow batches pushed the estimate (50 ms) past every deadline: without a last chance the replica
    # would reject everything, measure nothing and never recover.
    q: DeadlineQueue[str] = DeadlineQueue(100, Clock(0.0))
    q.push("urgent", deadline=0.020)
    q.push("later", deadline=0.030)
    q.push("gone", deadline=-0.001)
    plan = plan_batch(q, 0.0, BatchPolicy(batch_size=1), linear(0.050))
    assert names(plan.batch) == ["urgent"]
    assert sorted(names(d.entry for d in plan.dropped)) == ["gone", "later"]


def test_on_arrival_an_idle_empty_replica_admits_any_live_request() -> None:
    assert not rejects_on_arrival(0.0, None, 0, deadline=0.010, service=0.050)
    assert rejects_on_arrival(0.0, None, 0, deadline=0.0, service=0.050)
    assert rejects_on_arrival(0.0, None, 1, deadline=0.010, service=0.050)  # others wait: the estimate rules
    assert rejects_on_arrival(0.0, 0.005, 0, deadline=0.010, service=0.050)  # busy
