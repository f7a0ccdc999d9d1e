"""The adaptive demo: a bursty load replayed through the live pipeline and through the simulator, side by side.

    result = asyncio.run(run_demo(DemoSettings(graph=Path("inference_graphs/resnet.yaml"), out=Path("results/demo"))))
    print("\\n".join(result.lines()))

What it does (`ipa demo`, `make demo`, and `benchmarks/fidelity.py` with a shorter trace):

1. **Workload**: a bursty trace (the synthetic `bursty` shape, or any preset or trace file, e.g. the Twitter
   trace's `bursty` window), compressed in time to `duration_s` seconds (per-block means: a 20-minute pattern
   played in 2.5 minutes) and scaled so its peak is `peak_rps`: by default the load the policy serves on half
   the pipeline's core budget (`default_peak_rps`), so the adapter has to switch variants and add cores during
   the burst and give them back after it. The budget is the graph's, but at most the machine's cores less one
   (`default_budget`): the router, the adapter and the load generator run on the same machine.
2. **Live run** (`adapter.live.measured.run_live`): the pipeline up on this machine (`ipa up`'s router, local cluster
   and adapter, a decision every `interval_s`), the trace replayed by `ipa load` in its own process (open loop,
   Poisson arrivals, the graph's SLO as each request's deadline), everything stopped afterwards.
3. **Simulations** on the very same arrivals (`adapter.sim.simulator.simulate`, what `ipa experiment` runs):
   `simulated`, the same policy and predictor deciding on the simulator's own observations (the simulator's
   prediction of the whole run), and `replayed`, the live run's decisions replayed at the same times (what the
   simulator says those configurations serve: its model of serving alone).
4. **Report** in `out` (`adapter.sim.report`: the per-second CSVs, `summary.csv`/`summary.md`, the plots,
   `meta.json`; `ipa report DIR` redraws it), plus `trace.txt` (the per-second load replayed), `requests.csv`
   and `requests.json` (`ipa load`'s rows and summary), `decisions.jsonl` (the adapter's records), and the
   fidelity of the simulator (`Fidelity`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from adapter.control.embedded import EmbeddedPipeline, UpSettings, build_models
from adapter.control.observation import Observation
from adapter.control.service import DecisionRecord
from adapter.decision.model import Decision
from adapter.decision.policies import POLICIES, decide
from adapter.decision.policy_types import PolicyConfig, PolicyContext, PolicySettings
from adapter.errors import UsageError
from adapter.forecast.predictors import PREDICTOR_NAMES
from adapter.live.measured import LiveRun, latencies_ms, measured_frame, run_live
from adapter.profiling.machine_profiles import DEFAULT_ROOT, Choice, plan_with_this_machine
from adapter.profiling.profile import load_graph_profiles
from adapter.sim.metrics import Frame, TickRecord
from adapter.sim.report import plot_frames, plot_tradeoff, write_frame
from adapter.sim.simulator import AdapterStep, SimResult, SimSettings, simulate
from adapter.sim.summary import Summary, summarize, summary_markdown, write_summary
from adapter.spec import GraphSpec, load_spec
from adapter.workloads.inputs import inputs_for
from adapter.workloads.loadgen import LoadPlan
from adapter.workloads.traces import Trace, workload_from_spec

RUNS = ("real", "simulated", "replayed")
"""The rows of the demo's table: the live run, the simulator's prediction of it, the live decisions simulated."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo replays through which pipeline, and where the report goes."""

    graph: Path = Path("inference_graphs/resnet.yaml")
    """the inference graph brought up (its profiles must exist)"""
    trace: str = "synthetic:bursty"
    """the workload: `synthetic:<shape>`, a preset (`bursty`, …; needs `trace_file`) or a trace file"""
    trace_file: Path | None = None
    """the Twitter trace the presets are cut from"""
    duration_s: int = 150
    """seconds of load replayed: the trace is compressed in time to this length"""
    peak_rps: float | None = None
    """the compressed trace's peak load (default: `default_peak_rps`)"""
    budget_cores: float | None = None
    """cores the pipeline may use (default: `default_budget`: the graph's, leaving one core of this machine to the
    router, the adapter and the load generator)"""
    policy: str = "joint"
    predictor: str = "reactive"
    interval_s: float = 5.0
    """seconds between decisions of the adapter (live and simulated)"""
    scale_down_intervals: int = 2
    """intervals a lower need must hold before resources are given back"""
    seed: int = 0
    """seed of the synthetic trace, the arrivals and the simulator"""
    out: Path = Path("results/demo")
    models: Path = Path("build/models")
    """where demo families are built (`<models>/<family>`)"""
    repositories: Mapping[str, Path] = field(default_factory=dict)
    """per stage, a built model repository to serve instead of the demo family"""
    home: Path | None = None
    """where the local cluster keeps its state (default `$IPA_HOME` or ./.ipa: `ipa status` sees the demo)"""
    sim: SimSettings = field(default_factory=SimSettings)
    profiles: Choice = "shipped"
    """which profiles the adapter and the simulator plan with: the graph's (`shipped`), measured on this machine
    (`here`), or the first a spot check on this machine agrees with, else measured here (`auto`, `ipa demo`'s
    default); this machine's are kept under `profiles_root` (`adapter.profiling.machine_profiles`)"""
    profiles_root: Path = DEFAULT_ROOT


# -------------------------------------------------------------------------------------------------- workload


def compress(trace: Trace, duration_s: int) -> Trace:
    """`trace` played in `duration_s` seconds: each new second is the mean load of its block of old seconds
    (the same shape and levels, faster). A trace no longer than `duration_s` is returned as it is."""
    if duration_s < 1:
        raise UsageError(f"duration must be >= 1 second, got {duration_s}")
    n = len(trace)
    if n <= duration_s:
        return trace
    edges = np.linspace(0, n, duration_s + 1).round().astype(np.int64)
    sums = np.add.reduceat(trace.rates, edges[:-1])
    return Trace(sums / np.diff(edges), f"{trace.name} in {duration_s} s")


def max_load_rps(spec: GraphSpec, policy: str, cores: float) -> float:
    """The largest load (rps) `policy` serves within its SLO on at most `cores` cores, per the profiles."""
    config = PolicyConfig.create(spec.model_copy(update={"budget_cores": cores}), load_graph_profiles(spec),
                                 PolicySettings(policy=policy))

    def fits(load: float) -> bool:
        decision, _ = decide(PolicyContext(now=0.0, predicted_load_rps=load), config)
        return decision.status == "optimal"

    lo, hi = 0.0, 1.0
    while fits(hi) and hi < 1e5:
        lo, hi = hi, hi * 2
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def default_budget(spec: GraphSpec, cpus: int | None) -> float:
    """The graph's core budget, but at most this machine's cores less one, on the `cpu_step` grid: the router,
    the adapter and the load generator run here too, and replicas that could take every core would starve them
    (then requests queue in front of the pipeline, where no deadline is enforced, and the run collapses)."""
    spare = max(1, (cpus or 1) - 1)
    budget = min(spec.budget_cores, float(spare))
    smallest = sum(min(st.cores) for st in spec.stages)  # one replica of every stage
    return max(budget - budget % spec.cpu_step, smallest)


def default_peak_rps(spec: GraphSpec, policy: str) -> float:
    """What the policy serves on half the pipeline's core budget (per the profiles): the burst makes the adapter
    switch variants and add cores, the quiet phases let it give them back."""
    return max(1.0, round(max_load_rps(spec, policy, spec.budget_cores / 2), 1))


def demo_trace(settings: DemoSettings, spec: GraphSpec) -> Trace:
    """The workload of the demo: the trace compressed to `duration_s`, scaled to its peak (see module doc)."""
    full = workload_from_spec(settings.trace, trace_file=settings.trace_file, seed=settings.seed)
    trace = compress(full, settings.duration_s)
    if trace.peak_rps <= 0:
        raise UsageError(f"{trace.name}: no load to replay")
    peak = settings.peak_rps if settings.peak_rps is not None else default_peak_rps(spec, settings.policy)
    return Trace(trace.rates * (peak / trace.peak_rps), f"{trace.name}, peak {peak:g} rps")


def input_resolution(repository: Path) -> int:
    """The image side of the first model input in a built repository (what the requests must carry)."""
    for path in sorted(Path(repository).rglob("model-settings.json")):
        inputs = json.loads(path.read_text()).get("inputs") or []
        if inputs and len(inputs[0].get("shape", [])) == 4:
            return int(inputs[0]["shape"][-1])
    raise UsageError(f"{repository}: no model with an image input [-1, 3, R, R] (model-settings.json `inputs`)")


# --------------------------------------------------------------------------------------------- simulations


def replay(ticks: list[TickRecord], interval_s: float) -> AdapterStep:
    """An adapter step that answers, at simulated time `now`, with the live decision in force then: the last one
    taken before `now + interval_s / 2` (a live decision due at `now` is taken a few ms around it)."""
    times = np.array([t.t for t in ticks])

    def step(now: float, observation: Observation | None) -> tuple[Decision, float]:
        i = max(0, int(np.searchsorted(times, now + interval_s / 2, side="right")) - 1)
        return ticks[i].decision, ticks[i].predicted

    step.__name__ = "replayed"
    return step


def simulations(spec: GraphSpec, trace: Trace, plan: LoadPlan, run: LiveRun, settings: DemoSettings,
                policy: PolicySettings) -> tuple[SimResult, SimResult]:
    """The simulator on the live run's arrivals: its own decisions (`simulated`) with the live adapter's `policy`
    settings, the live decisions (`replayed`).

    Before the load the live adapter saw `idle_s` seconds of nothing: the simulated one is given that history
    too, so both start from the same first decision."""
    history = np.zeros(min(int(run.idle_s), 900))
    own = simulate(spec, trace, policy, predictor=settings.predictor, history=history, name="simulated",
                   settings=settings.sim, seed=settings.seed, arrivals=plan.times_s)
    replayed = simulate(spec, trace, replay(run.ticks, spec.interval_s), name="replayed", settings=settings.sim,
                        seed=settings.seed, arrivals=plan.times_s)
    return own, replayed


# ---------------------------------------------------------------------------------------------- fidelity


@dataclass(frozen=True)
class Fidelity:
    """How far the simulator's prediction (`simulated`) is from the live run (`real`)."""

    p99_real_ms: float
    p99_sim_ms: float
    drop_real_pct: float
    drop_sim_pct: float
    cores_real: float
    """mean cores held during the run"""
    cores_sim: float
    decided_equal_pct: float
    """share of the adapter's decisions (same interval, live vs simulated) that decided the same cores"""
    p99_replayed_ms: float
    """p99 the simulator gives the live decisions (its model of serving alone)"""

    @property
    def p99_error_pct(self) -> float:
        return 100.0 * (self.p99_sim_ms - self.p99_real_ms) / self.p99_real_ms if self.p99_real_ms else math.nan

    @property
    def p99_replayed_error_pct(self) -> float:
        return 100.0 * (self.p99_replayed_ms - self.p99_real_ms) / self.p99_real_ms if self.p99_real_ms else math.nan

    def lines(self) -> list[str]:
        def ok(good: bool) -> str:
            return "ok" if good else "MISSED"

        return [
            f"p99 latency     real {self.p99_real_ms:7.0f} ms   simulated {self.p99_sim_ms:7.0f} ms   "
            f"{self.p99_error_pct:+6.1f} %   (target within 20 %: {ok(abs(self.p99_error_pct) <= 20)}); "
            f"live decisions simulated: {self.p99_replayed_ms:.0f} ms ({self.p99_replayed_error_pct:+.1f} %)",
            f"drops           real {self.drop_real_pct:7.2f} %    simulated {self.drop_sim_pct:7.2f} %    "
            f"{self.drop_sim_pct - self.drop_real_pct:+6.2f} points",
            f"cores (mean)    real {self.cores_real:7.2f}      simulated {self.cores_sim:7.2f}      "
            f"{self.cores_sim - self.cores_real:+6.2f}; same cores decided in {self.decided_equal_pct:.0f} % of "
            f"the intervals (target equal: {ok(self.decided_equal_pct >= 99.9)})",
        ]


def decided_cores(ticks: list[TickRecord], interval_s: float, duration_s: float) -> np.ndarray:
    """The cores decided in force at each interval `k · interval_s` of the load (k = 0, 1, …)."""
    times = np.array([t.t for t in ticks])
    at = np.arange(0.0, duration_s, interval_s)
    idx = np.clip(np.searchsorted(times, at + interval_s / 2, side="right") - 1, 0, len(ticks) - 1)
    return np.array([ticks[i].decision.cores for i in idx])


def fidelity(summaries: Mapping[str, Summary], run: LiveRun, own: SimResult, interval_s: float) -> Fidelity:
    real, sim, rep = summaries["real"], summaries["simulated"], summaries["replayed"]
    duration = run.plan.duration_s
    live, simulated = decided_cores(run.ticks, interval_s, duration), decided_cores(own.ticks, interval_s, duration)
    return Fidelity(
        p99_real_ms=real.p99_ms, p99_sim_ms=sim.p99_ms, drop_real_pct=real.drop_pct, drop_sim_pct=sim.drop_pct,
        cores_real=real.cores_mean, cores_sim=sim.cores_mean,
        decided_equal_pct=100.0 * float(np.mean(np.isclose(live, simulated))) if len(live) else math.nan,
        p99_replayed_ms=rep.p99_ms)


# ---------------------------------------------------------------------------------------------------- demo


@dataclass
class DemoResult:
    spec: GraphSpec
    trace: Trace
    run: LiveRun
    frames: dict[str, Frame]
    summaries: list[Summary]
    fidelity: Fidelity
    out: Path
    title: str

    def lines(self) -> list[str]:
        """The printed summary: what ran, where the report is, the table, the simulator's fidelity."""
        decisions = self.run.decisions
        moved = sum(1 for r in decisions if r.trigger == "interval" and r.outcome == "applied")
        variants = sorted({g.variant for r in decisions for s in r.decision.stages for g in s.replicas if g.count})
        table = summary_markdown(self.summaries).rstrip("\n").splitlines()
        return [
            f"{self.title}: {len(self.run.plan)} requests in {self.run.plan.duration_s:g} s, "
            f"{len(decisions)} decisions ({moved} changed the deployment; variants used: {', '.join(variants)}); "
            f"budget {self.spec.budget_cores:g} cores; CPU limits: {self.run.cpu_limit}",
            "",
            *table,
            "",
            "real: measured on this machine; simulated: the simulator's prediction (same arrivals, policy and "
            "predictor); replayed: the live decisions, simulated.",
            *self.fidelity.lines(),
            "",
            f"report: {self.out}/ (overview.png, summary.md, per-second CSVs, trace.txt, requests.csv, "
            "decisions.jsonl)",
        ]


def check(settings: DemoSettings) -> GraphSpec:
    """The graph to bring up, with the demo's interval; `UsageError` for settings that cannot run."""
    if settings.policy not in POLICIES:
        raise UsageError(f"unknown policy {settings.policy!r}; one of {', '.join(POLICIES)}")
    if settings.predictor not in PREDICTOR_NAMES or settings.predictor == "oracle":
        raise UsageError(f"predictor {settings.predictor!r}: one of reactive, ewma, lstm (oracle needs the future)")
    if not settings.interval_s > 0:
        raise UsageError(f"interval must be > 0 seconds, got {settings.interval_s}")
    if settings.peak_rps is not None and not settings.peak_rps > 0:
        raise UsageError(f"peak load must be > 0 rps, got {settings.peak_rps}")
    if settings.budget_cores is not None and not settings.budget_cores > 0:
        raise UsageError(f"budget must be > 0 cores, got {settings.budget_cores}")
    spec = load_spec(settings.graph, require_profiles=True)
    budget = settings.budget_cores if settings.budget_cores is not None else default_budget(spec, os.cpu_count())
    smallest = sum(min(st.cores) for st in spec.stages)
    if budget < smallest - 1e-9:
        raise UsageError(f"a budget of {budget:g} cores is below the {smallest:g} one replica of every stage needs")
    return spec.model_copy(update={"interval_s": settings.interval_s, "budget_cores": budget})


async def run_demo(
    settings: DemoSettings,
    *,
    progress: Callable[[str], None] = print,
    on_record: Callable[[DecisionRecord], None] | None = None,
    on_up: Callable[[EmbeddedPipeline], None] | None = None,
) -> DemoResult:
    """The whole demo (module doc); `progress` gets one line per step, `on_record` every live decision."""
    spec = await this_machines_profiles(check(settings), settings, progress)
    trace = demo_trace(settings, spec)
    up = UpSettings(port=0, adapter_port=0, policy=settings.policy, predictor=settings.predictor,
                    interval_s=settings.interval_s, scale_down_intervals=settings.scale_down_intervals,
                    models=settings.models, repositories=settings.repositories, home=settings.home,
                    initial_load_rps=0.0)
    repos = await asyncio.to_thread(build_models, spec, up, progress)
    up = replace(up, repositories=repos)
    progress(f"ipa demo: {spec.name} up with policy {settings.policy}, predictor {settings.predictor}, a decision "
             f"every {settings.interval_s:g} s, {spec.budget_cores:g} cores at most; replaying {trace.name} ({trace.mean_rps:.1f} rps on average, "
             f"{trace.peak_rps:.1f} at the peak) with ipa load ...")
    inputs, question = inputs_for(spec)
    resolution = input_resolution(repos[spec.stages[0].name]) if inputs == "image" else 64
    run = await run_live(spec, trace, up, settings.out, resolution=resolution, inputs=inputs, question=question,
                         seed=settings.seed, progress=progress, on_record=on_record, on_up=on_up)
    plan = run.plan

    progress("ipa demo: simulating the same arrivals ...")
    # The live adapter held lower needs for the demo's `scale_down_intervals` (2); simulated with the policy's
    # default (3) instead, every scale-down came an interval later: re-simulated with 2, three runs' simulated
    # mean cores fell by 0.04-0.05, most of the 0.03-0.12 they had been above the live ones.
    policy = up.policy_settings()
    own, replayed = simulations(spec, trace, plan, run, settings, policy)
    frames = {"real": measured_frame(spec, run), "simulated": own.frame, "replayed": replayed.frame}
    latencies = {"real": latencies_ms(run), "simulated": own.latency_ms, "replayed": replayed.latency_ms}
    summaries = [summarize(name, frames[name], spec, latencies[name]) for name in RUNS]
    title = f"{spec.name}: live vs simulated, {settings.policy}/{settings.predictor}"
    fid = fidelity({s.policy: s for s in summaries}, run, own, spec.interval_s)
    write_report(settings.out, spec, trace, run, frames, summaries, title, settings, fid, policy)
    return DemoResult(spec, trace, run, frames, summaries, fid, settings.out, title)


async def this_machines_profiles(spec: GraphSpec, settings: DemoSettings, progress: Callable[[str], None]) -> GraphSpec:
    """`spec` planning with the profiles `settings.profiles` asks for (`adapter.profiling.machine_profiles`)."""
    return await plan_with_this_machine(spec, settings.profiles, root=settings.profiles_root,
                                        models_dir=settings.models, say=lambda m: progress(f"ipa demo: {m}"))


def reproduce(settings: DemoSettings, spec: GraphSpec, trace: Trace) -> str:
    """The `ipa demo` command that replays the same arrivals (the peak as it was, computed or given)."""
    argv = ["ipa", "demo", "--graph", str(settings.graph), "--trace", settings.trace]
    if settings.trace_file is not None:
        argv += ["--trace-file", str(settings.trace_file)]
    argv += ["--duration", str(settings.duration_s), "--peak-rps", f"{trace.peak_rps:g}",
             "--budget-cores", f"{spec.budget_cores:g}", "--policy", settings.policy,
             "--predictor", settings.predictor, "--interval", f"{settings.interval_s:g}",
             "--scale-down-after", str(settings.scale_down_intervals), "--seed", str(settings.seed),
             "--out", str(settings.out), "--profiles", settings.profiles]
    return shlex.join(argv)


def write_report(out: Path, spec: GraphSpec, trace: Trace, run: LiveRun, frames: Mapping[str, Frame],
                 summaries: list[Summary], title: str, settings: DemoSettings, fid: Fidelity,
                 policy: PolicySettings) -> None:
    """The results folder `ipa experiment` writes (so `ipa report` redraws it), with the live run's records."""
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        write_frame(out / f"{name}.csv", frame)
    notes = ("real: measured on this machine (latency from the client, cores held by the replicas); simulated: "
             "the simulator with the same arrivals, policy and predictor; replayed: the simulator running the live "
             f"decisions at the same times.\n\nReproduce: `{reproduce(settings, spec, trace)}`")
    write_summary(out, summaries, title, notes)
    plot_frames(frames, out, slo_ms=spec.slo_ms, title=title)
    plot_tradeoff(summaries, out, title)
    with open(out / "decisions.jsonl", "w", encoding="utf-8") as f:
        for r in run.decisions:
            f.write(r.model_dump_json() + "\n")
    meta = {
        "title": title, "notes": notes, "spec": str(spec.source) if spec.source else spec.name,
        "trace": trace.name, "duration_s": len(trace), "requests": len(run.plan), "policies": list(frames),
        "policy": settings.policy, "predictor": settings.predictor, "seed": settings.seed, "arrivals": "poisson",
        "policy_settings": policy.model_dump(),  # the live adapter's and the simulated run's
        "slo_ms": spec.slo_ms, "interval_s": spec.interval_s, "budget_cores": spec.budget_cores, "objective": spec.objective.model_dump(),
        "idle_s": run.idle_s, "cpu_limit": run.cpu_limit, "settings": asdict(settings.sim),
        "fidelity": {**asdict(fid), "p99_error_pct": fid.p99_error_pct},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
