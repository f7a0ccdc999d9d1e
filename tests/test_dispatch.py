"""The router's admission per stage (`mlserver_ipa.dispatch`): slots per replica tied to its batch size, a
bounded deadline-ordered queue beyond them, and shedding at once when a deadline cannot be met. The table and
the dispatch are plain state; the clock is the event loop's."""

from __future__ import annotations

import asyncio
import gc
import math

import pytest

from mlserver_ipa.dispatch import DispatchSettings, Shed, StageDispatch
from mlserver_ipa.route_table import Pick, ReplicaRoute, RouteGroup, RouteTable, StageRoute


def observe(d: StageDispatch, seconds: float, replica: int = 0) -> None:
    """An answered call of `seconds` to replica `replica` of the stage's first group."""
    group = d.table.routes["s"].groups[0]
    d.observe(Pick(group.replicas[replica], group.variant), seconds)


def dispatch(batch: int | None = 2, replicas: int = 1, **settings: int) -> StageDispatch:
    table = RouteTable(["s"])
    table.set_route("s", StageRoute(model="m", groups=[RouteGroup(variant="v", replicas=[
        ReplicaRoute(id=f"r{i}", url=f"http://127.0.0.1:{9000 + i}", batch_size=batch) for i in range(replicas)])]))
    return StageDispatch(table, "s", DispatchSettings(**settings), asyncio.get_running_loop().time)


async def test_slots_follow_the_batch_size() -> None:
    d = dispatch(batch=3, replicas=2, in_flight_per_batch=2, min_in_flight=1)
    assert d.slots() == 12
    assert dispatch(batch=1, replicas=2, in_flight_per_batch=2, min_in_flight=4).slots() == 8
    assert dispatch(batch=None, default_in_flight=5).slots() == 5
    d = dispatch(batch=1, in_flight_per_batch=2, min_in_flight=1)  # 2 slots on the one replica
    now = d.clock()
    picks = [await d.acquire(now + 10, 0) for _ in range(2)]
    assert all(p is not None and p.replica.id == "r0" for p in picks)
    assert d.table.outstanding["r0"] == 2


async def test_a_freed_slot_goes_to_the_most_urgent_waiter() -> None:
    d = dispatch(batch=1, in_flight_per_batch=1, min_in_flight=1)
    now = d.clock()
    first = await d.acquire(now + 10, 0)
    assert first is not None
    order: list[str] = []

    async def wait(name: str, deadline: float, priority: int = 0) -> None:
        pick = await d.acquire(deadline, priority)
        assert pick is not None
        order.append(name)
        d.release(pick)

    tasks = [asyncio.create_task(wait("late", now + 9)), asyncio.create_task(wait("soon", now + 5)),
             asyncio.create_task(wait("batch-class", now + 1, priority=1))]
    await asyncio.sleep(0)
    assert len(d.queue) == 3
    d.release(first)
    await asyncio.gather(*tasks)
    assert order == ["soon", "late", "batch-class"]  # priority class first, then earliest deadline


async def test_the_queue_is_bounded_and_sheds_the_least_urgent() -> None:
    d = dispatch(batch=1, in_flight_per_batch=1, min_in_flight=1, queue_per_slot=1, min_queue=2)
    now = d.clock()
    assert await d.acquire(now + 10, 0) is not None
    waiting = [asyncio.create_task(d.acquire(now + 10 - i, 0)) for i in range(3)]  # the last is most urgent
    await asyncio.sleep(0)
    with pytest.raises(Shed) as shed:
        await waiting[0]  # the least urgent one was displaced by the third
    assert shed.value.status == 503 and "overloaded" in str(shed.value)
    assert len(d.queue) == 2
    for t in waiting[1:]:
        t.cancel()
    await asyncio.gather(*waiting[1:], return_exceptions=True)
    assert len(d.queue) == 0


async def test_a_wait_that_cannot_end_in_time_is_shed_at_once() -> None:
    d = dispatch(batch=1, in_flight_per_batch=1, min_in_flight=1)
    observe(d, 0.5)  # a call takes half a second
    now = d.clock()
    assert await d.acquire(now + 10, 0) is not None
    with pytest.raises(Shed) as shed:  # must wait for the slot (0.5 s) and then be served (0.5 s): no
        await d.acquire(now + 0.8, 0)
    assert shed.value.status == 504 and "cannot be met" in str(shed.value)
    assert len(d.queue) == 0


async def test_a_waiter_is_answered_at_its_deadline_not_later() -> None:
    d = dispatch(batch=1, in_flight_per_batch=1, min_in_flight=1)
    now = d.clock()
    assert await d.acquire(math.inf, 0) is not None
    with pytest.raises(Shed) as shed:  # no call time measured yet: it waits, but only until its deadline
        await d.acquire(now + 0.05, 0)
    assert shed.value.status == 504 and d.clock() >= now + 0.05
    assert len(d.queue) == 0


async def test_no_replica_at_all_is_not_a_wait() -> None:
    d = dispatch(batch=1, replicas=1)
    assert await d.acquire(d.clock() + 1, 0, exclude={"r0"}) is None


async def test_new_slots_wake_as_many_waiters_and_a_stage_without_replicas_keeps_them_waiting() -> None:
    d = dispatch(batch=1, in_flight_per_batch=1, min_in_flight=1)
    now = d.clock()
    assert await d.acquire(now + 10, 0) is not None
    waiting = [asyncio.create_task(d.acquire(now + 10, 0)) for _ in range(3)]
    await asyncio.sleep(0)
    d.table.set_route("s", StageRoute(model="m", groups=[RouteGroup(variant="v", replicas=[
        ReplicaRoute(id=f"r{i}", url=f"http://127.0.0.1:{9000 + i}", batch_size=1) for i in range(3)])]))
    d.wake()  # two new replicas, two free slots: two of the three get one
    done, pending = await asyncio.wait(waiting, timeout=0.5)
    assert len(done) == 2 and len(pending) == 1
    d.table.set_route("s", StageRoute(model="m"))  # every replica gone for a moment (one being replaced)
    d.wake()
    await asyncio.sleep(0.05)
    assert not pending.copy().pop().done()  # still waiting for a replica, within its deadline
    d.table.set_route("s", StageRoute(model="m", groups=[RouteGroup(variant="v", replicas=[
        ReplicaRoute(id="r9", url="http://127.0.0.1:9009", batch_size=1)])]))
    d.wake()
    pick = await pending.pop()
    assert pick is not None and pick.replica.id == "r9"


async def test_the_call_time_is_planned_with_its_slow_tail() -> None:
    d = dispatch()
    assert d.call_time is None
    observe(d, 0.1)
    observe(d, 0.3)  # mean 0.12, mean deviation 0.02 (EWMA, weight 0.1)
    assert d.call_time == pytest.approx(0.12 + 2 * 0.02)


async def test_a_waiter_that_can_no_longer_make_it_is_shed_when_its_slot_comes_not_sent() -> None:
    now = [100.0]
    table = RouteTable(["s"])
    table.set_route("s", StageRoute(model="m", groups=[RouteGroup(variant="v", replicas=[
        ReplicaRoute(id="r0", url="http://127.0.0.1:9000", batch_size=1)])]))
    d = StageDispatch(table, "s", DispatchSettings(in_flight_per_batch=1, min_in_flight=1), lambda: now[0])
    observe(d, 0.5)
    first = await d.acquire(now[0] + 10, 0)
    assert first is not None
    waiter = asyncio.create_task(d.acquire(now[0] + 2.0, 0))  # admitted: a slot in 0.5 s, done by 1.0 s
    await asyncio.sleep(0)
    assert len(d.queue) == 1
    now[0] += 1.8  # its slot comes late: 0.2 s left, a call takes 0.5 s
    d.release(first)
    with pytest.raises(Shed) as shed:
        await waiter
    assert shed.value.status == 504 and "after its wait" in str(shed.value)
    assert table.outstanding.get("r0", 0) == 0  # the slot was not taken for it
    assert await d.acquire(now[0] + 10, 0) is not None  # and the next request gets it


async def test_the_call_time_is_the_variants_routed_to_now() -> None:
    d = dispatch()
    observe(d, 0.5)  # the slow variant "v"
    assert d.call_time == pytest.approx(0.5)
    fast = StageRoute(model="m", groups=[RouteGroup(variant="fast", replicas=[
        ReplicaRoute(id="f0", url="http://127.0.0.1:9100", batch_size=2)])])
    d.table.set_route("s", fast)
    assert d.call_time is None  # switched in, not answered yet: no estimate sheds for it
    d.observe(Pick(fast.groups[0].replicas[0], "fast"), 0.05)
    assert d.call_time == pytest.approx(0.05)  # not an average with the variant it replaced


async def test_a_shed_request_leaves_no_reference_cycle_for_the_collector() -> None:
    """Shed from a full queue (503) and shed when its slot comes too late (504): nothing of either request is
    left for the garbage collector. A future that kept the raised exception had made a cycle through the
    awaiting frame, and every shed request's tensors waited in it for a full collection."""
    d = dispatch(batch=1, in_flight_per_batch=1, min_in_flight=1, min_queue=1, queue_per_slot=1)
    first = await d.acquire(d.clock() + 10, 0)
    assert first is not None

    async def shed(deadline_s: float) -> int:
        try:
            await d.acquire(d.clock() + deadline_s, 0)
        except Shed as e:
            return e.status
        return 200

    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            late = asyncio.create_task(shed(0.2))   # waits, then is pushed out by a more urgent one: 503
            await asyncio.sleep(0)
            urgent = asyncio.create_task(shed(0.01))  # times out while it waits: 504
            await asyncio.sleep(0.02)
            assert (await late, await urgent) == (503, 504)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        frames = [o for o in gc.garbage if type(o).__name__ == "frame"]
        assert not frames, sorted({f.f_code.co_qualname for f in frames})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    d.release(first)
