"""What switching a stage's variant in place costs the decision, and when a switch has paid for itself.

A replica switches variant in place: the runtime loads the new variant's weights and warms it up beside the old
one, which keeps serving until the new one is ready (`mlserver_ipa.session.SessionHolder.switch`). For the
speech and text families that takes seconds to tens of seconds (benchmarks/transformers_runtime.py measures it
per variant, `profiles/switch.csv` ships what it printed), and while it lasts the replica serves the *old*
variant, slowed by the loading that shares its cores (`serving_ratio`, measured with it).

The decision counts that in two places:

- **throughput** (`affordable`, in the solvers' candidate tables, so both solvers see the same rows and stay
  exact and equal): a configuration that changes a stage's variant provides, over the next interval,
  `f·r·C_old + (1 − f)·C_new` with `f = min(1, T / interval_s)`, T the switch time on the row's cores
  (`switch_seconds`), `r` the serving ratio and `C_old` the capacity in force; it must cover the load like any other. When no configuration of a stage can (the variant in
  force is short of the load and every switch is too slow to help this interval), the constraint is dropped for
  that stage: switching is then the only way forward, and staying short is no better.
- **hold-down** (`hold_intervals`, applied by the guard `adapter.decision.guards.hold_switch`): a switch that
  takes T seconds is made only once the new variants have been wanted for `payback·T` seconds in a row, while the
  decision in force still meets every constraint; a noisy load therefore does not flap a slow variant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SwitchCost:
    """What switching a replica to one variant costs (`profiles/switch.csv`, one row per variant)."""

    switch_s: float  # seconds from the control call to the new variant serving: load + warm-up
    serving_ratio: float = 1.0  # throughput of the old variant while the new one loads, relative to before


@dataclass(frozen=True)
class InForce:
    """What a stage runs now: its variants and the capacity of its replicas (requests per second)."""

    variants: frozenset[str]
    capacity_rps: float


def switch_seconds(costs: Mapping[str, SwitchCost], variant: str, cores: float = 1.0) -> float:
    """The time a switch to `variant` takes on a replica of `cores` (0 when it was not measured: the switch is
    taken as free). Measured under a 1-core quota; on half a core the measured switches took 1.1-2.4x as long
    (loading is partly page-cache reads the quota does not slow), so 1/cores below one core is the cautious
    scale."""
    cost = costs.get(variant)
    return 0.0 if cost is None else cost.switch_s / min(1.0, max(cores, 1e-3))


def affordable(
    variants: np.ndarray,
    cores: np.ndarray,
    capacity: np.ndarray,
    need_rps: float,
    in_force: InForce | None,
    costs: Mapping[str, SwitchCost],
    interval_s: float,
) -> np.ndarray:
    """Per candidate row (its variant, cores per replica and capacity once ready: arrays of one shape), whether
    its capacity over the next interval, the switch counted, covers `need_rps` (rows that keep a variant in
    force always do)."""
    ok = np.ones(np.shape(variants), dtype=bool)
    if in_force is None or interval_s <= 0 or not costs:
        return ok
    for name in np.unique(variants):
        if name in in_force.variants or name not in costs:
            continue
        rows = variants == name
        cost = costs[name]
        f = np.minimum(1.0, cost.switch_s / np.minimum(1.0, np.maximum(cores[rows], 1e-3)) / interval_s)
        during = f * cost.serving_ratio * in_force.capacity_rps
        ok[rows] = during + (1.0 - f) * capacity[rows] >= need_rps * (1.0 - 1e-9)
    return ok


def hold_intervals(switch_s: float, interval_s: float, payback: float) -> int:
    """Intervals in a row a switch taking `switch_s` must be wanted before it is made (1: at once)."""
    if payback <= 0 or switch_s <= 0 or interval_s <= 0:
        return 1
    return max(1, math.ceil(payback * switch_s / interval_s - 1e-9))
