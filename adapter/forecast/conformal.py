"""Planning for the load with its uncertainty: a forecast plus a quantile of the forecaster's own recent errors.

A point forecast of the next interval's peak is under the real peak about half the time (every predictor in
`adapter.forecast.predictors` aims at the expected peak), and an interval whose peak is under-provisioned queues and misses
its deadlines. `ConformalPredictor` wraps any predictor and answers the load to **plan** for instead:

    planned = forecast · (1 + m),   m = max(0, the q-th empirical quantile of the relative under-predictions
                                           e_j = (peak_j − forecast_j) / forecast_j of the last `window` intervals)

The past forecasts are recomputed from the history itself (what the base predictor would have said at each of
the last `window` interval boundaries, against the peak that followed), so the wrapper is a pure function of
the history like every predictor: no state is carried between calls and the simulator and the live adapter
agree. This is split conformal prediction on a sliding calibration window: were the errors exchangeable, the
planned load would cover the next peak with probability ≥ q; with the finite-sample correction the quantile
taken is the ⌈(n+1)·q⌉-th smallest of the n errors (the largest when that index passes n).

The errors are relative, not in requests per second, because the load's level changes by a factor of ten within
a window (a burst): errors measured at 5 rps say little about 50 rps in absolute terms, and as ratios they
carry over (as the LSTM's own inputs are normalised by their peak). A forecast of 0 uses an error of 0.

The quantile is in the inference graph (`load_quantile`, `load_quantile_window`); `headroom` still applies on
top of the planned load, as a plain margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from adapter.errors import UsageError
from adapter.forecast.predictors import LoadPredictor, OraclePredictor


@dataclass(frozen=True)
class LoadPlan:
    """What a conformal predictor plans for, and why."""

    forecast_rps: float
    """the base predictor's peak for the next interval"""
    margin: float
    """the relative margin added (0.2 = 20 %): the quantile of the recent relative under-predictions, >= 0"""
    errors: int
    """how many past intervals the quantile was taken over"""

    @property
    def planned_rps(self) -> float:
        return self.forecast_rps * (1.0 + self.margin)


def conformal_quantile(errors: np.ndarray, quantile: float) -> float:
    """The ⌈(n+1)·q⌉-th smallest of the n `errors` (the largest when that passes n); 0 without errors."""
    n = int(errors.size)
    if n == 0:
        return 0.0
    k = min(n, max(1, math.ceil((n + 1) * quantile)))
    return float(np.partition(errors, k - 1)[k - 1])


@dataclass(frozen=True)
class ConformalPredictor(LoadPredictor):
    """`base`'s forecast raised by the `quantile` of its own relative under-predictions over `window` intervals."""

    name: ClassVar[str] = "conformal"
    base: LoadPredictor
    quantile: float
    window: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise UsageError(f"load quantile must be between 0 and 1 (exclusive), got {self.quantile}")
        if self.window < 1:
            raise UsageError(f"load quantile window must be >= 1 interval, got {self.window}")

    def plan(self, history: np.ndarray | Sequence[float], horizon_s: int, now_s: int | None = None) -> LoadPlan:
        """The forecast, the margin and the number of past intervals it was calibrated on."""
        h = np.asarray(history, dtype=np.float64)
        forecast = self.base.predict(h, horizon_s, now_s=now_s)
        if isinstance(self.base, OraclePredictor):
            return LoadPlan(forecast, 0.0, 0)  # the oracle's errors are all 0: nothing to calibrate
        end = h.size if now_s is None else now_s
        start = end - h.size  # the trace second of h[0]
        # interval boundaries (indices into h) with a whole interval of real load after them and history before
        origins = [h.size - j * horizon_s for j in range(1, self.window + 1) if h.size - j * horizon_s >= 1]
        if not origins:
            return LoadPlan(forecast, 0.0, 0)
        past = self.base.predict_many(h, horizon_s, origins, [start + t for t in origins])
        peaks = np.array([h[t : t + horizon_s].max() for t in origins])
        relative = np.where(past > 0, (peaks - past) / np.where(past > 0, past, 1.0), 0.0)
        return LoadPlan(forecast, max(0.0, conformal_quantile(relative, self.quantile)), len(origins))

    def predict(self, history: np.ndarray | Sequence[float], horizon_s: int, now_s: int | None = None) -> float:
        return self.plan(history, horizon_s, now_s).planned_rps


def planning_predictor(base: LoadPredictor, quantile: float | None, window: int) -> LoadPredictor:
    """`base` itself when no quantile is asked for, else `base` wrapped in a `ConformalPredictor`."""
    if quantile is None or isinstance(base, OraclePredictor | ConformalPredictor):
        return base
    return ConformalPredictor(base, quantile, window)
