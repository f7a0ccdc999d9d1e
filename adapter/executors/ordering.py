"""The order in which an executor carries out a decision so that the cores held never pass the budget.

Bringing replicas to a decision changes each one's cores: in place (a running replica resized, `before` → `after`
cores; a resize holds the larger of the two until it is done), a start (0 → `after`) or a stop (`before` → 0, held
until the replica has drained). Done all at once, starts and growing resizes can pass the budget while the stops
and shrinking resizes that make room for them are still under way. `phases` orders the changes into four phases,
each finished before the next begins (the changes within a phase run together):

1. in-place changes that keep or shrink cores (in place first: they free cores without losing capacity);
2. the changes that add cores — starts and growing resizes — that fit on top of what is held after phase 1,
   in the order given (make before break: new capacity serves before old replicas leave, when both fit);
3. the stops;
4. the changes that add cores that did not fit before the stops (break before make).

`peak` is the most cores held at any instant of carrying out `phases` (the changes of a phase take their larger
figure while they run); when the decision itself fits the budget and what is held fits it, `peak` ≤ budget.
The local and the Kubernetes executors use this module; the simulator applies the same rule event by event
(`adapter.sim.budget`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

_EPS = 1e-9


@dataclass(frozen=True)
class CoreChange:
    """One replica's change: `before` cores held now (0: it does not exist yet), `after` once done (0: stopped)."""

    key: Hashable
    before: float
    after: float

    @property
    def kind(self) -> str:
        if self.before <= 0:
            return "start"
        if self.after <= 0:
            return "stop"
        return "grow" if self.after > self.before + _EPS else "shrink"


@dataclass(frozen=True)
class Phases:
    """The changes in the order to carry them out: `in_place` (shrinking or same), `make` (what adds cores and fits
    before the stops), `stops`, `after` (what adds cores once the stops are done)."""

    in_place: tuple[CoreChange, ...]
    make: tuple[CoreChange, ...]
    stops: tuple[CoreChange, ...]
    after: tuple[CoreChange, ...]

    def order(self) -> list[tuple[CoreChange, ...]]:
        return [self.in_place, self.make, self.stops, self.after]


def phases(changes: Sequence[CoreChange], budget: float, held: float | None = None) -> Phases:
    """Order `changes` (see the module docstring); `held`: every core held now (default: Σ before of `changes`,
    i.e. the changes cover every replica)."""
    now = sum(c.before for c in changes) if held is None else held
    in_place = tuple(c for c in changes if c.kind == "shrink")
    now -= sum(c.before - c.after for c in in_place)
    limit = budget * (1 + _EPS) + _EPS
    make: list[CoreChange] = []
    after: list[CoreChange] = []
    for c in changes:
        if c.kind not in ("start", "grow"):
            continue
        need = c.after - max(c.before, 0.0)
        if now + need <= limit and not after:  # keep the given order: once one waits, the rest wait too
            make.append(c)
            now += need
        else:
            after.append(c)
    stops = tuple(c for c in changes if c.kind == "stop")
    return Phases(in_place, tuple(make), stops, tuple(after))


def peak(changes: Sequence[CoreChange], plan: Phases, held: float | None = None) -> float:
    """The most cores held at any instant while `plan` is carried out phase after phase."""
    now = sum(c.before for c in changes) if held is None else held
    top = now
    for group in plan.order():
        during = now + sum(max(c.after, c.before) - c.before for c in group)
        top = max(top, during)
        now += sum(c.after - c.before for c in group)
        top = max(top, now)
    return top
