"""The queueing-aware latency of a stage: the p99 of the time a request spends there at the planned load.

A stage group runs `n` replicas of one (variant, batch b, cores) configuration and receives `λ` requests/s,
routed to the replica with the fewest outstanding requests. A request spends there (Sponge's l(b,c) + q(b,c))

    fill   waiting for its batch to fill at an idle replica: at most `max_batch_time`, and about the time the
           b − 1 next requests take to reach the replica, w = min(m, (b − 1)·n/λ);
    queue  waiting for a replica to be free when all n are busy with earlier batches;
    service  the batch itself: the profile's p99 batch latency `l₉₉`.

The p99 of the stage is taken as `l₉₉ + w + q₉₉` — the sum of the parts' p99s, which is at least the p99 of their
sum for the comonotone worst case and above it for the nearly independent parts here (the benchmark
`benchmarks/queueing_model.py` checks the whole against the simulator).

The queueing wait q is approximated as in an M/G/n queue whose customers are batches (Allen–Cunneen /
Kingman): the replicas are busy a share ρ = λ·T / (n·b) of the time, T the batch period at saturation (1000·b
over the profile's throughput: how long a batch occupies a replica); a request waits with probability
P_w = ErlangC(n, n·ρ) (exact for M/M/n, an upper bound for less variable service); given that it waits, its wait
is the sum of

    the residual of the busy batches: the first of n busy replicas frees after min(R_1..R_n), R_i uniform on
        (0, T) — quantile T·(1 − ε^{1/n});
    the queue ahead of it: exponential with mean T·(c_a² + c_s²) / (2·n·(1 − ρ)), the Allen–Cunneen mean,
        with c_a² = 1/b (batches of b Poisson arrivals) and c_s² = ((l₉₉ − l₅₀) / (z₉₉·l₅₀))² the service
        spread read off the profile's p50 and p99 — quantile mean·ln(1/ε);

both at the conditional level ε = 0.01 / P_w, so that P(q > q₉₉) ≈ 0.01 (no wait counts when P_w ≤ 1 %). The
sum of the two conditional quantiles is conservative; each alone is what dominates at one end (low load with
big batches: the residual; ρ → 1: the queue). At ρ ≥ 1 the latency is infinite: a configuration at or past
saturation never meets an SLO, whatever its service p99.

A profile whose latency already includes queueing at the load it states as its throughput (InfAdapter's
capacities, measured as the largest Poisson load whose p99 met an SLA) is not charged again: its p99 holds up to
that load, and the queue term is left out (`queued`).

Everything is vectorised over numpy arrays: the candidate tables evaluate one row per (option, replicas) at once.
"""

from __future__ import annotations

import functools

import numpy as np

Z99 = 2.3263478740408408  # standard normal 99th percentile
QUANTILE_TAIL = 0.01  # the p99: the share of requests allowed past it


def erlang_c(servers: np.ndarray, offered: np.ndarray) -> np.ndarray:
    """P(wait) in an M/M/n queue with `servers` n and offered load a = λ/μ (ρ = a/n; 1 where ρ ≥ 1), elementwise.

    Erlang B by its stable recurrence B(k) = a·B(k−1) / (k + a·B(k−1)), run once on `offered`'s own shape for
    k = 1…max n and read at each n, then C = B / (1 − ρ·(1 − B)).
    """
    a = np.asarray(offered, dtype=float)
    n = np.maximum(np.rint(np.asarray(servers, dtype=float)), 1.0)
    shape = np.broadcast_shapes(n.shape, a.shape)
    top = int(n.max()) if n.size else 1
    steps = [np.ones(a.shape)]
    for k in range(1, top + 1):
        prev = steps[-1]
        steps.append(a * prev / (k + a * prev))
    stacked = np.stack(steps).reshape((top + 1,) + (1,) * (len(shape) - a.ndim) + a.shape)
    stack = np.broadcast_to(stacked, (top + 1, *shape))
    index = np.broadcast_to(n.astype(np.intp), shape)[None]
    b = np.take_along_axis(stack, index, axis=0)[0]
    rho = np.broadcast_to(a, shape) / np.broadcast_to(n, shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = b / (1.0 - rho * (1.0 - b))
    return np.where(rho >= 1.0, 1.0, np.clip(c, 0.0, 1.0))


def service_cv2(p50_ms: np.ndarray, p99_ms: np.ndarray) -> np.ndarray:
    """Squared coefficient of variation of a batch's service time, read off its p50 and p99 as if normal.

    For the right-skewed times measured (a floor plus a tail) this overstates the spread, the safe side.
    """
    p50 = np.asarray(p50_ms, dtype=float)
    spread = np.maximum(np.asarray(p99_ms, dtype=float) - p50, 0.0)
    return (spread / (Z99 * np.maximum(p50, 1e-9))) ** 2


def fill_wait_ms(load_rps: np.ndarray, count: np.ndarray, batch: np.ndarray, max_batch_time_ms: float) -> np.ndarray:
    """w = min(m, (b − 1)·n/λ): the longest a request waits for its batch to fill when λ is spread over n."""
    load = np.asarray(load_rps, dtype=float)
    b = np.asarray(batch, dtype=float)
    n = np.asarray(count, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        fill = np.where(load > 0, (b - 1.0) * n / np.where(load > 0, load, 1.0) * 1000.0, np.inf)
    return np.where(b <= 1, 0.0, np.minimum(max_batch_time_ms, fill))


def _norm_sf(x: np.ndarray) -> np.ndarray:
    """P(Z > x) for a standard normal Z, elementwise (via erfc, no scipy)."""
    return 0.5 * _erfc(x / np.sqrt(2.0))


def _erfc(x: np.ndarray) -> np.ndarray:
    # Numerical Recipes' erfc with fractional error < 1.2e-7 everywhere: plenty for a quantile in ms.
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    r = t * np.exp(poly)
    return np.where(x >= 0, r, 2.0 - r)


def wait_model(
    load_rps: np.ndarray, count: np.ndarray, batch: np.ndarray, period_ms: np.ndarray, cv2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ρ, P(wait), mean wait given a wait in ms) of the queue for a free replica (module docstring)."""
    n = np.maximum(np.asarray(count, dtype=float), 1.0)
    b = np.asarray(batch, dtype=float)
    t = np.asarray(period_ms, dtype=float)
    offered = np.asarray(load_rps, dtype=float) * t / 1000.0 / b  # replicas' worth of work: λ·T/b
    rho = offered / n
    p_wait = erlang_c(n, offered)
    with np.errstate(divide="ignore", invalid="ignore"):
        queue = t * (1.0 / b + cv2) / (2.0 * np.sqrt(n) * (1.0 - rho))
    residual = t * (1.0 + cv2) / 2.0  # the least-outstanding router queues a request behind one replica
    return rho, p_wait, np.maximum(queue, residual)


def _tail(x: np.ndarray, p_wait: np.ndarray, r: np.ndarray) -> np.ndarray:
    """P(S + W > μ + x·(σ + m)) for S normal(μ, σ), W 0 or exponential(mean m) with P(W > 0) = p_wait, r = σ/(σ+m).

    (1 − P_w)·P(S > ·) + P_w·P(S + E > ·), the second an exponentially modified Gaussian in closed form.
    """
    sigma = np.maximum(r, 1e-9)
    mean = np.maximum(1.0 - r, 1e-9)
    u = x / sigma
    k = sigma / mean  # θ·σ
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        emg = _norm_sf(u) + np.exp(np.minimum(-x / mean + 0.5 * k * k, 700.0)) * (1.0 - _norm_sf(u - k))
    emg = np.clip(np.nan_to_num(emg, nan=1.0, posinf=1.0), 0.0, 1.0)
    return (1.0 - p_wait) * _norm_sf(u) + p_wait * emg


@functools.cache
def _quantile_table(points: int = 65, iterations: int = 44) -> np.ndarray:
    """y*(P_w, r) on a grid of P_w ∈ [1 %, 1] (even in log P_w) × r ∈ [0, 1]: the p99 of S + W is μ + (σ + m)·y*
    (bisection)."""
    u, r = np.meshgrid(np.linspace(0.0, 1.0, points), np.linspace(0.0, 1.0, points), indexing="ij")
    pw = QUANTILE_TAIL ** (1.0 - u)
    lo = np.full(pw.shape, -1.0)
    hi = np.full(pw.shape, Z99 + np.log(1.0 / QUANTILE_TAIL) + 1.0)
    for _ in range(iterations):
        x = (lo + hi) / 2
        over = _tail(x, pw, r) > QUANTILE_TAIL
        lo = np.where(over, x, lo)
        hi = np.where(over, hi, x)
    return hi


def sojourn_p99_ms(
    service_p50_ms: np.ndarray, service_p99_ms: np.ndarray, p_wait: np.ndarray, wait_mean_ms: np.ndarray
) -> np.ndarray:
    """The p99 of service + wait: service normal through its p50 and p99, wait 0 or exponential with the mean.

    Read off a table of the exact quantile of that mixture (`_quantile_table`, computed once at import by
    bisection on the closed-form tail), interpolated bilinearly in log P_w and r = σ/(σ + m), what the quantile
    depends on once scaled by σ + m (interpolation error below 5 % of σ + m, `tests/test_queueing.py`). Where a request waits with probability 1 % or less, the p99 is the
    service's own.
    """
    mu = np.asarray(service_p50_ms, dtype=float)
    p99 = np.maximum(np.asarray(service_p99_ms, dtype=float), mu)
    sigma = (p99 - mu) / Z99
    pw = np.clip(np.asarray(p_wait, dtype=float), 0.0, 1.0)
    mean = np.maximum(np.asarray(wait_mean_ms, dtype=float), 0.0)
    scale = sigma + mean
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(scale > 0, sigma / np.where(scale > 0, scale, 1.0), 1.0)
    table = _quantile_table()
    n = table.shape[0] - 1
    with np.errstate(divide="ignore"):
        u = np.clip(np.log(np.maximum(pw, QUANTILE_TAIL) / QUANTILE_TAIL) / np.log(1.0 / QUANTILE_TAIL), 0.0, 1.0)
    fi, fj = u * n, np.nan_to_num(r, nan=1.0) * n
    i = np.minimum(fi.astype(int), n - 1)
    j = np.minimum(fj.astype(int), n - 1)
    di, dj = fi - i, fj - j
    y = (table[i, j] * (1 - di) * (1 - dj) + table[i + 1, j] * di * (1 - dj)
         + table[i, j + 1] * (1 - di) * dj + table[i + 1, j + 1] * di * dj)
    with np.errstate(invalid="ignore"):
        out = mu + scale * y
    return np.where((pw <= QUANTILE_TAIL) | ~np.isfinite(mean), p99, np.maximum(out, p99))


def stage_p99_ms(
    load_rps: np.ndarray | float,
    count: np.ndarray | float,
    batch: np.ndarray | float,
    throughput_rps: np.ndarray | float,
    p50_ms: np.ndarray | float,
    p99_ms: np.ndarray | float,
    max_batch_time_ms: float,
    queued: np.ndarray | bool = False,
) -> np.ndarray:
    """The p99 of a request's time at a stage group: service p99 + batch fill + queueing (module docstring).

    `throughput_rps` is one replica's; `queued` marks profile rows whose latency already includes queueing at
    that throughput (their p99 stands as it is up to that load).
    """
    load = np.asarray(load_rps, dtype=float)
    n = np.asarray(count, dtype=float)
    b = np.asarray(batch, dtype=float)
    thr = np.asarray(throughput_rps, dtype=float)
    p50 = np.asarray(p50_ms, dtype=float)
    p99 = np.asarray(p99_ms, dtype=float)
    period = 1000.0 * b / thr
    fill = fill_wait_ms(load, n, b, max_batch_time_ms)
    rho, p_wait, mean = wait_model(load, n, b, period, service_cv2(p50, p99))
    sojourn = sojourn_p99_ms(p50, p99, p_wait, mean)
    sojourn = np.where(rho >= 1.0 - 1e-12, np.inf, sojourn)
    return np.where(np.asarray(queued, dtype=bool), p99 + fill, sojourn + fill)
