"""The deadline queue: requests waiting for a batch, most urgent first, bounded.

Order: the priority class dominates, then earliest deadline first (EDF) within a class, then arrival order.
Lower priority numbers are more urgent (as Triton's V2 `priority` parameter). A request of class 0 is served
before any request of class 1 whatever their deadlines: a class is a promise to the caller (e.g. interactive
before batch traffic), and EDF inside each class makes the most of what is left. Requests without a deadline
have deadline `inf`, so they come after every request with a deadline in their class.

Heap entries are `(priority, deadline, sequence, entry)`: the sequence counter is unique, so the order is
deterministic and two requests are never compared.

The queue is bounded: when it is full, a newcomer more urgent than the least urgent waiting request displaces
it; otherwise the newcomer itself does not fit. Either way `push` returns the entry that did not fit, so the
caller answers it "overloaded".

Time is an input: `clock()` stamps arrivals; nothing here decides from the wall clock.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Entry(Generic[T]):
    """One waiting request and what ordering and batching need to know about it."""

    item: T
    deadline: float
    """Absolute time on the queue's clock by which the answer must be out; `inf` when none."""
    priority: int
    arrival: float
    rows: int = 1
    """Rows (first dimension) the request carries: a batch counts rows, not requests."""
    sequence: int = field(default=0)

    @property
    def key(self) -> tuple[int, float, int]:
        return (self.priority, self.deadline, self.sequence)


class DeadlineQueue(Generic[T]):
    """A bounded priority queue of `Entry`, most urgent first (see the module docstring for the order)."""

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._clock = clock
        self._heap: list[tuple[int, float, int, Entry[T]]] = []
        self._counter = itertools.count()
        self._rows = 0

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self) -> Iterator[Entry[T]]:
        """Entries most urgent first."""
        return (e for *_, e in sorted(self._heap))

    @property
    def rows(self) -> int:
        """Rows waiting in all entries."""
        return self._rows

    def push(self, item: T, *, deadline: float = math.inf, priority: int = 0, rows: int = 1) -> Entry[T] | None:
        """Queue `item`; return the entry that did not fit (the newcomer or a displaced one), else None."""
        entry = Entry(item, deadline, priority, self._clock(), rows, next(self._counter))
        if len(self._heap) < self.limit:
            self._add(entry)
            return None
        worst = max(self._heap)
        if entry.key < worst[:3]:
            self._heap.remove(worst)
            heapq.heapify(self._heap)
            self._rows -= worst[3].rows
            self._add(entry)
            return worst[3]
        return entry

    def peek(self) -> Entry[T] | None:
        return self._heap[0][3] if self._heap else None

    def pop(self) -> Entry[T]:
        """Remove and return the most urgent entry; IndexError when empty."""
        entry = heapq.heappop(self._heap)[3]
        self._rows -= entry.rows
        return entry

    def remove_if(self, predicate: Callable[[Entry[T]], bool]) -> list[Entry[T]]:
        """Remove every entry for which `predicate` holds; return them most urgent first."""
        removed = sorted(t for t in self._heap if predicate(t[3]))
        if removed:
            gone = {id(t[3]) for t in removed}
            self._heap = [t for t in self._heap if id(t[3]) not in gone]
            heapq.heapify(self._heap)
            self._rows -= sum(t[3].rows for t in removed)
        return [t[3] for t in removed]

    def earliest_deadline(self) -> float:
        """The earliest deadline of any waiting entry (any class); `inf` when empty or none has one."""
        return min((t[1] for t in self._heap), default=math.inf)

    def oldest_arrival(self) -> float | None:
        return min((t[3].arrival for t in self._heap), default=None)

    def _add(self, entry: Entry[T]) -> None:
        heapq.heappush(self._heap, (entry.priority, entry.deadline, entry.sequence, entry))
        self._rows += entry.rows
