"""The budgets requests arrive with at the first hop, over a sliding window: what Sponge's `cl_max` is read from.

A request's budget at arrival is its absolute deadline minus its arrival stamp (`deadlines`): the user's SLO less
the time it already spent before it reached the pipeline (the network, a client's queue), or its relative
`deadline_ms` when it carries no absolute one (then the client took that time off itself, as in Sponge). The
router records one per request that has a deadline, shed ones included, and exports over the last `window_s`:

    ipa_router_arrival_budget_ms{pipeline, quantile="0"}      the smallest budget that arrived
    ipa_router_arrival_budget_ms{pipeline, quantile="0.01"}   its 1st percentile
    ipa_router_arrival_budget_requests{pipeline}              requests with a deadline in the window

The adapter turns it into `cl_max = SLO − budget` (the p99 of the time spent before arrival: a lone request with a
tiny budget does not make the whole pipeline plan for it), with the SLO it decides for: the router needs no SLO,
and an SLO changed at run time applies at once. Memory is bounded (`max_samples`); time is an input (`clock`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

QUANTILES = (0.0, 0.01)


class ArrivalBudgets(Collector):
    """Budgets (ms) of the requests that arrived over the last `window_s` seconds of `clock`, for Prometheus.

    Kept in two preallocated arrays used as a ring of `max_samples` (arrival, budget) pairs, not as a Python
    object per request: its memory is fixed from the start, and the collector has nothing of it to walk."""

    def __init__(self, pipeline: str, clock: Callable[[], float], window_s: float = 30.0,
                 max_samples: int = 1 << 16) -> None:
        self.pipeline, self.clock, self.window_s = pipeline, clock, window_s
        self._at = np.zeros(max_samples)
        self._budget = np.zeros(max_samples)
        self._next = 0  # where the next sample goes; samples are in arrival order from `_next - _count`
        self._count = 0

    def add(self, at: float, budget_ms: float) -> None:
        """A request that arrived at `at` (this clock) with `budget_ms` left."""
        if math.isfinite(budget_ms):
            i = self._next
            self._at[i], self._budget[i] = at, budget_ms
            self._next = (i + 1) % len(self._at)
            self._count = min(self._count + 1, len(self._at))

    def window(self) -> list[float]:
        """The budgets that arrived within the window, oldest first (older ones are forgotten here)."""
        if not self._count:
            return []
        order = (np.arange(self._next - self._count, self._next)) % len(self._at)
        recent = self._at[order] >= self.clock() - self.window_s
        kept = order[recent]
        self._count = len(kept)  # arrivals are in time order: what is out of the window is the oldest
        return self._budget[kept].tolist()

    def quantile(self, q: float, budgets: list[float] | None = None) -> float | None:
        """The q-quantile (lower rank) of the window's budgets; None when none arrived."""
        values = self.window() if budgets is None else budgets
        if not values:
            return None
        k = max(1, math.ceil(q * len(values)))
        return heapq.nsmallest(k, values)[-1]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        budgets = self.window()
        g = GaugeMetricFamily("ipa_router_arrival_budget_ms", f"Budget requests arrived with over the last "
                              f"{self.window_s:g} s (deadline minus arrival), by quantile",
                              labels=["pipeline", "quantile"])
        for q in QUANTILES:
            value = self.quantile(q, budgets)
            if value is not None:
                g.add_metric([self.pipeline, f"{q:g}"], value)
        yield g
        c = GaugeMetricFamily("ipa_router_arrival_budget_requests", "Requests with a deadline over that window",
                              labels=["pipeline"])
        c.add_metric([self.pipeline], len(budgets))
        yield c
