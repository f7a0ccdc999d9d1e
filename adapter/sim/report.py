"""Reports: per-second frames written and read as CSV, the plots that compare runs, and results folders.

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

The summary table and what each of its figures means: `adapter.sim.summary`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapter.errors import UsageError
from adapter.sim.summary import Summary, format_cell, read_summary, summary_markdown

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
            w.writerow([format_cell(col[i]) for col in data])


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
