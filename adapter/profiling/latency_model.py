"""The latency model fitted to a variant's profile: predicts latency and throughput between measured points.

The form extends Sponge's `l(b, c) = γ·b/c + δ·b + ε/c + η` with one term for CPU-quota throttling:

    l(b, c) = γ·b/c + δ·b + ε/c + η + θ·s(c),   s(c) = (⌈c⌉ − c) / ⌈c⌉

`γ·b/c` is the per-item compute spread over the cores, `δ·b` per-item work the cores do not speed up (tensor
codecs, copies), `ε/c` per-batch compute, `η` fixed overhead (HTTP, scheduling). The extra term is what the
measurements show for a CFS quota: a replica with `c` cores runs `⌈c⌉` threads, and when they all run they use
the period's quota `c·P` before its end and sit throttled for the rest, a share `s(c)` of every period `P`
(75 % at 0.25 cores, 25 % at 1.5, none at whole cores). A short batch that runs into that wall waits out the
period, so the tail (p99) carries up to `s(c)·P` on top of `work/c` while the median barely does; Sponge's form
alone cannot bend that way. All coefficients are non-negative (each term is a cost), fitted by non-negative
least squares on *relative* residuals, so a 5 ms point counts as much as a 500 ms one.

Throughput is fitted the same way, as the batch period `1000·b / throughput` (ms per batch at saturation): the
measured throughput at saturation pipelines HTTP with compute, so it is not simply `b / latency`, and fitting
the period lets the measured points say by how much.

Fit quality: R² (on the original scale), the worst relative error in sample, and the worst relative error in
leave-one-out cross-validation (`cv_max_rel_error`), the figure to trust for points that were not measured.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

TERMS: tuple[str, ...] = ("gamma", "delta", "epsilon", "eta", "theta")
FORMULA = "l(b,c) = gamma*b/c + delta*b + epsilon/c + eta + theta*(ceil(c)-c)/ceil(c)"


def throttle_share(cores: float) -> float:
    """Share of each CFS period a group with quota `cores` sits throttled when its ⌈cores⌉ threads all run."""
    threads = max(1, math.ceil(cores - 1e-9))
    return (threads - cores) / threads


def _features(batch: float, cores: float) -> list[float]:
    return [batch / cores, batch, 1.0 / cores, 1.0, throttle_share(cores)]


@dataclass(frozen=True)
class LatencyModel:
    """`l(b, c)` in milliseconds with the non-negative coefficients of `TERMS`."""

    gamma: float
    delta: float
    epsilon: float
    eta: float
    theta: float

    def __call__(self, batch: float, cores: float) -> float:
        if batch <= 0 or cores <= 0:
            raise ValueError(f"batch and cores must be positive, got batch={batch} cores={cores}")
        coef = (self.gamma, self.delta, self.epsilon, self.eta, self.theta)
        return float(sum(k * f for k, f in zip(coef, _features(batch, cores), strict=True)))

    def describe(self) -> str:
        return " + ".join(
            f"{v:.3g}*{t}"
            for v, t in zip(
                (self.gamma, self.delta, self.epsilon, self.eta, self.theta),
                ("b/c", "b", "1/c", "1", "s(c)"),
                strict=True,
            )
            if v > 0
        ) or "0"


@dataclass(frozen=True)
class Fit:
    """A fitted model and how well it reproduces the points it was fitted on."""

    model: LatencyModel
    n: int
    r2: float
    max_rel_error: float  # worst |pred − meas| / meas over the fitted points
    points: tuple[tuple[float, float, float], ...] = field(repr=False)  # (batch, cores, value) fitted

    @cached_property
    def cv_max_rel_error(self) -> float:
        """The worst relative error predicting each point from a fit without it (leave-one-out); nan if n < 3.

        Computed on first use: it takes n more fits, which the optimizer asking for points does not need.
        """
        if self.n < 3:
            return math.nan
        b, c, v = (np.array(x) for x in zip(*self.points, strict=True))
        errs = []
        for i in range(self.n):
            m = np.arange(self.n) != i
            held = _solve(b[m], c[m], v[m])
            errs.append(abs(held(b[i], c[i]) - v[i]) / v[i])
        return float(max(errs))

    @property
    def error(self) -> float:
        """The error this fit reports for unmeasured points: the leave-one-out figure when there is one."""
        cv = self.cv_max_rel_error
        return self.max_rel_error if math.isnan(cv) else cv


def nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares `min |a·x − y|, x ≥ 0`, exactly, by trying every support.

    The optimum is the unconstrained least-squares solution on its own support, so the best feasible
    solution over all 2^k supports is the optimum; with k = 5 terms that is 32 small solves.
    """
    k = a.shape[1]
    best = np.zeros(k)
    best_res = float(np.sum(y**2))
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            cols = list(support)
            x_s, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
            if np.any(x_s < 0):
                continue
            res = float(np.sum((a[:, cols] @ x_s - y) ** 2))
            if res < best_res - 1e-12 * max(1.0, best_res):
                best_res = res
                best = np.zeros(k)
                best[cols] = x_s
    return best


def _solve(batch: np.ndarray, cores: np.ndarray, value: np.ndarray) -> LatencyModel:
    a = np.array([_features(b, c) for b, c in zip(batch, cores, strict=True)])
    # Relative residuals: divide each row by its measured value.
    w = 1.0 / value
    x = nnls(a * w[:, None], value * w)
    return LatencyModel(*(float(v) for v in x))


def fit_latency(batch: Sequence[float], cores: Sequence[float], value: Sequence[float]) -> Fit:
    """Fit `l(b, c)` to measured values (ms); needs at least one point with a positive value."""
    b = np.asarray(batch, dtype=float)
    c = np.asarray(cores, dtype=float)
    v = np.asarray(value, dtype=float)
    keep = np.isfinite(v) & (v > 0)
    b, c, v = b[keep], c[keep], v[keep]
    if len(v) == 0:
        raise ValueError("no positive measurements to fit")
    model = _solve(b, c, v)
    pred = np.array([model(bi, ci) for bi, ci in zip(b, c, strict=True)])
    ss_tot = float(np.sum((v - v.mean()) ** 2))
    ss_res = float(np.sum((v - pred) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    max_rel = float(np.max(np.abs(pred - v) / v))
    points = tuple((float(x), float(y), float(z)) for x, y, z in zip(b, c, v, strict=True))
    return Fit(model=model, n=len(v), r2=r2, max_rel_error=max_rel, points=points)


@dataclass(frozen=True)
class VariantFit:
    """The four fits of one variant: latency p50, p99, mean, and the batch period behind throughput."""

    p50: Fit
    p99: Fit
    mean: Fit
    period: Fit  # ms per batch at saturation: 1000·b / throughput

    def throughput(self, batch: float, cores: float) -> float:
        return 1000.0 * batch / self.period.model(batch, cores)


def fit_variant(
    batch: Sequence[float],
    cores: Sequence[float],
    p50: Sequence[float],
    p99: Sequence[float],
    mean: Sequence[float],
    throughput: Sequence[float],
) -> VariantFit:
    """Fit every figure of one variant's measured points (throughput in requests per second)."""
    period = [1000.0 * b / t if t > 0 else math.nan for b, t in zip(batch, throughput, strict=True)]
    return VariantFit(
        p50=fit_latency(batch, cores, p50),
        p99=fit_latency(batch, cores, p99),
        mean=fit_latency(batch, cores, mean),
        period=fit_latency(batch, cores, period),
    )
