"""Experiments: several policies replayed on the very same requests, compared in one results folder.

    run_experiment(spec, trace, ["joint", "ipa", "fa2-low"], out_dir, predictor="lstm", seed=0)

Every policy sees the same arrival times (drawn once from the trace with `seed`) and the same per-request
SLOs, and the simulator is seeded the same way for each, so differences between rows of the summary come from
the policies alone. The folder gets what `adapter.sim.report` describes: a per-second CSV per policy, the summary
table (CSV and Markdown), the plots and `meta.json` saying what was run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from adapter.errors import UsageError
from adapter.forecast.predictors import PREDICTOR_NAMES
from adapter.profiling.profile import load_graph_profiles
from adapter.sim.report import plot_frames, plot_tradeoff, write_frame
from adapter.sim.simulator import SimResult, SimSettings, known_policies, simulate
from adapter.sim.summary import Summary, summarize, write_summary
from adapter.spec import GraphSpec
from adapter.workloads.traces import Trace, arrival_times


def check_policies(names: Sequence[str]) -> list[str]:
    """The policy names in order, each once; `UsageError` naming the first unknown one."""
    known = known_policies()
    out: list[str] = []
    for n in names:
        n = n.strip()
        if not n:
            continue
        if n not in known:
            raise UsageError(f"unknown policy {n!r}; known: {', '.join(known)}")
        if n not in out:
            out.append(n)
    if not out:
        raise UsageError(f"no policy given; known: {', '.join(known)}")
    return out


def run_experiment(
    spec: GraphSpec,
    trace: Trace,
    policies: Sequence[str],
    out_dir: str | Path,
    *,
    predictor: str = "reactive",
    seed: int = 0,
    settings: SimSettings | None = None,
    arrival_kind: str = "poisson",
    title: str | None = None,
    notes: str = "",
    progress: bool = True,
    on_result: Callable[[SimResult], None] | None = None,
    budgets: Callable[[np.ndarray], np.ndarray] | None = None,
    history: np.ndarray | None = None,
) -> list[Summary]:
    """Run every policy on `trace`, write the results folder, return the summaries in policy order.

    `budgets(arrival_times) -> ms`: per-request SLOs (e.g. `DynamicSLO(...).deadlines_ms`, Sponge's dynamic SLOs);
    default the graph's `slo_ms` for every request. `history`: the per-second load before the trace (what the
    predictors see first; see `simulate`).
    """
    names = check_policies(policies)
    if predictor not in PREDICTOR_NAMES:
        raise UsageError(f"unknown predictor {predictor!r}; known: {', '.join(PREDICTOR_NAMES)}")
    if len(trace) == 0:
        raise UsageError(f"trace {trace.name} is empty: nothing to replay")
    if float(trace.rates.sum()) <= 0:
        raise UsageError(f"trace {trace.name} has no requests: every second is 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profiles = load_graph_profiles(spec)
    settings = settings or SimSettings()
    arrivals = arrival_times(trace, arrival_kind, seed=seed)
    budgets_ms = budgets(arrivals) if budgets is not None else None
    title = title or f"{spec.name} on {trace.name}"

    bar = _progress(len(trace) * len(names), progress)
    summaries: list[Summary] = []
    frames = {}
    try:
        for name in names:
            if bar is not None:
                bar.set_postfix_str(name)
            done = [0.0]

            def advance(now: float, done: list[float] = done) -> None:
                if bar is not None:
                    bar.update(now - done[0])
                done[0] = now

            result = simulate(spec, trace, name, predictor=predictor, profiles=profiles, settings=settings, seed=seed,
                              arrivals=arrivals, budgets_ms=budgets_ms, history=history,
                              on_tick=advance)
            advance(float(len(trace)))
            write_frame(out / f"{name}.csv", result.frame)
            frames[name] = result.frame
            summaries.append(summarize(name, result.frame, spec, result.latency_ms))
            if on_result is not None:
                on_result(result)
    finally:
        if bar is not None:
            bar.close()

    write_summary(out, summaries, title, notes)
    plot_frames(frames, out, slo_ms=spec.slo_ms, title=title)
    plot_tradeoff(summaries, out, title)
    meta = {
        "title": title,
        "notes": notes,
        "spec": str(spec.source) if spec.source else spec.name,
        "trace": trace.name,
        "duration_s": len(trace),
        "requests": int(len(arrivals)),
        "policies": names,
        "predictor": predictor,
        "seed": seed,
        "arrivals": arrival_kind,
        "dynamic_slo": budgets is not None,
        "history_s": 0 if history is None else len(history),
        "slo_ms": spec.slo_ms,
        "interval_s": spec.interval_s,
        "objective": spec.objective.model_dump(),
        "settings": asdict(settings),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return summaries


def _progress(total: float, enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="sim-s", desc="simulating", leave=False, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim-s [{elapsed}<{remaining}{postfix}]")
