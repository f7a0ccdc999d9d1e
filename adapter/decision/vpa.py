"""The Kubernetes Vertical Pod Autoscaler's CPU recommender and updater rule, as the `vpa` baseline runs them.

What the VPA recommender does (kubernetes/autoscaler, vertical-pod-autoscaler/pkg/recommender; defaults in
brackets), and what this module does the same way:

- every CPU usage sample of a container goes into a **decaying histogram**: exponential buckets (the first
  0.01 core wide, each next one 5 % wider), each sample weighted by the container's CPU request (at least 0.1
  core: "load-adjusted") times `2^((t − t0) / half_life)` [24 h], so recent samples count more;
- **target** = the 90th percentile of the histogram × (1 + safety margin) [15 %]; **lower bound** = the 50th
  percentile and **upper bound** = the 95th, each with the same margin, widened while the history is short by
  the confidence multipliers `(1 + 0.001/c)^−2` and `(1 + 1/c)^1`, with `c` = min(history length in days, samples
  / 1440) (one sample a minute); never below the pod minimum [25 millicores]; then clamped to the container
  policy's min/max allowed (here the stage's smallest and largest core choices);
- the **updater** acts only on a replica whose CPU request lies outside [lower bound, upper bound], and then sets
  it to the target (in place, as VPA's `InPlaceOrRecreate` mode does on Kubernetes ≥ 1.33).

One rule has no CPU counterpart in VPA and is ours, by analogy with its OOM bump-up: CPU use cannot exceed the
limit, so a throttled container's samples sit at its limit and the histogram never sees the demand. A sample
at ≥ 95 % of the cores held is recorded as the cores held × 1.2 (VPA records an OOM as max(memory + 100 MB,
memory × 1.2)), so a saturated replica's recommendation rises instead of staying at its limit.

Time is compressed as the experiments compress it: one sample per adapter interval (VPA's metrics come once a
minute). All state is explicit: `CPUHistogram` is a frozen value the policy keeps in its `PolicyState`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

FIRST_BUCKET_CORES = 0.01
BUCKET_RATIO = 1.05
MAX_CORES = 1000.0
MIN_SAMPLE_WEIGHT = 0.1
POD_MIN_CORES = 0.025
LOWER_PERCENTILE, UPPER_PERCENTILE = 0.5, 0.95
AT_LIMIT, BUMP_RATIO = 0.95, 1.2
_N_BUCKETS = 1 + math.ceil(math.log(MAX_CORES * (BUCKET_RATIO - 1) / FIRST_BUCKET_CORES + 1) / math.log(BUCKET_RATIO))


def bucket_start(i: int) -> float:
    """The lower edge of bucket `i` (cores): 0.01 · (1.05^i − 1) / 0.05."""
    return FIRST_BUCKET_CORES * (BUCKET_RATIO**i - 1) / (BUCKET_RATIO - 1)


def bucket_of(cores: float) -> int:
    if cores < FIRST_BUCKET_CORES:
        return 0
    i = int(math.floor(math.log(cores * (BUCKET_RATIO - 1) / FIRST_BUCKET_CORES + 1) / math.log(BUCKET_RATIO)))
    return min(i, _N_BUCKETS - 1)


@dataclass(frozen=True)
class CPUHistogram:
    """VPA's decaying histogram of one container's CPU use, and what it needs for its confidence."""

    weights: tuple[float, ...] = (0.0,) * _N_BUCKETS
    reference_s: float | None = None
    """the time decay weights are relative to (the first sample's)"""
    first_s: float | None = None
    last_s: float | None = None
    samples: int = 0

    def add(self, cores: float, request: float, at: float, half_life_s: float) -> CPUHistogram:
        """With one more sample of `cores` used at time `at` by a container that requested `request` cores."""
        reference = at if self.reference_s is None else self.reference_s
        weights = np.asarray(self.weights)
        if (at - reference) / half_life_s > 64:  # keep the multipliers finite: shift the reference
            weights = weights * 2.0 ** (-(at - reference) / half_life_s)
            reference = at
        weights = weights.copy()
        weights[bucket_of(max(0.0, cores))] += max(request, MIN_SAMPLE_WEIGHT) * 2.0 ** ((at - reference) / half_life_s)
        return replace(
            self, weights=tuple(weights.tolist()), reference_s=reference,
            first_s=at if self.first_s is None else self.first_s, last_s=at, samples=self.samples + 1,
        )  # fmt: skip

    def percentile(self, q: float) -> float:
        """VPA's histogram percentile: the upper edge of the bucket where the cumulative weight reaches q."""
        w = np.asarray(self.weights)
        total = float(w.sum())
        if total <= 0:
            return 0.0
        bucket = int(np.searchsorted(np.cumsum(w), q * total - 1e-12 * total))
        bucket = min(bucket, _N_BUCKETS - 1)
        return bucket_start(bucket + 1) if bucket < _N_BUCKETS - 1 else bucket_start(bucket)

    @property
    def confidence_days(self) -> float:
        """min(history length in days, samples / 1440): how much history the recommendation rests on."""
        if self.first_s is None or self.last_s is None:
            return 0.0
        return min((self.last_s - self.first_s) / 86400.0, self.samples / 1440.0)


@dataclass(frozen=True)
class Recommendation:
    """VPA's three figures for one container, cores."""

    lower: float
    target: float
    upper: float

    def update(self, request: float) -> float:
        """The updater's rule: the request stays while it lies within [lower, upper], else becomes the target."""
        return request if self.lower - 1e-9 <= request <= self.upper + 1e-9 else self.target


def record_usage(hist: CPUHistogram, used: float, request: float, at: float, half_life_s: float) -> CPUHistogram:
    """One usage sample, bumped by 20 % over the limit when the container sat at its limit (module doc)."""
    sample = request * BUMP_RATIO if request > 0 and used >= AT_LIMIT * request else used
    return hist.add(sample, request, at, half_life_s)


def recommend(
    hist: CPUHistogram, *, percentile: float, margin: float, min_cores: float, max_cores: float
) -> Recommendation:
    """Target, lower and upper bound from the histogram (module doc), clamped to [min_cores, max_cores]."""
    c = hist.confidence_days
    lower_mult = (1 + 0.001 / c) ** -2 if c > 0 else 0.0
    upper_mult = 1 + 1 / c if c > 0 else math.inf

    def clamp(x: float) -> float:
        return min(max(x, POD_MIN_CORES, min_cores), max_cores)

    scale = 1 + margin
    return Recommendation(
        lower=clamp(hist.percentile(LOWER_PERCENTILE) * scale * lower_mult),
        target=clamp(hist.percentile(percentile) * scale),
        upper=clamp(hist.percentile(UPPER_PERCENTILE) * scale * upper_mult),
    )
