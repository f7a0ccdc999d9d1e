"""IPA's evaluation on all five pipelines: every pipeline on IPA's four Twitter windows, five policies each.

    .venv/bin/python benchmarks/pipelines.py [--trace-file ../shared/data/traces/twitter.tbz2]
        [--out docs/results] [--pipelines video-monitoring,audio-qa,...] [--windows bursty,...] [--table-only]

For every pipeline (`inference_graphs/<name>.yaml`) and window (bursty, steady-low, steady-high, fluctuating:
1,200 s each, divided by 8 as in IPA) it runs `ipa experiment` with the policies joint, ipa, fa2-low, fa2-high
and rim (LSTM predictor, seed 0) into `<out>/<pipeline>/<window>/` (summary, plots, meta.json with the command),
then prints the five-pipeline table: per pipeline and window, each policy's accuracy, mean cores and share of
requests that missed the SLO. `--table-only` prints the table from the folders already there.

Load: the video pipeline gets the windows as IPA divides them (its cheapest configuration carries the bursty
window's burst on the 2-core budget). The speech and text pipelines are 10-100x slower per request, so each
gets the windows scaled by its own capacity relative to the video pipeline's: the largest load its cheapest
variants carry on the budget (`fa2-low` still finds an optimal decision), divided by the video pipeline's. Every
window then asks as much of each pipeline as it asks of the video one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from adapter.cli import main as ipa
from adapter.decision.policies import decide
from adapter.decision.policy_types import PolicyConfig, PolicyContext
from adapter.sim.summary import Summary, read_summary
from adapter.spec import GraphSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
TWITTER = next((p for p in (ROOT.parent / "shared" / "data" / "traces" / "twitter.tbz2",
                            Path("/work/shared/data/traces/twitter.tbz2")) if p.exists()),
               ROOT.parent / "shared" / "data" / "traces" / "twitter.tbz2")
PIPELINES = ("video-monitoring", "audio-qa", "audio-sent", "sum-qa", "nlp")
WINDOWS = ("bursty", "steady-low", "steady-high", "fluctuating")
POLICIES = ("joint", "ipa", "fa2-low", "fa2-high", "rim")
REFERENCE = "video-monitoring"
EXTRA_POLICIES = {("video-monitoring", "bursty"): ("vpa", "model-switching", "static")}
"""IPA's claim (video, bursty window) is also compared with the Kubernetes recommender's rule, Model-Switching
and the static deployment, as docs/results/README.md discusses."""


def capacity_rps(spec: GraphSpec, hi: float = 1000.0) -> float:
    """The largest load (rps, to 1 %) at which `fa2-low` (the cheapest variants, scaled out) still finds an
    optimal decision within the budget."""
    cfg = PolicyConfig.create(spec).with_settings(policy="fa2-low")

    def fits(load: float) -> bool:
        d, _ = decide(PolicyContext(now=0.0, predicted_load_rps=load), cfg)
        return d.status == "optimal"

    lo = 0.0
    while hi - lo > 0.01 * max(hi, 1e-3):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def scale_of(name: str) -> float:
    """The load scale of a pipeline (see the module doc), to two significant digits."""
    if name == REFERENCE:
        return 1.0
    ratio = capacity_rps(_spec(name)) / capacity_rps(_spec(REFERENCE))
    return float(f"{ratio:.2g}")


def _spec(name: str) -> GraphSpec:
    return load_spec(ROOT / "inference_graphs" / f"{name}.yaml", require_profiles=True)


def run(name: str, window: str, out: Path, trace_file: Path, scale: float) -> None:
    """`ipa experiment` for one pipeline and window (run from the repository, so the command it records under
    the table is the one to type there)."""
    how = ("as IPA divides it" if scale == 1.0 else
           "this pipeline's capacity on its cheapest variants relative to the video pipeline's (benchmarks/pipelines.py)")
    notes = (f"IPA's {window} window of the Twitter trace (1,200 s, divided by 8 as in IPA) scaled by {scale:g}: "
             f"{how}. Profiles measured on this 2-core machine; adapter every interval_s with the LSTM predictor "
             "(120 s of the trace before the window as its history); Poisson arrivals, seed 0.")
    argv = ["experiment", f"inference_graphs/{name}.yaml", "--trace", window, "--trace-file", os.path.relpath(trace_file, ROOT),
            "--scale", f"{scale:g}", "--policies", ",".join(POLICIES + EXTRA_POLICIES.get((name, window), ())),
            "--predictor", "lstm",
            "--out", str(out / name / window), "--quiet", "--title", f"{name} on IPA's {window} window",
            "--notes", notes]
    code = ipa(argv)
    if code != 0:
        raise SystemExit(f"ipa experiment {name} {window} failed ({code})")


def table(out: Path, pipelines: list[str], windows: list[str]) -> str:
    """The five-pipeline table: one row per pipeline and window, `accuracy % · cores · SLO violations %` per
    policy."""
    lines = ["| pipeline | window | scale | " + " | ".join(POLICIES) + " |",
             "|---|---|---:|" + "---:|" * len(POLICIES)]
    for name in pipelines:
        for window in windows:
            path = out / name / window / "summary.csv"
            if not path.exists():
                continue
            rows: dict[str, Summary] = {s.policy: s for s in read_summary(path)}
            scale = _scale_in(out / name / window)
            cells = [f"{rows[p].accuracy:.1f} · {rows[p].cores_mean:.2f} · {rows[p].slo_violation_pct:.1f}"
                     if p in rows else "" for p in POLICIES]
            lines.append(f"| {name} | {window} | {scale} | " + " | ".join(cells) + " |")
    lines.append("cells: accuracy % · mean cores · SLO violations % (simulated, 1,200 s per window)")
    return "\n".join(lines)


def _scale_in(folder: Path) -> str:
    try:
        notes = json.loads((folder / "meta.json").read_text())["notes"]
        return notes.split("scaled by ", 1)[1].split(":", 1)[0]
    except (OSError, KeyError, IndexError, ValueError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace-file", type=Path, default=TWITTER)
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="relative to the repository")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--windows", default=",".join(WINDOWS))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    os.chdir(ROOT)
    pipelines = [p for p in args.pipelines.split(",") if p]
    windows = [w for w in args.windows.split(",") if w]
    if not args.table_only:
        if not args.trace_file.exists():
            sys.exit(f"{args.trace_file}: the Twitter trace is not here (--trace-file)")
        for name in pipelines:
            scale = scale_of(name)
            if name != REFERENCE:
                print(f"{name}: capacity {capacity_rps(_spec(name)):.2f} rps on its cheapest variants, "
                      f"video {capacity_rps(_spec(REFERENCE)):.2f}: load scale {scale:g}", flush=True)
            for window in windows:
                run(name, window, args.out, args.trace_file, scale)
                print(f"{name} {window}: done", flush=True)
    print(table(args.out, pipelines, windows))


if __name__ == "__main__":
    main()
