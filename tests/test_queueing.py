"""DeadlineQueue: order (priority class, then EDF, then arrival), bounds and displacement, in virtual time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlserver_ipa.queueing import DeadlineQueue


class Clock:
    """Virtual time: advances only when told."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def drain(q: DeadlineQueue[str]) -> list[str]:
    out = []
    while q:
        out.append(q.pop().item)
    return out


def test_edf_within_a_class_and_fifo_among_equal_deadlines() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(10, Clock())
    q.push("late", deadline=3.0)
    q.push("early", deadline=1.0)
    q.push("none")  # no deadline: after every request that has one
    q.push("mid-a", deadline=2.0)
    q.push("mid-b", deadline=2.0)
    assert drain(q) == ["early", "mid-a", "mid-b", "late", "none"]


def test_priority_class_dominates_deadline_lower_is_more_urgent() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(10, Clock())
    q.push("batch-early", deadline=0.5, priority=1)
    q.push("urgent-late", deadline=9.0, priority=0)
    q.push("urgent-none", priority=0)
    q.push("vip", deadline=100.0, priority=-1)
    assert drain(q) == ["vip", "urgent-late", "urgent-none", "batch-early"]


def test_arrival_is_stamped_by_the_injected_clock_and_rows_are_counted() -> None:
    clock = Clock(5.0)
    q: DeadlineQueue[str] = DeadlineQueue(10, clock)
    q.push("a", rows=3)
    clock.t = 7.5
    q.push("b", rows=2)
    assert q.rows == 5 and len(q) == 2
    assert q.oldest_arrival() == 5.0
    assert [e.arrival for e in q] == [5.0, 7.5]
    q.pop()
    assert q.rows == 2


def test_full_queue_rejects_a_newcomer_that_is_not_more_urgent() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(2, Clock())
    assert q.push("a", deadline=1.0) is None
    assert q.push("b", deadline=2.0) is None
    left_out = q.push("c", deadline=3.0)
    assert left_out is not None and left_out.item == "c"
    assert drain(q) == ["a", "b"]


def test_full_queue_displaces_the_least_urgent_for_a_more_urgent_newcomer() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(2, Clock())
    q.push("a", deadline=1.0)
    q.push("b", deadline=5.0, rows=4)
    left_out = q.push("c", deadline=2.0)
    assert left_out is not None and left_out.item == "b"
    assert q.rows == 2
    assert drain(q) == ["a", "c"]


def test_remove_if_and_earliest_deadline() -> None:
    q: DeadlineQueue[str] = DeadlineQueue(10, Clock())
    q.push("x", deadline=4.0, priority=1)
    q.push("y", deadline=1.0, priority=2)
    q.push("z")
    assert q.earliest_deadline() == 1.0
    gone = q.remove_if(lambda e: e.deadline < 5.0)
    assert [e.item for e in gone] == ["x", "y"]
    assert q.earliest_deadline() == math.inf
    assert drain(q) == ["z"]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DeadlineQueue(0, Clock())


@given(st.lists(st.tuples(st.integers(-2, 2), st.one_of(st.none(), st.floats(0, 100))), max_size=60))
def test_pop_order_is_sorted_by_priority_deadline_arrival(requests: list[tuple[int, float | None]]) -> None:
    q: DeadlineQueue[int] = DeadlineQueue(1000, Clock())
    for i, (priority, deadline) in enumerate(requests):
        q.push(i, priority=priority, deadline=math.inf if deadline is None else deadline)
    popped = drain(q)

    def key(i: int) -> tuple[int, float, int]:
        p, d = requests[i]
        return (p, math.inf if d is None else d, i)

    assert popped == sorted(range(len(requests)), key=key)
