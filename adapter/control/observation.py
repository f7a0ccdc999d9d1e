"""What the monitor saw of the running pipeline over one window: the input of every adaptation step.

Plain data, no I/O: `adapter.control.monitor` fills it from Prometheus metrics (scraped directly or through a
Prometheus server), the simulator from its own counters; `adapter.control.loop` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageObservation:
    """One stage over the window."""

    name: str
    arrival_rps: float = 0.0
    """calls the router made to the stage per second"""
    p99_ms: float | None = None
    """p99 of one call to the stage as the router saw it (queue, batch and service); None without calls"""
    cpu_cores: float | None = None
    """CPU the stage's replicas used, in cores (CPU seconds per second); None when it could not be read"""
    dropped: int = 0
    deadline_misses: int = 0


@dataclass(frozen=True)
class Observation:
    """What the pipeline did over `window_s` seconds ending at `at` (the loop's clock)."""

    at: float
    window_s: float
    available: bool = True
    reason: str | None = None
    """why the observation is unavailable (or None)"""
    load_rps: float = 0.0
    """requests that arrived at the pipeline per second, mean over the window"""
    rates: tuple[float, ...] = ()
    """arrivals per second over the window, oldest first (what the load history is made of)"""
    p99_ms: float | None = None
    """end-to-end p99 at the router; None when nothing was answered"""
    requests: int = 0
    """requests that arrived at the pipeline in the window"""
    errors: int = 0
    """requests the pipeline answered with an error (any status but 200)"""
    dropped: int = 0
    """requests a replica refused (deadline cannot be met, queue full)"""
    deadline_misses: int = 0
    network_delay_ms: float = 0.0
    """the most network time a request had spent before it reached the pipeline (SLO minus the budget it
    arrived with), over the window: Sponge's cl_max, which the `sponge` policy takes off the SLO"""
    arrival_budget_ms: float | None = None
    """the 1st percentile of the budgets requests arrived with at the router (deadline minus arrival, ms); None
    when none carried a deadline. The loop takes cl_max as the SLO minus it when that is more than
    `network_delay_ms` (the live monitor fills this, the simulator `network_delay_ms`)"""
    stages: tuple[StageObservation, ...] = ()
    notes: tuple[str, ...] = ()
    """partial problems that did not make the observation unavailable (a replica not scraped)"""

    @classmethod
    def unavailable(cls, at: float, window_s: float, reason: str) -> Observation:
        return cls(at=at, window_s=window_s, available=False, reason=reason)

    def stage(self, name: str) -> StageObservation | None:
        for s in self.stages:
            if s.name == name:
                return s
        return None

    @property
    def cpu_cores(self) -> dict[str, float]:
        """Measured CPU use per stage, where it was read."""
        return {s.name: s.cpu_cores for s in self.stages if s.cpu_cores is not None}
