"""Decision quality: do the decisions hold the SLO, and does `joint` score best? One table and the targets.

    python benchmarks/decision_quality.py --trace-file ../shared/data/traces/twitter.tbz2 [--seeds 0,1,2]
        [--quantile 0.9] [--out results/decision-quality] [--windows video-bursty,...]

Every window is one `adapter.sim.experiment.run_experiment` (the simulator with the live adapter's own loop, every
policy on the very same Poisson arrivals, the results folder with its plots under `--out`):

    video-bursty … video-fluctuating   IPA's four windows of the Twitter trace (÷ 8) on the video pipeline
                                       (inference_graphs/video-monitoring.yaml, YOLOv5 → ResNet, 2 cores)
    resnet-infadapter                  InfAdapter's window × 0.8 on the demo ResNet family (inference_graphs/resnet.yaml)
    infadapter-own                     InfAdapter's window on InfAdapter's own measured capacities, 20 cores
                                       (inference_graphs/infadapter-resnet.yaml)
    synthetic-bursty, -fluctuating     the video pipeline on synthetic shapes drawn with seed 2027, which nothing
                                       was ever tuned on

Rows: `joint` with the oracle predictor (the next interval's peak known), `joint` and every baseline (ipa,
infadapter, vpa, fa2-low, fa2-high, rim) with the LSTM as the shipped graph configures it (no `load_quantile`;
InfAdapter's graph adds its 10 % headroom), and `joint·q` planning for the `--quantile` of the LSTM's recent
errors (`load_quantile`, adapter.forecast.conformal): what the margin buys and costs. Columns: SLO violations
(dropped or late, % of requests), effective accuracy (late or dropped = 0), mean and peak cores, the realised
objective (α·effective accuracy − β·cores − δ·batch), coverage (% of intervals whose real peak was at most the
load planned). With several seeds a cell is the mean and (min–max) over the seeds; the targets are judged on
the mean. The Twitter windows need `--trace-file`; without it only the synthetic ones run.

Timings are not measured here; the run takes a few minutes on 2 cores (a progress bar shows simulated seconds).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapter.sim.experiment import run_experiment  # noqa: E402
from adapter.sim.simulator import SimResult  # noqa: E402
from adapter.sim.summary import Summary  # noqa: E402
from adapter.spec import GraphSpec, load_spec  # noqa: E402
from adapter.workloads.traces import PRESETS, Trace, preset_trace, read_trace, synthetic_trace  # noqa: E402

HISTORY_S = 120
UNTUNED_SEED = 2027
BASELINES = ("ipa", "infadapter", "vpa", "fa2-low", "fa2-high", "rim")
ORACLE, JOINT, PLAN = "joint·oracle", "joint", "joint·q"


@dataclass(frozen=True)
class Window:
    name: str
    graph: str
    kind: str  # "steady" (the ≤ 1 % targets) or "bursty" (≤ 2 %)
    trace: Callable[[str | None], Trace]
    history: Callable[[str | None], np.ndarray | None]
    twitter: bool = True


def _preset(name: str, scale: float = 1.0) -> tuple[Callable[[str | None], Trace], Callable[[str | None], np.ndarray]]:
    def trace(file: str | None) -> Trace:
        assert file is not None
        t = preset_trace(name, file)
        return t.scaled(scale) if scale != 1.0 else t

    def history(file: str | None) -> np.ndarray:
        assert file is not None
        preset = PRESETS[name]
        first = preset.windows[0][0]
        return read_trace(file, first - HISTORY_S, HISTORY_S).rates * preset.scale * scale

    return trace, history


def _synthetic(shape: str) -> Callable[[str | None], Trace]:
    return lambda _file: synthetic_trace(shape, 1200, seed=UNTUNED_SEED)


VIDEO = "inference_graphs/video-monitoring.yaml"
WINDOWS: tuple[Window, ...] = (
    Window("video-bursty", VIDEO, "bursty", *_preset("bursty")),
    Window("video-steady-low", VIDEO, "steady", *_preset("steady-low")),
    Window("video-steady-high", VIDEO, "steady", *_preset("steady-high")),
    Window("video-fluctuating", VIDEO, "steady", *_preset("fluctuating")),
    Window("resnet-infadapter", "inference_graphs/resnet.yaml", "bursty", *_preset("infadapter", 0.8)),
    Window("infadapter-own", "inference_graphs/infadapter-resnet.yaml", "bursty", *_preset("infadapter")),
    Window("synthetic-bursty", VIDEO, "bursty", _synthetic("bursty"), lambda _f: None, twitter=False),
    Window("synthetic-fluctuating", VIDEO, "steady", _synthetic("fluctuating"), lambda _f: None, twitter=False),
)


@dataclass(frozen=True)
class Cell:
    """One row of one window over the seeds."""

    runs: tuple[Summary, ...]
    budget: float

    def mean(self, field: str) -> float:
        return statistics.fmean(getattr(s, field) for s in self.runs)

    def show(self, field: str, digits: int) -> str:
        values = [getattr(s, field) for s in self.runs]
        text = f"{statistics.fmean(values):.{digits}f}"
        if len(values) > 1:
            text += f" ({min(values):.{digits}f}–{max(values):.{digits}f})"
        return text


def run_window(window: Window, trace_file: str | None, seeds: Sequence[int], quantile: float, out: Path,
               advance: Callable[[SimResult], None] | None) -> dict[str, Cell]:
    """Every row of one window, each seed: three experiments (oracle, bare LSTM, LSTM planning for the quantile)."""
    spec = load_spec(ROOT / window.graph, require_profiles=True)
    trace, history = window.trace(trace_file), window.history(trace_file)
    plan = spec.model_copy(update={"load_quantile": quantile})
    rows: dict[str, list[Summary]] = {}
    for seed in seeds:
        base = out / window.name / f"seed{seed}"
        runs: list[tuple[str, GraphSpec, Sequence[str], str, Path]] = [
            (ORACLE, spec, ["joint"], "oracle", base / "joint-oracle"),
            ("", spec, ["joint", *BASELINES], "lstm", base),
            (PLAN, plan, ["joint"], "lstm", base / "joint-q"),
        ]
        for label, s, policies, predictor, folder in runs:
            title = f"{window.name}, {predictor}" + (f", planning for q={quantile:g}" if s.load_quantile else "")
            summaries = run_experiment(s, trace, policies, folder, predictor=predictor, seed=seed, title=title,
                                       progress=False, history=history, on_result=advance,
                                       notes=f"benchmarks/decision_quality.py, window {window.name}, seed {seed}")
            for summary in summaries:
                rows.setdefault(label or summary.policy, []).append(summary)
    order = [ORACLE, JOINT, PLAN, *BASELINES]
    return {name: Cell(tuple(rows[name]), spec.budget_cores) for name in order}


def _run_named(name: str, trace_file: str | None, seeds: Sequence[int], quantile: float, out: Path) -> dict[str, Cell]:
    """`run_window` by the window's name (what a worker process is sent: windows hold functions, not picklable)."""
    return run_window(next(w for w in WINDOWS if w.name == name), trace_file, seeds, quantile, out, None)


COLUMNS = (("slo_violation_pct", "SLO violations %", 2), ("effective_accuracy", "effective accuracy %", 2),
           ("cores_mean", "mean cores", 2), ("cores_peak", "peak cores", 2), ("objective", "realised objective", 3),
           ("coverage_pct", "coverage %", 0))


def table(results: dict[str, dict[str, Cell]]) -> str:
    lines = ["| window | policy | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for window, cells in results.items():
        for name, cell in cells.items():
            lines.append(f"| {window} | {name} | " + " | ".join(cell.show(f, d) for f, _, d in COLUMNS) + " |")
    return "\n".join(lines)


def _verdict(ok: bool, miss: str) -> str:
    return "met" if ok else f"MISSED: {miss}"


def targets(results: dict[str, dict[str, Cell]], kinds: dict[str, str]) -> list[str]:
    """Issue 11's targets, each with whether it is met and, when not, by how much."""
    out = []
    for window, cells in results.items():
        oracle, joint, plan = cells[ORACLE], cells[JOINT], cells[PLAN]
        v = oracle.mean("slo_violation_pct")
        out.append(f"{window}: joint·oracle violations ≤ 1 %: {v:.2f} % — {_verdict(v <= 1, f'by {v - 1:.2f} points')}")
        limit = 1.0 if kinds[window] == "steady" else 2.0
        for row, cell in ((JOINT, joint), (PLAN, plan)):
            v = cell.mean("slo_violation_pct")
            out.append(f"{window}: {row} violations ≤ {limit:g} %: {v:.2f} % — "
                       f"{_verdict(v <= limit, f'by {v - limit:.2f} points')}")
        best = max(BASELINES, key=lambda b: cells[b].mean("objective"))
        o, ob = joint.mean("objective"), cells[best].mean("objective")
        out.append(f"{window}: joint's objective highest: {o:.3f} vs best baseline {best} {ob:.3f} — "
                   f"{_verdict(o >= ob, f'short by {ob - o:.3f} ({100 * (ob - o) / abs(ob):.1f} %)')}")
        oo = oracle.mean("objective")
        ratio = o / oo if oo > 0 else math.nan
        out.append(f"{window}: joint's objective ≥ 95 % of joint·oracle's ({oo:.3f}): {100 * ratio:.1f} % — "
                   f"{_verdict(ratio >= 0.95, f'by {100 * (0.95 - ratio):.1f} points')}")
        over = [(n, c.mean("cores_peak")) for n, c in cells.items() if c.mean("cores_peak") > c.budget + 1e-9]
        budget = next(iter(cells.values())).budget
        out.append(f"{window}: peak cores ≤ budget {budget:g}: " + _verdict(
            not over, ", ".join(f"{n} {p:.2f} (+{p - budget:.2f})" for n, p in over)))
    for window, cells in results.items():
        bare, plan = cells[JOINT], cells[PLAN]
        out.append(
            f"{window}: the margin's cost (joint·q against joint): coverage {bare.mean('coverage_pct'):.0f} → "
            f"{plan.mean('coverage_pct'):.0f} %, violations {bare.mean('slo_violation_pct'):.2f} → "
            f"{plan.mean('slo_violation_pct'):.2f} %, mean cores {plan.mean('cores_mean') - bare.mean('cores_mean'):+.2f}, "
            f"effective accuracy {plan.mean('effective_accuracy') - bare.mean('effective_accuracy'):+.2f} points, "
            f"realised objective {plan.mean('objective') - bare.mean('objective'):+.3f}")
    if "infadapter-own" in results:
        c = results["infadapter-own"]["infadapter"]
        v, a, m = c.mean("slo_violation_pct"), c.mean("accuracy"), c.mean("cores_mean")
        misses = [f"violations by {v - 1:.2f} points" if v > 1 else "",
                  f"accuracy by {75.5 - a:.2f} points" if a < 75.5 else "",
                  f"mean cores by {m - 12.5:.2f}" if m > 12.5 else ""]
        out.append(f"infadapter-own: infadapter ≤ 1 % violations at ≥ 75.5 % accuracy with ≤ 12.5 mean cores: "
                   f"{v:.2f} % / {a:.2f} % / {m:.2f} — " + _verdict(not any(misses), ", ".join(x for x in misses if x)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace-file", help="the Twitter trace (twitter.tbz2); without it only the synthetic windows run")
    p.add_argument("--seeds", default="0", help="comma-separated arrival seeds (default 0)")
    p.add_argument("--quantile", type=float, default=0.9, help="the load quantile planned for (default 0.9)")
    p.add_argument("--windows", help="comma-separated subset of: " + ", ".join(w.name for w in WINDOWS))
    p.add_argument("--out", default="results/decision-quality", help="where the results folders go")
    p.add_argument("--jobs", type=int, default=1, help="windows simulated in parallel processes (default 1)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    chosen = [w for w in WINDOWS if args.windows is None or w.name in args.windows.split(",")]
    if args.trace_file is None:
        skipped = [w.name for w in chosen if w.twitter]
        chosen = [w for w in chosen if not w.twitter]
        if skipped:
            print(f"no --trace-file: skipping {', '.join(skipped)}", file=sys.stderr)
    total = sum(len(w.trace(args.trace_file)) for w in chosen) * len(seeds) * (3 + len(BASELINES))
    results: dict[str, dict[str, Cell]] = {}
    with tqdm(total=total, unit="sim-s", desc="decision quality", dynamic_ncols=True) as bar:
        if args.jobs <= 1:
            for w in chosen:
                bar.set_postfix_str(w.name)
                results[w.name] = run_window(w, args.trace_file, seeds, args.quantile, Path(args.out),
                                             lambda r: bar.update(len(r.frame["t"])))
        else:  # one process per window; the bar moves as windows finish
            with ProcessPoolExecutor(args.jobs) as pool:
                futures = {pool.submit(_run_named, w.name, args.trace_file, seeds, args.quantile, Path(args.out)): w
                           for w in chosen}
                for done in as_completed(futures):
                    bar.update(len(futures[done].trace(args.trace_file)) * len(seeds) * (3 + len(BASELINES)))
            results = {w.name: f.result() for f, w in sorted(futures.items(), key=lambda x: chosen.index(x[1]))}
    print(f"\nDecision quality, seeds {','.join(map(str, seeds))}; LSTM predictor; joint·q plans for the "
          f"{args.quantile:g} quantile of its recent errors\n")
    print(table(results))
    print("\nTargets (issue 11), judged on the mean over seeds:")
    for line in targets(results, {w.name: w.kind for w in chosen}):
        print("- " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
