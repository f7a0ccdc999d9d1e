"""Service times of a batch, drawn from a distribution matched to a profile point's p50, p99 and mean.

A profile point gives three figures for one batch on one replica (`p50_ms`, `p99_ms`, `mean_ms`). The
simulator draws batch service times from a **shifted lognormal** `X = shift + m·exp(σ·Z)`, `Z ~ N(0, 1)`, whose
three parameters are solved so that its median, 99th percentile and mean are the measured ones:

    median = shift + m,   p99 = shift + m·exp(z99·σ),   mean = shift + m·exp(σ²/2)

Dividing out `m` leaves one equation in `σ`, `r = (mean − p50) / (p99 − p50) = (e^{σ²/2} − 1) / (e^{z99·σ} − 1)`;
then `m = (p99 − p50) / (e^{z99·σ} − 1)` and `shift = p50 − m`. A lognormal is right-skewed, the shape measured
service times have (a floor of fixed work plus a tail of interference and throttling).

The right side rises from 0 to a peak of about 0.070 at `σ ≈ 1` (`SIGMA_PEAK`), falls, and rises again only for
absurd `σ > 3` whose tails reach seconds. Measured points often have a larger `r` (few samples, CFS throttling
that delays some requests by a period): so `σ` is solved on the first branch only, `r` clamped to it, and the
mean the body cannot carry goes into the 0.5 % of draws beyond the p99.5, each getting a constant `tail` added (a
pause, as a throttled period or a GC is). The tail is capped at `TAIL_CAP·(p99 − p50)`: a profile point of a few
dozen samples is no evidence of second-long outliers, and one such draw would stall a simulated queue for
longer than anything measured. The median and the p99 are always the measured ones; the mean is the measured
one unless the cap binds, and then `mean` (the fitted mean, below the measured one) says what the draws average.
Draws beyond the 99.9th percentile of the body are clamped to it (`Z_MAX`): a profile of a few hundred samples
says nothing about the far tail, and a lognormal's far tail (a few seconds for a 40 ms median with a 200 ms p99)
would stall a simulated queue in a way nothing measured did.
Where the measured mean is at or below the median `r` is clamped to a small positive value (nearly a normal
body; the mean then ends slightly above the measured one). Where p99 equals p50 the time is constant. Draws are
floored at `FLOOR_SHARE` of the median, so the rare far-left draw of a fit with a negative shift never produces a
zero or negative service time.

The simulator keeps a replica's *capacity* at the measured throughput whatever this fit does: a batch occupies
the replica for its drawn latency times `period / mean` (see `adapter.sim.cluster.ServiceTable`).

Batch sizes between measured ones are interpolated linearly in each figure (latency grows close to linearly in
the batch size on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z99 = 2.3263478740408408  # standard normal 99th percentile
FLOOR_SHARE = 0.2  # no draw below this share of the median
_RATIO_MIN = 1e-3
_TAIL_SHARE = 0.005  # draws that carry the outliers: those beyond the p99.5
TAIL_CAP = 2.0  # the outliers' extra time is at most this many times the p50-p99 spread
Z_MAX = 3.090232306167813  # standard normal 99.9th percentile: the body's draws stop there
Z_TAIL = 2.5758293035489004  # standard normal 99.5th percentile


def _ratio(sigma: float) -> float:
    return math.expm1(sigma * sigma / 2) / math.expm1(Z99 * sigma)


def _peak() -> float:
    lo, hi = 0.2, 2.0  # golden-section search for the first maximum of _ratio
    g = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if _ratio(a) < _ratio(b):
            lo = a
        else:
            hi = b
    return (lo + hi) / 2


SIGMA_PEAK = _peak()
RATIO_PEAK = _ratio(SIGMA_PEAK)


def _phi(x: float) -> float:
    """Standard normal distribution function."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _body_mean(shift: float, m: float, sigma: float) -> float:
    """E[shift + m·exp(sigma·min(Z, Z_MAX))] for a standard normal Z."""
    clamped = math.exp(sigma * Z_MAX) * (1.0 - _phi(Z_MAX))
    return shift + m * (math.exp(sigma * sigma / 2) * _phi(Z_MAX - sigma) + clamped)


@dataclass(frozen=True)
class ServiceTime:
    """Seconds: `max(floor, shift + m·exp(sigma·min(z, z99.9)) + (tail if z > z99.5 else 0))`, `z` standard normal."""

    shift: float
    m: float
    sigma: float
    tail: float
    floor: float
    mean: float  # the mean of the draws (seconds): the measured mean unless the tail cap binds

    @classmethod
    def fit(cls, p50_ms: float, p99_ms: float, mean_ms: float) -> ServiceTime:
        """Solve the three parameters from the measured figures (milliseconds); see the module docstring."""
        if not (p50_ms > 0 and math.isfinite(p50_ms)):
            raise ValueError(f"p50 must be a positive number of ms, got {p50_ms}")
        p99_ms = max(p99_ms, p50_ms) if math.isfinite(p99_ms) else p50_ms
        mean_ms = mean_ms if (math.isfinite(mean_ms) and mean_ms > 0) else p50_ms
        spread = p99_ms - p50_ms
        if spread <= 1e-9 * p50_ms:
            return cls(shift=p50_ms / 1000, m=0.0, sigma=0.0, tail=0.0, floor=p50_ms / 1000, mean=p50_ms / 1000)
        target = min(max((mean_ms - p50_ms) / spread, _RATIO_MIN), RATIO_PEAK)
        lo, hi = 1e-9, SIGMA_PEAK
        for _ in range(80):  # bisection to machine precision on a monotone function
            mid = (lo + hi) / 2
            if _ratio(mid) < target:
                lo = mid
            else:
                hi = mid
        sigma = (lo + hi) / 2
        m = spread / math.expm1(Z99 * sigma)
        shift = p50_ms - m
        body = _body_mean(shift, m, sigma)
        tail = min(max(mean_ms - body, 0.0) / _TAIL_SHARE, TAIL_CAP * spread)
        return cls(
            shift=shift / 1000,
            m=m / 1000,
            sigma=sigma,
            tail=tail / 1000,
            floor=FLOOR_SHARE * p50_ms / 1000,
            mean=(body + _TAIL_SHARE * tail) / 1000,
        )

    def draw(self, z: float) -> float:
        """The service time (s) for the standard normal draw `z`."""
        x = self.shift + self.m * math.exp(self.sigma * (z if z < Z_MAX else Z_MAX))
        if z > Z_TAIL:
            x += self.tail
        return x if x > self.floor else self.floor

    def quantile(self, q: float) -> float:
        """The `q` quantile in seconds (for tests and for reporting what a fit implies)."""
        from statistics import NormalDist

        return self.draw(NormalDist().inv_cdf(q))


def interpolate(batches: Sequence[int], values: Sequence[float], n: int) -> float:
    """Value at batch size `n`, linear between measured batch sizes and extrapolated by proportion outside."""
    pairs = sorted(zip(batches, values, strict=True))
    bs = [b for b, _ in pairs]
    vs = [v for _, v in pairs]
    if n in bs:
        return vs[bs.index(n)]
    if n < bs[0]:
        # Below the smallest measured batch: scale down, but never below a per-batch share of the smallest.
        return vs[0] * max(n / bs[0], 0.5)
    if n > bs[-1]:
        if len(bs) == 1:
            return vs[0] * n / bs[0]
        slope = (vs[-1] - vs[-2]) / (bs[-1] - bs[-2])
        return vs[-1] + slope * (n - bs[-1])
    return float(np.interp(n, bs, vs))


class NormalStream:
    """Standard normal draws from one seeded generator, produced in blocks so each draw is a list lookup."""

    __slots__ = ("_rng", "_buf", "_i", "_block")

    def __init__(self, rng: np.random.Generator, block: int = 1 << 15) -> None:
        self._rng, self._block = rng, block
        self._buf: list[float] = []
        self._i = 0

    def next(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.standard_normal(self._block).tolist()
            self._i = 0
        z = self._buf[self._i]
        self._i += 1
        return z
