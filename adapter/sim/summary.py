"""The summary of a run: one row of figures from its per-second frame, and the summary table (CSV, Markdown).

The summary of a run (`summarize`):

    accuracy          mean pipeline accuracy of answered requests, percent
    norm_accuracy     the same mapped to 0..100 between the pipeline's least and most accurate variants
    effective_accuracy  Model-Switching's: the mean over all requests sent of the pipeline accuracy of those
                      answered within the SLO, a late or dropped request scoring 0 (percent)
    cores_mean/peak   mean and largest per-second cores held
    p99_ms            99th percentile end-to-end latency of answered requests (exact when the per-request
                      latencies are given, else the 99th percentile of the per-second p99s)
    slo_violation_pct requests dropped or answered later than the SLO, percent of requests sent
    slo_attainment_pct  requests answered within the SLO, percent of requests sent (100 − slo_violation_pct)
    drop_pct          requests dropped, percent
    coverage_pct      intervals whose real peak load (per second) was at or below the load planned for them
                      (the `predicted` column × (1 + headroom)), percent of the whole intervals
    objective         the realised objective: alpha·effective_accuracy/100 − beta·cores_mean − delta·batch_mean,
                      the optimizer's objective with a request that misses its SLO earning nothing, so that
                      no policy gains by dropping or answering late
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from adapter.errors import UsageError
from adapter.spec import GraphSpec

Frame = dict[str, np.ndarray]


def format_cell(v: Any) -> str:
    if isinstance(v, str):
        return v
    x = float(v)
    if math.isnan(x):
        return ""
    return f"{x:.6g}"


@dataclass(frozen=True)
class Summary:
    """One row of the summary table (see the module docstring for each figure)."""

    policy: str
    requests: int
    accuracy: float
    norm_accuracy: float
    effective_accuracy: float
    cores_mean: float
    cores_peak: float
    p99_ms: float
    slo_violation_pct: float
    slo_attainment_pct: float
    drop_pct: float
    coverage_pct: float
    objective: float


SUMMARY_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Summary))
SUMMARY_HEADERS = {
    "policy": "policy",
    "requests": "requests",
    "accuracy": "accuracy %",
    "norm_accuracy": "norm. accuracy %",
    "effective_accuracy": "effective accuracy %",
    "cores_mean": "mean cores",
    "cores_peak": "peak cores",
    "p99_ms": "p99 ms",
    "slo_violation_pct": "SLO violations %",
    "slo_attainment_pct": "SLO attainment %",
    "drop_pct": "drops %",
    "coverage_pct": "coverage %",
    "objective": "objective",
}


def accuracy_range(spec: GraphSpec) -> tuple[float, float]:
    """The pipeline accuracy (percent) with every stage's least and with every stage's most accurate variant."""
    lows = [min(v.accuracy for v in s.variants) / 100 for s in spec.stages]
    highs = [max(v.accuracy for v in s.variants) / 100 for s in spec.stages]
    if spec.accuracy == "product":
        return 100 * math.prod(lows), 100 * math.prod(highs)
    return 100 * sum(lows) / len(lows), 100 * sum(highs) / len(highs)


def summarize(name: str, frame: Frame, spec: GraphSpec, latency_ms: np.ndarray | None = None) -> Summary:
    """The summary of one run from its frame (and, for an exact p99, the latency of every answered request)."""
    load = frame["load"]
    requests = float(np.nansum(load))
    served = frame.get("served", load)
    acc = frame.get("accuracy")
    answered = float(np.nansum(served))
    mean_acc = float(np.nansum(acc * served) / answered) if acc is not None and answered > 0 else math.nan
    lo, hi = accuracy_range(spec)
    norm = round(100.0 * (mean_acc - lo) / (hi - lo), 9) + 0.0 if hi > lo else 100.0  # + 0.0: never "-0.0"
    cores = frame.get("cores", np.zeros_like(load))
    if latency_ms is not None:
        p99 = float(np.percentile(latency_ms, 99)) if len(latency_ms) else math.nan
    else:
        per_second = frame.get("p99_ms", np.array([math.nan]))
        per_second = per_second[np.isfinite(per_second)]
        p99 = float(np.percentile(per_second, 99)) if len(per_second) else math.nan

    def share(col: str) -> float:
        return 100.0 * float(np.nansum(frame[col])) / requests if col in frame and requests else 0.0

    o = spec.objective
    ontime = float(np.nansum(frame["ontime_acc"])) / requests if "ontime_acc" in frame and requests else math.nan
    batch = float(np.nanmean(frame["batch"])) if "batch" in frame and len(frame["batch"]) else 0.0
    cores_mean = float(np.nanmean(cores)) if len(cores) else 0.0
    return Summary(
        policy=name,
        requests=int(round(requests)),
        accuracy=mean_acc,
        norm_accuracy=norm,
        effective_accuracy=100.0 * ontime,
        cores_mean=cores_mean,
        cores_peak=float(np.nanmax(cores)) if len(cores) else 0.0,
        p99_ms=p99,
        slo_violation_pct=share("slo_violations"),
        slo_attainment_pct=100.0 - share("slo_violations"),
        drop_pct=share("dropped"),
        coverage_pct=interval_coverage(frame, spec.interval_s, spec.headroom),
        objective=o.alpha * ontime - o.beta * cores_mean - o.delta * batch,
    )


def interval_coverage(frame: Frame, interval_s: float, headroom: float = 0.0) -> float:
    """Percent of the whole intervals whose real per-second peak load was at or below the load planned for them
    (the `predicted` column at the interval's start × (1 + headroom)); nan without a `predicted` column."""
    if "predicted" not in frame or "load" not in frame:
        return math.nan
    step = max(1, round(interval_s))
    k = len(frame["load"]) // step
    if k == 0:
        return math.nan
    peaks = frame["load"][: k * step].reshape(k, step).max(axis=1)
    planned = frame["predicted"][: k * step : step] * (1.0 + headroom)
    return 100.0 * float(np.mean(peaks <= planned + 1e-9))


def write_summary(out_dir: str | Path, summaries: Sequence[Summary], title: str = "", notes: str = "") -> None:
    """`summary.csv` (full precision) and `summary.md` (the table, rounded, with a title and notes)."""
    out = Path(out_dir)
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SUMMARY_COLUMNS)
        for s in summaries:
            w.writerow([format_cell(v) if not isinstance(v, int) else str(v) for v in asdict(s).values()])
    (out / "summary.md").write_text(summary_markdown(summaries, title, notes), encoding="utf-8")


def read_summary(path: str | Path) -> list[Summary]:
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UsageError(f"{p}: cannot read: {e.strerror or e}") from None
    out = []
    for row in rows:
        try:
            out.append(Summary(  # a column an older table lacks is nan
                policy=row["policy"], requests=int(row["requests"]),
                **{k: float(row[k]) if row.get(k, "") != "" else math.nan for k in SUMMARY_COLUMNS[2:]},
            ))
        except (KeyError, ValueError) as e:
            raise UsageError(f"{p}: not a summary table ({e})") from None
    return out


def summary_markdown(summaries: Sequence[Summary], title: str = "", notes: str = "") -> str:
    """The summary as a Markdown table (accuracy 2 decimals, cores 2, latency 0, percentages 2 (coverage 1),
    objective 3)."""
    digits = {"accuracy": 2, "norm_accuracy": 1, "effective_accuracy": 2, "cores_mean": 2, "cores_peak": 2,
              "p99_ms": 0, "slo_violation_pct": 2, "slo_attainment_pct": 2, "drop_pct": 2, "coverage_pct": 1,
              "objective": 3}
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(SUMMARY_HEADERS[c] for c in SUMMARY_COLUMNS) + " |")
    lines.append("|" + "|".join("---" if c == "policy" else "---:" for c in SUMMARY_COLUMNS) + "|")
    for s in summaries:
        cells = []
        for c in SUMMARY_COLUMNS:
            v = getattr(s, c)
            cells.append(str(v) if c in ("policy", "requests") else ("–" if math.isnan(v) else f"{v:.{digits[c]}f}"))
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"
