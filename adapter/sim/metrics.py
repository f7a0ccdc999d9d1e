"""Per-second columns from one simulated run: what happened to the requests of each second, and what ran.

Requests are counted by the second they **arrived** in: `load` is that second's arrivals, and `served`,
`dropped`, `slo_violations`, the latency percentiles and `accuracy` describe what became of those same requests
(however late they were answered). So `served + dropped = load` in every second and the percentages of a
summary are shares of the requests sent. `cores` is the mean over the second of the cores held (replicas
starting, serving, switching or draining all count), `predicted`, `batch` and `decision` are what the adapter
had in force at the start of the second.

Columns (the per-second frame `adapter.sim.report` plots; a measured run can produce the same):

    t               second (from the start of the trace)
    load            requests that arrived
    predicted       the predictor's load for the interval in force (requests per second)
    served          of those, answered by the last stage
    dropped         of those, not answered (deadline, overloaded, no ready replica)
    slo_violations  dropped + answered later than the SLO
    p50_ms, p99_ms  latency of those answered (end to end, network time included); nan if none
    accuracy        mean pipeline accuracy (percent) of those answered; the decision's own when none were
    ontime_acc      sum of the pipeline accuracy (a fraction) of those answered within the SLO
    cores           mean cores held
    batch           sum of the stages' batch sizes in force (load-weighted within a stage)
    decision        the decision in force, compact (`stage=variant:b4:c1x2+variant:…;stage=…`)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adapter.decision.model import Decision
from adapter.spec import GraphSpec

Frame = dict[str, np.ndarray]


@dataclass(frozen=True)
class TickRecord:
    """One adapter run: when, what it predicted, what it decided."""

    t: float
    predicted: float
    decision: Decision


def compact(decision: Decision) -> str:
    """`detector=yolov5s:b4:c1x2;classifier=resnet18:b8:c0.5x1+resnet50:b1:c2x1`."""
    return ";".join(
        f"{s.name}=" + "+".join(f"{g.variant}:b{g.batch}:c{g.cores:g}x{g.count}" for g in s.replicas if g.count)
        for s in decision.stages
    )


def decision_accuracy(decision: Decision, spec: GraphSpec) -> float:
    """The pipeline accuracy (percent) a decision promises: load-weighted per stage, combined as the spec says."""
    fracs = []
    for st in spec.stages:
        groups = [g for g in decision.stage(st.name).replicas if g.count > 0]
        if not groups:
            fracs.append(0.0)
            continue
        total = sum(g.load_share for g in groups)
        weights = [g.load_share / total for g in groups] if total > 0 else [1.0 / len(groups)] * len(groups)
        fracs.append(sum(w * st.variant(g.variant).accuracy / 100.0 for w, g in zip(weights, groups, strict=True)))
    return 100.0 * (math.prod(fracs) if spec.accuracy == "product" else sum(fracs) / len(fracs))


def decision_batch(decision: Decision) -> float:
    total = 0.0
    for s in decision.stages:
        groups = [g for g in s.replicas if g.count > 0]
        share = sum(g.load_share for g in groups) or 1.0
        total += sum(g.load_share * g.batch for g in groups) / share
    return total


def group_percentiles(keys: np.ndarray, values: np.ndarray, n_keys: int, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Nearest-rank percentiles of `values` per integer key in `[0, n_keys)`; nan where a key has no value."""
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    starts = np.searchsorted(k, np.arange(n_keys), side="left")
    counts = np.searchsorted(k, np.arange(n_keys), side="right") - starts
    out = []
    for q in qs:
        idx = starts + np.maximum(np.ceil(q * counts).astype(np.int64) - 1, 0)
        col = np.full(n_keys, np.nan)
        has = counts > 0
        col[has] = v[idx[has]]
        out.append(col)
    return out


def per_second_mean(times: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Mean over each second `[s, s+1)` of the step function that takes `values[i]` from `times[i]` on."""
    seg = np.diff(np.append(times, max(float(times[-1]), float(n))))
    cum = np.concatenate([[0.0], np.cumsum(values * seg)])  # integral up to each times[i]
    edges = np.arange(n + 1, dtype=np.float64)
    idx = np.clip(np.searchsorted(times, edges, side="right") - 1, 0, len(times) - 1)
    integral = cum[idx] + values[idx] * (edges - times[idx])
    return np.diff(integral)


def build_frame(
    *,
    duration_s: int,
    arrival: np.ndarray,
    finish: np.ndarray,
    accuracy: np.ndarray,
    slo_s: np.ndarray,
    network_s: float,
    cores_log: list[tuple[float, float]],
    ticks: list[TickRecord],
    spec: GraphSpec,
) -> Frame:
    """The per-second columns (module docstring) from per-request outcomes and the adapter's records.

    `accuracy`: per request, the pipeline accuracy as a fraction; `slo_s`: per request, its end-to-end SLO.
    """
    n = duration_s
    sec = np.minimum(arrival.astype(np.int64), n - 1) if n else arrival.astype(np.int64)
    served = np.isfinite(finish)
    latency = finish - arrival + network_s
    ontime = served & (latency <= slo_s)
    load = np.bincount(sec, minlength=n).astype(np.float64)
    n_served = np.bincount(sec[served], minlength=n).astype(np.float64)
    p50, p99 = group_percentiles(sec[served], latency[served] * 1000.0, n, (0.5, 0.99))
    acc_sum = np.bincount(sec[served], weights=accuracy[served], minlength=n)
    ontime_acc = np.bincount(sec[ontime], weights=accuracy[ontime], minlength=n)
    ontime_n = np.bincount(sec[ontime], minlength=n).astype(np.float64)

    tick_t = np.array([r.t for r in ticks])
    at = np.clip(np.searchsorted(tick_t, np.arange(n) + 1e-9, side="right") - 1, 0, max(len(ticks) - 1, 0))
    predicted = np.array([ticks[i].predicted for i in at]) if ticks else np.zeros(n)
    batch = np.array([decision_batch(ticks[i].decision) for i in at]) if ticks else np.zeros(n)
    config_acc = np.array([decision_accuracy(ticks[i].decision, spec) for i in at]) if ticks else np.zeros(n)
    decision = np.array([compact(ticks[i].decision) for i in at], dtype=object) if ticks else np.full(n, "")
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n_served > 0, 100.0 * acc_sum / np.maximum(n_served, 1), config_acc)
    times = np.array([t for t, _ in cores_log])
    values = np.array([v for _, v in cores_log])
    cores = per_second_mean(times, values, n) if n else np.zeros(0)
    return {
        "t": np.arange(n, dtype=np.float64),
        "load": load,
        "predicted": predicted,
        "served": n_served,
        "dropped": load - n_served,
        "slo_violations": load - ontime_n,
        "p50_ms": p50,
        "p99_ms": p99,
        "accuracy": acc,
        "ontime_acc": ontime_acc,
        "cores": cores,
        "batch": batch,
        "decision": decision,
    }
