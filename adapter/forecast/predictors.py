"""Load prediction: from the per-second load seen so far, the peak load of the next interval.

The adapter provisions for the *peak* of the coming interval (requests above capacity queue and miss their
deadlines), so every predictor answers one question: given `history` (requests per second, oldest first, the
last element the second that just ended), what is the highest per-second load in the next `horizon_s` seconds?

    reactive   the max of the last `horizon_s` seconds (what the load just was)
    ewma       Holt's exponentially weighted level + trend on the per-interval peaks
    lstm       IPA's LSTM: 12 bins of the max over 10 s (the last 120 s) → the max over the next interval;
               inference in plain numpy from a weights file (`adapter/forecast/lstm.npz` ships with the
               project, trained by `ipa predictor train`, see `adapter.forecast.lstm_training`)
    oracle     knows the whole trace and answers the true future peak: the upper bound in experiments

Predictors are pure functions of their inputs: no hidden state between calls and no wall clock, so the live
adapter and the simulator get the same answer for the same history. `make_predictor(name, …)` builds one by
name; `evaluate_predictor` scores one on a trace (MAE, share of intervals under-predicted, over-provisioning).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from adapter.errors import UsageError

DEFAULT_LSTM_WEIGHTS = Path(__file__).parent / "lstm.npz"
PREDICTOR_NAMES: tuple[str, ...] = ("reactive", "ewma", "lstm", "oracle")


class LoadPredictor(ABC):
    """Predicts the peak per-second load of the next `horizon_s` seconds from the load history."""

    name: ClassVar[str]

    @abstractmethod
    def predict(self, history: np.ndarray | Sequence[float], horizon_s: int, now_s: int | None = None) -> float:
        """Predicted max requests per second over the next `horizon_s` seconds (>= 0).

        `history`: requests per second up to now, oldest first. `now_s`: the trace second about to begin
        (only the oracle uses it; it defaults to `len(history)`, i.e. a history that starts at second 0).
        """

    def predict_many(
        self, history: np.ndarray, horizon_s: int, origins: Sequence[int], now_s: Sequence[int]
    ) -> np.ndarray:
        """What `predict` answers for each prefix `history[:origins[i]]` (at trace second `now_s[i]`), at once.

        Used to recompute past forecasts (`adapter.conformal`); predictors that can batch the work override it.
        """
        return np.array([self.predict(history[:t], horizon_s, now_s=n) for t, n in zip(origins, now_s, strict=True)])


def _as_history(history: np.ndarray | Sequence[float]) -> np.ndarray:
    return np.asarray(history, dtype=np.float64)


def _check_horizon(horizon_s: int) -> None:
    if horizon_s < 1:
        raise UsageError(f"prediction horizon must be >= 1 second, got {horizon_s}")


class ReactivePredictor(LoadPredictor):
    """The next interval's peak is the peak of the last `horizon_s` seconds."""

    name = "reactive"

    def predict(self, history: np.ndarray | Sequence[float], horizon_s: int, now_s: int | None = None) -> float:
        _check_horizon(horizon_s)
        h = _as_history(history)
        return float(h[-horizon_s:].max()) if h.size else 0.0


@dataclass(frozen=True)
class EWMAPredictor(LoadPredictor):
    """Holt's linear trend on the per-interval peaks: level and trend updated with weights `alpha` and `beta`.

    The history is cut into intervals of `horizon_s` seconds (aligned to its end); each interval's max is one
    observation; the forecast is `level + trend` for the next interval. Only the last `lookback` intervals are
    used: older ones weigh less than (1 − alpha)^lookback. The defaults were tuned on days 7–14 of the Twitter
    trace at 20 s intervals: its interval peaks are noisy, so a strong trend term costs more than it gains.
    """

    name: ClassVar[str] = "ewma"
    alpha: float = 0.6
    beta: float = 0.02
    lookback: int = 24

    def predict(self, history: np.ndarray | Sequence[float], horizon_s: int, now_s: int | None = None) -> float:
        _check_horizon(horizon_s)
        h = _as_history(history)
        n = min(h.size // horizon_s, self.lookback)
        if n == 0:
            return float(h.max()) if h.size else 0.0
        peaks = h[h.size - n * horizon_s :].reshape(n, horizon_s).max(axis=1)
        level, trend = float(peaks[0]), 0.0
        for peak in peaks[1:].tolist():
            previous = level
            level = self.alpha * peak + (1 - self.alpha) * (level + trend)
            trend = self.beta * (level - previous) + (1 - self.beta) * trend
        return max(0.0, level + trend)


@dataclass(frozen=True)
class OraclePredictor(LoadPredictor):
    """Knows the real load: answers the true peak of `trace[now_s : now_s + horizon_s]` (0 past the end)."""

    name: ClassVar[str] = "oracle"
    trace: np.ndarray

    def predict(self, history: np.ndarray | Sequence[float], horizon_s: int, now_s: int | None = None) -> float:
        _check_horizon(horizon_s)
        start = len(history) if now_s is None else now_s
        future = self.trace[start : start + horizon_s]
        return float(future.max()) if future.size else 0.0


# ------------------------------------------------------------------------------------------------------ LSTM


@dataclass(frozen=True)
class LSTMWeights:
    """A one-layer LSTM with a linear head per horizon. Gate order in `w`/`b`: input, forget, cell, output.

    Inputs are the `n_bins` maxima over `bin_s` seconds divided by their largest value, so one model serves
    loads of any scale (the Twitter trace, the same divided by 8, a synthetic trace); the outputs are the future
    peak over each of `horizons_s` in the same unit.
    """

    w: np.ndarray  # (1 + hidden, 4 * hidden): the input row, then the recurrent rows
    b: np.ndarray  # (4 * hidden,)
    w_out: np.ndarray  # (hidden, len(horizons_s))
    b_out: np.ndarray  # (len(horizons_s),)
    horizons_s: tuple[int, ...] = (10, 20, 30, 60)
    bin_s: int = 10
    n_bins: int = 12
    trained_on: str = ""

    @property
    def hidden(self) -> int:
        return int(self.w_out.shape[0])

    @cached_property
    def scaled_gates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input row, recurrent rows, bias) with the sigmoid gates' columns halved, for `lstm_forward`."""
        scale = np.full(4 * self.hidden, 0.5)
        scale[2 * self.hidden : 3 * self.hidden] = 1.0  # the cell candidate is a plain tanh
        return self.w[0] * scale, self.w[1:] * scale, self.b * scale

    @property
    def window_s(self) -> int:
        return self.bin_s * self.n_bins

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            w=self.w, b=self.b, w_out=self.w_out, b_out=self.b_out,
            horizons_s=np.asarray(self.horizons_s, dtype=np.int64),
            bin_s=np.int64(self.bin_s), n_bins=np.int64(self.n_bins), trained_on=np.str_(self.trained_on),
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> LSTMWeights:
        try:
            with np.load(path, allow_pickle=False) as f:
                weights = cls(
                    w=f["w"], b=f["b"], w_out=f["w_out"], b_out=f["b_out"],
                    horizons_s=tuple(int(x) for x in f["horizons_s"]),
                    bin_s=int(f["bin_s"]), n_bins=int(f["n_bins"]), trained_on=str(f["trained_on"]),
                )  # fmt: skip
        except (OSError, KeyError, ValueError) as e:
            raise UsageError(f"{path}: not an LSTM weights file: {e}") from e
        hidden = weights.w_out.shape[0]
        if weights.w.shape != (1 + hidden, 4 * hidden) or weights.b.shape != (4 * hidden,):
            raise UsageError(f"{path}: LSTM weights have inconsistent shapes")
        return weights


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic


def lstm_forward(weights: LSTMWeights, x: np.ndarray) -> np.ndarray:
    """The network's outputs (batch, horizons) for normalised inputs `x` (batch, n_bins)."""
    hidden = weights.hidden
    w_in, w_rec, b = weights.scaled_gates
    # every gate from one tanh: sigmoid(z) = (tanh(z/2) + 1)/2, the halving folded into the weights
    pre = x[:, :, None] * w_in + b  # the inputs' share of every step at once
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros_like(h)
    for t in range(x.shape[1]):
        a = np.tanh(pre[:, t] + h @ w_rec)
        s = 0.5 * a + 0.5
        c = s[:, hidden : 2 * hidden] * c + s[:, :hidden] * a[:, 2 * hidden : 3 * hidden]
        h = s[:, 3 * hidden :] * np.tanh(c)
    return np.asarray(h @ weights.w_out + weights.b_out)


def lstm_inputs(history: np.ndarray, bin_s: int, n_bins: int) -> np.ndarray:
    """The last `n_bins * bin_s` seconds as `n_bins` per-bin maxima (oldest first); a short history is padded
    with its first value (the load before the adapter started is taken to be the load it first saw)."""
    window = bin_s * n_bins
    if history.size < window:
        history = np.concatenate([np.full(window - history.size, history[0]), history])
    return history[-window:].reshape(n_bins, bin_s).max(axis=1)


@dataclass(frozen=True)
class LSTMPredictor(LoadPredictor):
    """IPA's LSTM predictor, run in numpy. Horizons between the trained ones are interpolated linearly; shorter
    than the shortest use the shortest (over-provisions a little), longer than the longest use the longest."""

    name: ClassVar[str] = "lstm"
    weights: LSTMWeights

    def predict(self, history: np.ndarray | Sequence[float], horizon_s: int, now_s: int | None = None) -> float:
        _check_horizon(horizon_s)
        h = _as_history(history)
        if h.size == 0:
            return 0.0
        bins = lstm_inputs(h, self.weights.bin_s, self.weights.n_bins)
        scale = float(bins.max())
        if scale <= 0:
            return 0.0  # nothing seen for two minutes: nothing to scale a prediction by
        out = lstm_forward(self.weights, (bins / scale)[None, :])[0]
        ratio = float(np.interp(horizon_s, self.weights.horizons_s, out))
        return max(0.0, ratio * scale)

    def predict_many(
        self, history: np.ndarray, horizon_s: int, origins: Sequence[int], now_s: Sequence[int]
    ) -> np.ndarray:
        _check_horizon(horizon_s)
        w = self.weights
        bins = np.array([lstm_inputs(history[:t], w.bin_s, w.n_bins) for t in origins])
        scale = bins.max(axis=1)
        safe = np.where(scale > 0, scale, 1.0)
        out = lstm_forward(w, bins / safe[:, None])
        ratios = np.array([np.interp(horizon_s, w.horizons_s, row) for row in out])
        return np.where(scale > 0, np.maximum(0.0, ratios * scale), 0.0)


# -------------------------------------------------------------------------------------------------- registry


def make_predictor(
    name: str, *, trace: np.ndarray | None = None, weights: str | Path | LSTMWeights | None = None
) -> LoadPredictor:
    """The predictor called `name` (one of `PREDICTOR_NAMES`).

    `trace`: the full per-second load, needed by `oracle`. `weights`: the LSTM's weights (a file or loaded
    weights; default the shipped `adapter/forecast/lstm.npz`).
    """
    if name == "reactive":
        return ReactivePredictor()
    if name == "ewma":
        return EWMAPredictor()
    if name == "lstm":
        if not isinstance(weights, LSTMWeights):
            weights = LSTMWeights.load(weights or DEFAULT_LSTM_WEIGHTS)
        return LSTMPredictor(weights)
    if name == "oracle":
        if trace is None:
            raise UsageError("the oracle predictor needs the whole trace it will be asked about")
        return OraclePredictor(np.asarray(trace, dtype=np.float64))
    raise UsageError(f"unknown predictor {name!r}; known: {', '.join(PREDICTOR_NAMES)}")


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class PredictorScore:
    """How well a predictor foresaw the per-interval peaks of a trace."""

    predictor: str
    intervals: int
    mae_rps: float
    """mean |predicted − actual peak|, requests per second"""
    under_share: float
    """share of intervals whose peak was under-predicted (0..1): capacity short, requests late"""
    mean_shortfall: float
    """mean (actual − predicted) / actual over the under-predicted intervals (0..1)"""
    over_provisioning: float
    """mean max(0, predicted − actual) / actual over all intervals with load (0..1): capacity paid for, unused"""


def interval_predictions(
    predictor: LoadPredictor, rates: np.ndarray, interval_s: int, warmup_s: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, actual) peak of each whole interval of `rates` after `warmup_s`, as the adapter would ask."""
    _check_horizon(interval_s)
    starts = range(warmup_s, rates.size - interval_s + 1, interval_s)
    predicted = np.array([predictor.predict(rates[:t], interval_s, now_s=t) for t in starts])
    actual = np.array([rates[t : t + interval_s].max() for t in starts])
    return predicted, actual


def score_predictions(name: str, predicted: np.ndarray, actual: np.ndarray) -> PredictorScore:
    under = predicted < actual - 1e-9
    loaded = actual > 0
    safe = np.where(loaded, actual, 1.0)
    shortfall = ((actual - predicted) / safe)[under & loaded]
    over = (np.clip(predicted - actual, 0, None) / safe)[loaded]
    return PredictorScore(
        predictor=name,
        intervals=int(actual.size),
        mae_rps=float(np.abs(predicted - actual).mean()) if actual.size else 0.0,
        under_share=float(under.mean()) if actual.size else 0.0,
        mean_shortfall=float(shortfall.mean()) if shortfall.size else 0.0,
        over_provisioning=float(over.mean()) if over.size else 0.0,
    )


def evaluate_predictor(
    predictor: LoadPredictor, rates: np.ndarray, interval_s: int, warmup_s: int = 120
) -> PredictorScore:
    """Score `predictor` on every whole interval of `rates` after the first `warmup_s` seconds."""
    predicted, actual = interval_predictions(predictor, np.asarray(rates, dtype=np.float64), interval_s, warmup_s)
    if actual.size == 0:
        raise UsageError(f"the trace is too short to evaluate: need more than {warmup_s + interval_s} seconds")
    return score_predictions(predictor.name, predicted, actual)
