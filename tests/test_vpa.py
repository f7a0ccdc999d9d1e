"""The VPA recommender as the `vpa` baseline runs it: bucket edges, the histogram percentile, the p90 + 15 %
target, decay, the bump at the limit, the confidence-widened bounds and the updater's rule."""

from __future__ import annotations

import pytest

from adapter.decision.vpa import (
    CPUHistogram,
    bucket_of,
    bucket_start,
    recommend,
    record_usage,
)

DAY = 86400.0


def filled(samples: list[float], every_s: float = 60.0, request: float = 1.0, half_life_s: float = DAY) -> CPUHistogram:
    h = CPUHistogram()
    for i, x in enumerate(samples):
        h = h.add(x, request, i * every_s, half_life_s)
    return h


def test_buckets_grow_by_five_percent_from_ten_millicores() -> None:
    assert bucket_start(0) == 0 and bucket_start(1) == pytest.approx(0.01)
    assert bucket_start(2) - bucket_start(1) == pytest.approx(0.0105)
    for x in (0.003, 0.25, 0.5, 1.0, 3.7, 20.0):
        i = bucket_of(x)
        assert bucket_start(i) <= x < bucket_start(i + 1)


def test_target_is_the_90th_percentile_plus_15_percent() -> None:
    """Ten equal-weight samples 0.1 … 1.0: the 90th percentile is the bucket holding 0.9; its upper edge is
    within 5 % above 0.9, and the target is that × 1.15 (bounds from a day of history)."""
    h = filled([0.1 * k for k in range(1, 11)], every_s=0.0)  # at one instant: equal weights
    p90 = h.percentile(0.9)
    assert 0.9 <= p90 <= 0.9 * 1.05 + 0.01
    rec = recommend(h, percentile=0.9, margin=0.15, min_cores=0.0, max_cores=100.0)
    assert rec.target == pytest.approx(p90 * 1.15)
    assert rec.lower < rec.target < rec.upper


def test_recent_samples_weigh_more() -> None:
    """Nine high samples ten half-lives ago, one low sample now: the low one outweighs them (2^10 > 9)."""
    old = filled([2.0] * 9, every_s=1.0, half_life_s=60.0)
    h = old.add(0.3, 1.0, 600.0 + 8, 60.0)
    assert h.percentile(0.5) < 0.35
    assert filled([2.0] * 9 + [0.3]).percentile(0.5) > 1.9  # without decay (24 h half-life) the many win


def test_a_throttled_container_is_recorded_above_its_limit() -> None:
    h = record_usage(CPUHistogram(), used=0.98, request=1.0, at=0.0, half_life_s=DAY)
    assert bucket_start(int(max(range(len(h.weights)), key=lambda i: h.weights[i]))) == pytest.approx(1.2, rel=0.05)
    h = record_usage(CPUHistogram(), used=0.5, request=1.0, at=0.0, half_life_s=DAY)
    assert h.percentile(1.0) == pytest.approx(0.5, rel=0.06)


def test_the_updater_acts_only_outside_the_bounds_and_bounds_tighten_with_history() -> None:
    samples = [0.4, 0.5, 0.6] * 20  # an hour of one-minute samples
    short = recommend(filled(samples[:3]), percentile=0.9, margin=0.15, min_cores=0.1, max_cores=4.0)
    long = recommend(filled(samples * 48, every_s=20.0), percentile=0.9, margin=0.15, min_cores=0.1,
                     max_cores=4.0)
    assert short.upper == 4.0  # three minutes of history: the upper bound is the container's max
    assert long.upper < short.upper and long.lower >= short.lower
    assert short.update(2.0) == 2.0  # within [lower, upper]: left alone
    # the lower bound: the median (0.5) + 15 %, shrunk by (1 + 0.001/c)^-2 for c = 2 min of history in days
    assert short.lower == pytest.approx(0.525 * 1.15 * (1 + 0.001 / (120 / 86400)) ** -2, rel=0.05)
    assert short.update(0.1) == short.target  # below the lower bound: set to the target
    assert long.update(4.0) == long.target  # above a day's upper bound: brought down
    assert recommend(CPUHistogram(), percentile=0.9, margin=0.15, min_cores=0.5, max_cores=2).target == 0.5
