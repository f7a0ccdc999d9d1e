"""The core budget in every transition: changes that add cores wait until the budget has room for them.

Carrying out a decision frees cores (replicas that drain, in-place switches to fewer cores) and takes cores
(new replicas, in-place switches to more). `BudgetGate` holds the changes that take cores, in the order they were
decided, and lets each run as soon as it fits on top of what is charged: so a stage makes before it breaks (a new
replica serving beside the old ones) only when both fit, and otherwise what frees cores goes first. When nothing
that could free cores is under way any more, whatever still waits runs anyway (a decision that itself exceeds
the budget is carried out rather than never). The engine (`adapter.sim.engine.Engine`) says what is charged,
whether anything is still freeing cores, and how to carry a change out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from adapter.sim.cluster import Replica, ReplicaConfig


@dataclass(frozen=True)
class Grow:
    """A change that takes cores: a new replica to start, or a running one to switch to more cores."""

    kind: Literal["start", "switch"]
    replica: Replica
    config: ReplicaConfig
    delay: float  # the switch's delay (starts: unused)

    @property
    def need(self) -> float:
        """Cores it adds to what is charged now."""
        return self.config.cores - (0.0 if self.kind == "start" else self.replica.charged)

    @property
    def void(self) -> bool:
        """Overtaken: the replica is gone, or a switch's replica is draining."""
        return self.replica.removed or (self.kind == "switch" and self.replica.draining)


class BudgetGate:
    """Changes that take cores, waiting for room in `budget` cores (see the module docstring)."""

    def __init__(self, budget: float) -> None:
        self.limit = budget * (1 + 1e-9) + 1e-9
        self.waiting: list[Grow] = []
        self._admitting = False

    def forget_switches(self) -> None:
        """A new decision re-plans the running replicas: switches not begun are dropped (starts stay)."""
        self.waiting = [g for g in self.waiting if g.kind == "start"]

    def admit(self, charged: Callable[[], float], freeing: Callable[[], bool], run: Callable[[Grow], None],
              force: bool) -> None:
        """Run, in order, every waiting change that fits; with `force`, all of them once nothing is `freeing()`."""
        if not self.waiting or self._admitting:
            return
        self._admitting = True
        try:
            left = []
            for g in self.waiting:
                if g.void:
                    continue
                if charged() + g.need <= self.limit:
                    run(g)
                else:
                    left.append(g)
            if left and force and not freeing():
                for g in left:
                    run(g)
                left = []
            self.waiting = left
        finally:
            self._admitting = False
