"""Reports: per-second frames written and read as CSV, summaries, tables and the plots that compare runs.

A **frame** is a per-second table, `dict[str, numpy array]` with a `t` column (seconds) and any of the columns
the simulator writes (`adapter.sim.metrics`: load, predicted, served, dropped, slo_violations, p50_ms, p99_ms,
accuracy, ontime_acc, cores, batch, decision). Everything here takes frames, not simulator objects, so a run
measured on the live system (the demo) is plotted and tabled beside the simulator's with the same code;
columns a frame lacks are left out of its plots.

A **results folder** (what `ipa experiment` writes and `ipa report DIR` re-renders):

    <policy>.csv      one frame per policy          summary.csv / summary.md   the summary table
    overview.png      the four panels below          load.png accuracy.png cores.png latency.png
    tradeoff.png      mean cores against mean accuracy, one point per policy
    meta.json         what was run (spec, trace, policies, predictor, seed, SLO, objective weights)

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
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from adapter.errors import UsageError
from adapter.spec import GraphSpec

Frame = dict[str, np.ndarray]
TEXT_COLUMNS = ("decision",)
RESERVED_FILES = ("summary.csv",)


# ------------------------------------------------------------------------------------------------- frames


def write_frame(path: str | Path, frame: Mapping[str, np.ndarray]) -> None:
    """Write a frame as CSV: one row per second, columns in the frame's order; floats with 6 significant digits."""
    cols = list(frame)
    n = len(frame["t"])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        data = [frame[c] for c in cols]
        for i in range(n):
            w.writerow([_cell(col[i]) for col in data])


def _cell(v: Any) -> str:
    if isinstance(v, str):
        return v
    x = float(v)
    if math.isnan(x):
        return ""
    return f"{x:.6g}"


def read_frame(path: str | Path) -> Frame:
    """Read a frame written by `write_frame` (or any per-second CSV with a `t` column); empty cells are nan."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise UsageError(f"{p}: cannot read: {e.strerror or e}") from None
    if not rows or "t" not in rows[0]:
        raise UsageError(f"{p}: not a per-second frame: expected a header with a `t` column")
    header, body = rows[0], rows[1:]
    frame: Frame = {}
    for j, name in enumerate(header):
        values = [r[j] if j < len(r) else "" for r in body]
        if name in TEXT_COLUMNS:
            frame[name] = np.array(values, dtype=object)
            continue
        try:
            frame[name] = np.array([float(v) if v != "" else math.nan for v in values], dtype=np.float64)
        except ValueError:
            frame[name] = np.array(values, dtype=object)
    return frame


# ----------------------------------------------------------------------------------------------- summary


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
            w.writerow([_cell(v) if not isinstance(v, int) else str(v) for v in asdict(s).values()])
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


# ------------------------------------------------------------------------------------------------- plots

PANELS: tuple[tuple[str, str, str], ...] = (
    ("load", "load (requests/s)", "load.png"),
    ("accuracy", "pipeline accuracy (%)", "accuracy.png"),
    ("cores", "cores", "cores.png"),
    ("p99_ms", "p99 latency (ms)", "latency.png"),
)


def _rolling(x: np.ndarray, window: int, how: str = "mean") -> np.ndarray:
    """A trailing rolling mean or max that ignores nan (so a plotted line is readable, not per-second noise)."""
    if window <= 1 or len(x) == 0:
        return x
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        seg = x[max(0, i - window + 1) : i + 1]
        seg = seg[np.isfinite(seg)]
        if len(seg):
            out[i] = seg.max() if how == "max" else seg.mean()
    return out


def _panel(ax: Any, column: str, frames: Mapping[str, Frame], colors: dict[str, Any], slo_ms: float | None,
           smooth_s: int) -> None:
    if column == "load":
        shown: list[np.ndarray] = []
        for label, fr in frames.items():
            if "load" in fr and not any(len(x) == len(fr["load"]) and np.array_equal(x, fr["load"]) for x in shown):
                name = "load" if not shown else f"load ({label})"
                ax.plot(fr["t"], fr["load"], color="0.55" if not shown else colors[label], lw=0.8, label=name)
                shown.append(fr["load"])
        predictions: list[tuple[np.ndarray, list[str]]] = []  # runs with the same prediction share one line
        for label, fr in frames.items():
            if "predicted" not in fr:
                continue
            for y, labels in predictions:
                if len(y) == len(fr["predicted"]) and np.array_equal(y, fr["predicted"], equal_nan=True):
                    labels.append(label)
                    break
            else:
                predictions.append((fr["predicted"], [label]))
        for y, labels in predictions:
            fr = frames[labels[0]]
            shared = len(labels) == len(frames) and len(frames) > 1
            ax.step(fr["t"], y, where="post", color="black" if shared else colors[labels[0]], lw=1.0, ls="--",
                    label="predicted" if shared else f"predicted ({', '.join(labels)})")
        return
    widths = np.linspace(2.6, 0.9, len(frames)) if len(frames) > 1 else [1.0]
    for (label, fr), lw in zip(frames.items(), widths, strict=True):
        if column not in fr:
            continue
        y = fr[column].astype(np.float64)
        if column == "p99_ms":
            y = _rolling(y, smooth_s, "max")
        # earlier runs drawn wider, so a later run on the same values does not hide them
        ax.plot(fr["t"], y, color=colors[label], lw=float(lw), label=label)
    if column == "p99_ms":
        if slo_ms is not None:
            ax.axhline(slo_ms, color="red", lw=1.0, ls=":", label="SLO")
        ax.set_yscale("log")


def plot_frames(
    frames: Mapping[str, Frame], out_dir: str | Path, *, slo_ms: float | None = None, title: str = "",
    smooth_s: int = 10,
) -> list[Path]:
    """The comparison plots of several runs (one line per run) into `out_dir`; returns the files written.

    Runs are drawn in order, each thinner than the one before, so runs with equal values stay visible.
    Latency is drawn as the rolling max over `smooth_s` seconds of the per-second p99 (the worst recent p99).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    cmap = plt.get_cmap("tab10")
    colors = {label: cmap(i % 10) for i, label in enumerate(frames)}
    written: list[Path] = []
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(11, 11), sharex=True)
    for ax, (col, ylabel, _) in zip(axes, PANELS, strict=True):
        _panel(ax, col, frames, colors, slo_ms, smooth_s)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=7, ncol=3)
    axes[1].legend(loc="lower left", fontsize=7, ncol=5)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    written.append(out / "overview.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    for col, ylabel, filename in PANELS:
        fig, ax = plt.subplots(figsize=(10, 3.6))
        _panel(ax, col, frames, colors, slo_ms, smooth_s)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
        if title:
            ax.set_title(title)
        fig.tight_layout()
        written.append(out / filename)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def plot_tradeoff(summaries: Sequence[Summary], out_dir: str | Path, title: str = "") -> Path:
    """Mean cores against mean accuracy, one point per run, annotated with its SLO-violation share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(summaries):
        ax.scatter([s.cores_mean], [s.accuracy], color=cmap(i % 10), s=60, label=s.policy)
        ax.annotate(f"{s.policy}\n{s.slo_violation_pct:.1f}% viol.", (s.cores_mean, s.accuracy), fontsize=7,
                    xytext=(5, 5), textcoords="offset points")
    ax.set_xlabel("mean cores")
    ax.set_ylabel("mean pipeline accuracy (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(out_dir) / "tradeoff.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ results folder


def read_results(results_dir: str | Path) -> tuple[dict[str, Any], dict[str, Frame]]:
    """`meta.json` and the per-policy frames of a results folder, in the order the experiment ran them (the
    frames may be missing: a published folder keeps only the table and the plots)."""
    d = Path(results_dir)
    if not d.is_dir():
        raise UsageError(f"{d}: no such results folder")
    meta: dict[str, Any] = {}
    if (d / "meta.json").exists():
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UsageError(f"{d / 'meta.json'}: not JSON ({e.msg})") from None
    names = meta.get("policies") or sorted(p.stem for p in d.glob("*.csv") if p.name not in RESERVED_FILES)
    frames = {n: read_frame(d / f"{n}.csv") for n in names if (d / f"{n}.csv").exists()}
    return meta, frames


def render(results_dir: str | Path) -> list[Path]:
    """Re-draw the plots and the Markdown table of a results folder from its CSVs; returns the files written.

    Without per-second CSVs only the table and the trade-off plot are drawn again (from `summary.csv`)."""
    d = Path(results_dir)
    meta, frames = read_results(d)
    has_summary = (d / "summary.csv").exists()
    if not frames and not has_summary:
        raise UsageError(f"{d}: no per-second CSVs or summary.csv to report on")
    title = meta.get("title", d.name)
    written = plot_frames(frames, d, slo_ms=meta.get("slo_ms"), title=title) if frames else []
    if has_summary:
        summaries = read_summary(d / "summary.csv")
        (d / "summary.md").write_text(summary_markdown(summaries, title, meta.get("notes", "")), encoding="utf-8")
        written += [d / "summary.md", plot_tradeoff(summaries, d, title)]
    return written
