"""Per-request latency budgets: a fixed SLO, or Sponge's dynamic SLO from a measured bandwidth log.

Sponge (EuroMLSys 2024) gives each request the user's SLO minus the time the request already spent on the
network: a request of `S` bytes sent while the link carries `B` bytes per millisecond arrives `S / B` ms late, so
the server has `deadline = SLO − S / B` ms left. The bandwidth comes from a log with one row per second (the
Ghent 4G/LTE logs): `unix_ms elapsed_ms latitude longitude bytes_received interval_ms`; the link's bandwidth in
that second is `bytes_received / interval_ms`.

    read_bandwidth_log(path) -> BandwidthLog
    FixedSLO(slo_ms)                                   every request gets the whole SLO
    DynamicSLO(log, slo_ms, request_bytes)             deadline_ms(t), deadlines_ms(times), network_ms(t), cl_max_ms(…)

Both budget sources answer the same questions (`SLOSource`), so the load generator and the simulator take either.
Times are seconds from the start of the workload; a log shorter than the workload is replayed from its start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from adapter.errors import UsageError


@dataclass(frozen=True)
class BandwidthLog:
    """Measured link bandwidth, one value per second, in bytes per millisecond (0 where nothing was received)."""

    bytes_per_ms: np.ndarray
    source: str = "bandwidth"

    def __len__(self) -> int:
        return int(self.bytes_per_ms.shape[0])


def read_bandwidth_log(path: str | Path) -> BandwidthLog:
    """Read a bandwidth log (6 numeric columns per row; column 5 bytes received, column 6 interval in ms)."""
    source = Path(path)
    try:
        lines = source.read_text().splitlines()
    except OSError as e:
        raise UsageError(f"{source}: cannot read the bandwidth log: {e.strerror or e}") from e
    values: list[float] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 6:
            raise UsageError(f"{source}: line {number}: expected 6 columns (… bytes_received interval_ms), got {len(fields)}")
        try:
            received, interval = float(fields[4]), float(fields[5])
        except ValueError:
            raise UsageError(f"{source}: line {number}: bytes received and interval must be numbers") from None
        if not (math.isfinite(received) and math.isfinite(interval)) or received < 0 or interval <= 0:
            raise UsageError(f"{source}: line {number}: need bytes received >= 0 and interval_ms > 0")
        values.append(received / interval)
    if not values:
        raise UsageError(f"{source}: empty bandwidth log")
    return BandwidthLog(np.asarray(values, dtype=np.float64), source.name)


class SLOSource(Protocol):
    """Where a request's latency budget comes from; `t` is seconds from the start of the workload."""

    @property
    def slo_ms(self) -> float:
        """The user's end-to-end SLO (ms)."""
        ...

    def deadline_ms(self, t: float) -> float:
        """The budget (ms) the server has for a request sent at `t`."""
        ...

    def deadlines_ms(self, times: np.ndarray) -> np.ndarray:
        """`deadline_ms` for many send times at once."""
        ...

    def cl_max_ms(self, start_s: float, window_s: float) -> float:
        """The largest network time (ms) of a request sent in `[start_s, start_s + window_s)`: Sponge's `cl_max`,
        what the optimizer must reserve from the SLO to keep every request of the next interval in budget."""
        ...


@dataclass(frozen=True)
class FixedSLO:
    """Every request has the whole SLO: no network time."""

    slo_ms: float

    def __post_init__(self) -> None:
        if not (self.slo_ms > 0 and math.isfinite(self.slo_ms)):
            raise UsageError(f"SLO must be a positive number of milliseconds, got {self.slo_ms}")

    def deadline_ms(self, t: float) -> float:
        return self.slo_ms

    def deadlines_ms(self, times: np.ndarray) -> np.ndarray:
        return np.full(np.shape(times), self.slo_ms, dtype=np.float64)

    def cl_max_ms(self, start_s: float, window_s: float) -> float:
        return 0.0


@dataclass(frozen=True)
class DynamicSLO:
    """Sponge's dynamic SLO: `deadline = slo_ms − request_bytes / bandwidth(t)`, never below 0.

    A second in which the link carried nothing has an infinite network time: its requests arrive with no budget
    left (deadline 0, counted as missed however fast the server is).
    """

    log: BandwidthLog
    slo_ms: float
    request_bytes: int

    def __post_init__(self) -> None:
        FixedSLO(self.slo_ms)  # same validation of the SLO
        if self.request_bytes <= 0:
            raise UsageError(f"request size must be > 0 bytes, got {self.request_bytes}")

    def _seconds(self, times: np.ndarray) -> np.ndarray:
        # replay the log from its start when the workload outlasts it
        return np.floor(np.asarray(times, dtype=np.float64)).astype(np.int64) % len(self.log)

    def network_ms_at(self, times: np.ndarray) -> np.ndarray:
        """Network time (ms) of a request sent at each of `times`."""
        bandwidth = self.log.bytes_per_ms[self._seconds(times)]
        with np.errstate(divide="ignore"):
            return np.where(bandwidth > 0, self.request_bytes / np.where(bandwidth > 0, bandwidth, 1.0), np.inf)

    def network_ms(self, t: float) -> float:
        return float(self.network_ms_at(np.array([t]))[0])

    def deadlines_ms(self, times: np.ndarray) -> np.ndarray:
        return np.clip(self.slo_ms - self.network_ms_at(times), 0.0, None)

    def deadline_ms(self, t: float) -> float:
        return float(self.deadlines_ms(np.array([t]))[0])

    def cl_max_ms(self, start_s: float, window_s: float) -> float:
        first = math.floor(start_s)
        last = max(first, math.ceil(start_s + window_s) - 1)
        return float(self.network_ms_at(np.arange(first, last + 1, dtype=np.float64)).max())
