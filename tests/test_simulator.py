"""The simulator against known answers: service-time fits, an M/D/1 queue, reconfiguration costs, routing,
drops, determinism, and a seeded run compared with its checked-in summary."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from adapter.control.monitor import Observation
from adapter.decision.model import Decision, ObjectiveTerms, ReplicaGroup, StageDecision
from adapter.decision.stage_latency import stage_p99_ms
from adapter.profiling.profile import Profile, load_graph_profiles
from adapter.sim.cluster import Replica, ReplicaConfig, ServiceTable
from adapter.sim.metrics import compact
from adapter.sim.service import TAIL_CAP, NormalStream, ServiceTime
from adapter.sim.simulator import SimSettings, simulate
from adapter.sim.summary import summarize
from adapter.spec import GraphSpec, load_spec, parse_spec
from adapter.workloads.traces import arrival_times, synthetic_trace

HEADER = "stage,variant,batch,cores,p50_ms,p99_ms,mean_ms,throughput_rps,samples,machine\n"


def constant_profile(points: dict[str, float], batches: Sequence[int] = (1,)) -> Profile:
    """A test profile: each variant takes a constant `ms` per batch (batch b: b·ms), on 1 core."""
    rows = [
        f"s,{v},{b},1,{ms * b},{ms * b},{ms * b},{1000 / ms},100,test" for v, ms in points.items() for b in batches
    ]
    return Profile.parse(HEADER + "\n".join(rows) + "\n")


def graph(stages: list[dict], slo_ms: float = 1e6, interval_s: float = 10) -> GraphSpec:
    return parse_spec({
        "name": "t", "slo_ms": slo_ms, "budget_cores": 16, "interval_s": interval_s,
        "stages": [{"batch_sizes": [1], "cores": [1], "max_batch_time_ms": 0, "profile": "x.csv", **s} for s in stages],
    })


def decision(*stages: tuple[str, list[ReplicaGroup]]) -> Decision:
    return Decision(
        status="optimal", objective=ObjectiveTerms(value=0, accuracy=0, cores=0, batch=0), solve_time_ms=0,
        load_rps=0, predicted_latency_ms=0,
        stages=[StageDecision(name=n, replicas=groups) for n, groups in stages],
    )


def fixed(schedule: dict[float, Decision]):
    """An adapter step that applies `schedule[t]` from time t on (a plan decided in advance)."""
    times = sorted(schedule)

    def step(now: float, observed: Observation | None) -> tuple[Decision, float]:
        current = [t for t in times if t <= now + 1e-9][-1]
        return schedule[current], 0.0

    return step


ONE = [{"name": "s", "variants": [{"name": "m", "accuracy": 70}, {"name": "f", "accuracy": 50}]}]


# -------------------------------------------------------------------------------------------- service times


@pytest.mark.parametrize(
    "p50,p99,mean,exact_mean",
    [(80, 120, 82, True), (80, 120, 83, True), (80, 200, 100, False), (60, 100, 55, False), (50, 50, 50, True)],
)
def test_service_time_draws_match_the_profile_point(p50: float, p99: float, mean: float, exact_mean: bool) -> None:
    fit = ServiceTime.fit(p50, p99, mean)
    z = NormalStream(np.random.default_rng(3))
    x = np.array([fit.draw(z.next()) for _ in range(200_000)]) * 1000
    assert np.percentile(x, 50) == pytest.approx(p50, rel=0.01)
    assert np.percentile(x, 99) == pytest.approx(p99, rel=0.03)
    assert x.mean() == pytest.approx(fit.mean * 1000, rel=0.01)  # the fit says what its draws average
    if exact_mean:
        assert fit.mean * 1000 == pytest.approx(mean, rel=1e-6)
    else:  # more mean than a bounded tail carries (or a mean below the median): the median and p99 win
        assert abs(fit.mean * 1000 - mean) / mean < 0.15
    assert fit.tail * 1000 <= TAIL_CAP * (p99 - p50) + 1e-9  # no outlier pause beyond the cap
    assert x.min() > 0


def test_replica_judges_deadlines_with_the_runtime_estimator() -> None:
    """A replica's estimate starts from the profile's batch period, measured at batch 1 and at its batch size
    (as the runtime's session switch does), and then follows the batches it serves."""
    prof = Profile.parse(HEADER + "s,m,1,1,10,10,10,100,100,test\ns,m,4,1,30,30,30,200,100,test\n"
                         "s,m,8,1,50,50,50,200,100,test\n")
    cfg = ReplicaConfig("m", 0.7, 8, 1.0, 0.0)
    table = ServiceTable(prof, "m", 1.0)
    replica = Replica(0, 0, cfg, table, 16, "drop", lambda: 0.0, 0.2, 2.0)
    assert replica.estimate(1) == pytest.approx(1 / 100)  # period of batch 1: 1 / throughput
    assert replica.estimate(8) == pytest.approx(8 / 200)
    assert 1 / 100 < replica.estimate(4) < 8 / 200  # interpolated between the measured sizes
    for _ in range(20):
        replica.observe(1, 0.05)  # a slower machine than profiled
    assert replica.estimate(1) > 0.04
    replica.set_config(ReplicaConfig("m", 0.7, 8, 1.0, 0.0), table)  # same session: what was learned stays
    assert replica.estimate(1) > 0.04
    replica.set_config(ReplicaConfig("m", 0.7, 8, 2.0, 0.0), ServiceTable(prof, "m", 2.0))  # a new session
    assert replica.estimate(1) < 0.04


# ---------------------------------------------------------------------------------------- queueing theory


def test_single_replica_matches_pollaczek_khinchine() -> None:
    """Poisson arrivals, one replica with a constant 50 ms service, batch 1: M/D/1, mean wait ρS / 2(1 − ρ)."""
    service_s, rate = 0.05, 12.0
    spec = graph([{"name": "s", "variants": [{"name": "m", "accuracy": 70}]}])
    step = fixed({0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=1)]))})
    result = simulate(spec, np.full(3000, rate), step, profiles={"s": constant_profile({"m": 50.0})}, seed=1)
    rho = rate * service_s
    expected_wait = rho * service_s / (2 * (1 - rho))
    waits = result.latency_ms / 1000 - service_s
    assert sum(result.drops.values()) == 0
    assert np.all(waits >= -1e-9)
    # the mean of ~36,000 autocorrelated waits: within 10 % (the standard error here is about 3 %)
    assert waits.mean() == pytest.approx(expected_wait, rel=0.10)
    assert result.frame["cores"].mean() == pytest.approx(1.0)
    assert result.frame["served"].sum() == len(result.latency_ms)


def test_two_replicas_split_the_load_and_stages_chain() -> None:
    """Two stages; the second splits its load 1:3 between a 70 % and a 50 % variant: the product shows it."""
    spec = graph([
        {"name": "a", "variants": [{"name": "m", "accuracy": 90}]},
        {"name": "b", "variants": [{"name": "m", "accuracy": 70}, {"name": "f", "accuracy": 50}]},
    ])
    step = fixed({0: decision(
        ("a", [ReplicaGroup(variant="m", batch=1, cores=1, count=2)]),
        ("b", [ReplicaGroup(variant="m", batch=1, cores=1, count=1, load_share=0.25),
               ReplicaGroup(variant="f", batch=1, cores=1, count=1, load_share=0.75)]),
    )})
    prof = constant_profile({"m": 20.0, "f": 20.0})
    result = simulate(spec, np.full(600, 10.0), step, profiles={"a": prof, "b": prof}, seed=2)
    frame = result.frame
    mean_acc = float(np.sum(frame["accuracy"] * frame["served"]) / frame["served"].sum())
    assert mean_acc == pytest.approx(90 * (0.25 * 70 + 0.75 * 50) / 100, abs=0.5)
    assert frame["cores"].mean() == pytest.approx(4.0)
    assert result.latency_ms.min() >= 40.0 - 1e-6  # two stages of 20 ms each


# ------------------------------------------------------------------------------------------------- drops


def test_too_little_capacity_drops_requests() -> None:
    """One replica of 50 ms (20 rps at most) under 30 rps with a 300 ms SLO: about a third is dropped."""
    spec = graph(ONE, slo_ms=300)
    step = fixed({0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=1)]))})
    result = simulate(spec, np.full(300, 30.0), step, profiles={"s": constant_profile({"m": 50.0, "f": 10.0})},
                      seed=3)
    s = summarize("static", result.frame, spec, result.latency_ms)
    assert 25 < s.drop_pct < 40
    assert result.drops["deadline"] > 0
    assert s.slo_violation_pct >= s.drop_pct
    assert s.p99_ms <= 300 + 1e-6  # the deadline-aware batcher drops rather than answer late (constant times)


def test_enough_capacity_drops_nothing() -> None:
    spec = graph(ONE, slo_ms=300)
    step = fixed({0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=3)]))})
    result = simulate(spec, np.full(300, 30.0), step, profiles={"s": constant_profile({"m": 50.0, "f": 10.0})},
                      seed=3)
    assert sum(result.drops.values()) == 0
    assert result.frame["slo_violations"].sum() == 0


# ------------------------------------------------------------------------------------- reconfiguration costs


def _scale_up(cold_start_s: float):
    spec = graph(ONE, slo_ms=300)
    step = fixed({
        0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=1)])),
        10: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=3)])),
    })
    rates = np.concatenate([np.full(10, 10.0), np.full(30, 40.0)])
    return simulate(spec, rates, step, profiles={"s": constant_profile({"m": 50.0, "f": 10.0})}, seed=4,
                    settings=SimSettings(cold_start_s=cold_start_s))


def test_new_replicas_serve_only_after_their_cold_start() -> None:
    instant, slow = _scale_up(0.0), _scale_up(5.0)
    assert instant.frame["dropped"][10:40].sum() == 0
    assert slow.frame["dropped"][10:14].sum() > 0  # one replica alone under 40 rps until 15 s
    assert slow.frame["dropped"][17:40].sum() == 0
    # the cores are held from the decision on, serving or not
    assert slow.frame["cores"][11] == pytest.approx(3.0)


def test_an_in_place_switch_takes_effect_after_its_delay() -> None:
    spec = graph(ONE)
    step = fixed({
        0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=1)])),
        10: decision(("s", [ReplicaGroup(variant="f", batch=1, cores=1, count=1)])),
    })
    result = simulate(spec, np.full(20, 5.0), step, profiles={"s": constant_profile({"m": 20.0, "f": 10.0})},
                      seed=5, settings=SimSettings(switch_delay_s=3.0))
    acc = result.frame["accuracy"]
    assert np.all(acc[:12] == pytest.approx(70.0))
    assert np.all(acc[14:] == pytest.approx(50.0))
    assert result.frame["cores"][5] == pytest.approx(1.0)  # in place: no second replica at any time


def test_a_batch_change_during_a_switch_does_not_cancel_it() -> None:
    spec = graph([{**ONE[0], "batch_sizes": [1, 2]}], interval_s=1)
    step = fixed({
        0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=1)])),
        10: decision(("s", [ReplicaGroup(variant="f", batch=1, cores=1, count=1)])),
        11: decision(("s", [ReplicaGroup(variant="f", batch=2, cores=1, count=1)])),
    })
    prof = constant_profile({"m": 20.0, "f": 10.0}, batches=(1, 2))
    result = simulate(spec, np.full(20, 5.0), step, profiles={"s": prof}, seed=5,
                      settings=SimSettings(switch_delay_s=3.0))
    acc = result.frame["accuracy"]
    assert np.all(acc[:12] == pytest.approx(70.0))
    assert np.all(acc[14:] == pytest.approx(50.0))


def test_without_in_place_changes_a_replacement_cold_starts_while_the_old_one_serves() -> None:
    spec = graph(ONE)
    step = fixed({
        0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=1)])),
        10: decision(("s", [ReplicaGroup(variant="f", batch=1, cores=1, count=1)])),
    })
    result = simulate(spec, np.full(30, 5.0), step, profiles={"s": constant_profile({"m": 20.0, "f": 10.0})},
                      seed=5, settings=SimSettings(in_place=False, cold_start_s=4.0))
    frame = result.frame
    assert frame["dropped"].sum() == 0
    assert frame["cores"][11] == pytest.approx(2.0)  # both held during the replacement
    assert frame["cores"][20] == pytest.approx(1.0)
    assert np.all(frame["accuracy"][:13] == pytest.approx(70.0))
    assert np.all(frame["accuracy"][15:] == pytest.approx(50.0))


def _cores_profile() -> Profile:
    """m takes 40 ms and f 20 ms per request on one core, shorter on more (batch 1)."""
    rows = [f"s,{v},1,{c:g},{ms / c},{ms / c},{ms / c},{1000 * c / ms},100,test"
            for v, ms in (("m", 40.0), ("f", 20.0)) for c in (0.5, 1.0, 1.5, 2.0)]
    return Profile.parse(HEADER + "\n".join(rows) + "\n")


def test_shrink_before_grow_in_place_keeps_the_budget() -> None:
    """2 × 1 core → 1 × 1.5 (one replica resized up, the other drains) → 2 × 1 core of another variant (the
    1.5-core one switches down, a new one starts): done in the order given, each passes a 2-core budget for a
    while (2.5 cores); ordered (the drain and the switch down first), never."""
    spec = parse_spec({**graph([{**ONE[0], "cores": [0.5, 1, 1.5, 2]}]).model_dump(exclude={"source"}),
                       "budget_cores": 2})
    step = fixed({
        0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=2)])),
        10: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1.5, count=1)])),
        20: decision(("s", [ReplicaGroup(variant="f", batch=1, cores=1, count=2)])),
    })
    run = simulate(spec, np.full(40, 20.0), step, profiles={"s": _cores_profile()}, seed=5,
                   settings=SimSettings(cold_start_s=2.0, switch_delay_s=1.0))
    assert run.peak_cores <= 2.0 + 1e-9
    frame = run.frame
    assert frame["cores"][15] == pytest.approx(1.5) and frame["cores"][35] == pytest.approx(2.0)
    assert np.all(frame["accuracy"][25:] == pytest.approx(50.0))  # the new deployment is carried out in full


def test_make_before_break_only_when_both_fit() -> None:
    """Replacing a replica (no in-place change): on a budget for both the new one serves before the old one
    leaves (no request lost); on a budget for one, the old one leaves first and the budget holds."""
    def run(budget: float):
        spec = parse_spec({**graph(ONE).model_dump(exclude={"source"}), "budget_cores": budget})
        step = fixed({
            0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=1)])),
            10: decision(("s", [ReplicaGroup(variant="f", batch=1, cores=1, count=1)])),
        })
        return simulate(spec, np.full(30, 5.0), step, profiles={"s": constant_profile({"m": 20.0, "f": 10.0})},
                        seed=5, settings=SimSettings(in_place=False, cold_start_s=4.0))
    both, one = run(2.0), run(1.0)
    assert both.peak_cores == pytest.approx(2.0) and both.frame["dropped"].sum() == 0
    assert one.peak_cores == pytest.approx(1.0)
    assert one.frame["dropped"][10:15].sum() > 0  # break before make: no replica while the new one starts
    assert np.all(one.frame["accuracy"][16:] == pytest.approx(50.0))


def test_the_budget_holds_at_every_instant_on_a_seeded_run() -> None:
    spec = load_spec(DATA / "video.yaml", require_profiles=True)
    profiles = load_graph_profiles(spec)
    trace = synthetic_trace("fluctuating", 300, seed=11)
    arrivals = arrival_times(trace, seed=11)
    for policy in ("joint", "ipa", "infadapter"):
        r = simulate(spec, trace, policy, profiles=profiles, seed=11, arrivals=arrivals)
        assert r.peak_cores <= spec.budget_cores + 1e-9, (policy, r.peak_cores)


# ---------------------------------------------------------------------------------------------- determinism


def test_a_seed_gives_the_same_run_and_another_seed_another() -> None:
    spec = graph(ONE, slo_ms=200)
    step = fixed({0: decision(("s", [ReplicaGroup(variant="m", batch=1, cores=1, count=1)]))})
    prof = Profile.parse(HEADER + "s,m,1,1,40,90,45,22,100,test\ns,f,1,1,10,20,11,90,100,test\n")
    runs = [simulate(spec, np.full(200, 15.0), step, profiles={"s": prof}, seed=seed) for seed in (7, 7, 8)]
    for col in runs[0].frame:
        assert np.array_equal(runs[0].frame[col], runs[1].frame[col], equal_nan=col != "decision"), col
    assert not np.array_equal(runs[0].latency_ms, runs[2].latency_ms)
    assert math.isfinite(runs[0].latency_ms.mean())

# ------------------------------------------------------------------------------------ with the real policies

DATA = Path(__file__).parent / "data" / "sim"
GOLDEN = Path(__file__).parent / "golden" / "simulator_summary.json"


@pytest.fixture(scope="module")
def resnet() -> tuple[GraphSpec, dict[str, Profile]]:
    spec = load_spec(DATA / "resnet.yaml", require_profiles=True)
    return spec, load_graph_profiles(spec)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_oracle_is_never_worse_than_the_reactive_predictor(
    resnet: tuple[GraphSpec, dict[str, Profile]], seed: int
) -> None:
    """Same arrivals, same policy: knowing the next interval's peak can only help (IPA's upper bound)."""
    spec, profiles = resnet
    trace = synthetic_trace("bursty", 600, seed=seed).scaled(3)
    arrivals = arrival_times(trace, seed=seed)
    runs = {
        p: simulate(spec, trace, "joint", predictor=p, profiles=profiles, seed=seed, arrivals=arrivals)
        for p in ("reactive", "oracle")
    }
    s = {p: summarize(p, r.frame, spec, r.latency_ms) for p, r in runs.items()}
    assert s["oracle"].requests == s["reactive"].requests
    assert s["oracle"].objective >= s["reactive"].objective
    assert s["oracle"].slo_violation_pct <= s["reactive"].slo_violation_pct
    # the reactive predictor provisions for the burst only after it has begun
    assert runs["reactive"].frame["dropped"].sum() > runs["oracle"].frame["dropped"].sum()


def test_a_seeded_run_matches_its_golden_summary() -> None:
    """A seeded simulation of the two-stage pipeline under two policies against its golden summary.

    Every value has a stated reason. Those that follow from the inputs alone are derived here, independently of
    the simulator (requests, fa2-low's accuracy, the identities between the scores, the reactive predictor's
    coverage, fa2-low's first decisions from the profile). The rest are the simulator's outcomes, frozen in
    tests/golden/simulator_summary.json with the reason for each in tests/golden/simulator_summary.md; after a
    deliberate change of the simulator or the policies, regenerate with
    `IPA_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_simulator.py -k golden`, then review the diff and write the
    reasons again.
    """
    spec = load_spec(DATA / "video.yaml", require_profiles=True)
    profiles = load_graph_profiles(spec)
    trace = synthetic_trace("fluctuating", 300, seed=11)
    arrivals = arrival_times(trace, seed=11)
    got, runs = {}, {}
    for policy in ("joint", "fa2-low"):
        r = runs[policy] = simulate(spec, trace, policy, profiles=profiles, seed=11, arrivals=arrivals)
        got[policy] = {k: (round(v, 6) if isinstance(v, float) else v)
                       for k, v in asdict(summarize(policy, r.frame, spec, r.latency_ms)).items()}
        got[policy]["drops"] = r.drops
        got[policy]["decisions"] = [compact(t.decision) for t in r.ticks[:6]]

    # --- derived from the inputs, not frozen
    counts = np.bincount(arrivals.astype(np.int64), minlength=300)[:300]
    o = spec.objective
    for policy, g in got.items():
        frame = runs[policy].frame
        assert g["requests"] == len(arrivals) == counts.sum()  # every policy sees the same Poisson arrivals
        assert g["slo_attainment_pct"] == pytest.approx(100 - g["slo_violation_pct"], abs=1e-6)
        assert g["drop_pct"] == pytest.approx(100 * sum(g["drops"].values()) / g["requests"], abs=1e-6)
        assert g["slo_violation_pct"] >= g["drop_pct"]  # a drop is a violation; late answers add to it
        # the realised objective: late and dropped requests earn no accuracy
        batch = float(np.mean(frame["batch"]))
        assert g["objective"] == pytest.approx(
            o.alpha * g["effective_accuracy"] / 100 - o.beta * g["cores_mean"] - o.delta * batch, abs=1e-5)
        # the reactive predictor plans for the last interval's peak (the first interval for second 0's load):
        # coverage is the share of 10 s intervals whose peak is at most the one before; the same for both policies
        peaks = counts.reshape(30, 10).max(axis=1)
        planned = np.concatenate([[counts[0]], peaks[:-1]])
        assert g["coverage_pct"] == pytest.approx(100 * np.mean(peaks <= planned), abs=1e-6)
    fa2 = got["fa2-low"]
    # only YOLOv5n then ResNet-18 ever run: every answered request has the product of their accuracies
    assert fa2["accuracy"] == pytest.approx(45.7 * 69.76 / 100, abs=1e-6) and fa2["norm_accuracy"] == 0
    assert fa2["effective_accuracy"] == pytest.approx(fa2["accuracy"] * fa2["slo_attainment_pct"] / 100, abs=1e-5)
    # fa2-low's cores per variant: the smallest choice whose batch-1 p99 fits the stage's half of the 600 ms SLO;
    # batch and replicas: the cheapest (0.5 per core, 0.001 per batch row) whose stage latencies — service, batch
    # fill and queueing at the planned load (the reactive peak, 7 … 12 rps here) — add up within the SLO
    for tick, text in zip(runs["fa2-low"].ticks[:6], fa2["decisions"], strict=True):
        per_stage = []
        for st, variant in (("detector", "yolov5n"), ("classifier", "resnet18")):
            stage_spec = spec.stage(st)
            rows = profiles[st].rows(variant)
            cores = min(r.cores for r in rows if r.batch == 1 and r.cores in stage_spec.cores
                        and r.p99_ms <= spec.slo_ms / 2)
            options = []
            for r in rows:
                if r.cores != cores or r.batch not in stage_spec.batch_sizes:
                    continue
                for n in range(1, stage_spec.max_replicas + 1):
                    if n * r.throughput_rps < tick.predicted * (1 - 1e-9):
                        continue
                    latency = float(stage_p99_ms(tick.predicted, n, r.batch, r.throughput_rps, r.p50_ms, r.p99_ms,
                                                 stage_spec.max_batch_time_ms))
                    options.append((o.beta * n * cores + o.delta * r.batch, latency,
                                    f"{st}={variant}:b{r.batch}:c{cores:g}x{n}"))
            per_stage.append(options)
        fits = [(round(a[0] + b[0], 9), a[2] + ";" + b[2]) for a in per_stage[0] for b in per_stage[1]
                if a[1] + b[1] <= spec.slo_ms]
        cheapest = min(c for c, _ in fits)
        assert text in {t for c, t in fits if c == cheapest}, (tick.t, text, fits)  # one of the cheapest (ties)

    # --- the simulator's outcomes, frozen with their reasons (tests/golden/simulator_summary.md)
    if os.environ.get("IPA_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    reasons = GOLDEN.with_suffix(".md").read_text()
    for policy, summary in expected.items():
        for key, value in summary.items():
            assert f"`{policy}.{key}`" in reasons or f"`*.{key}`" in reasons, f"no reason for {policy}.{key}"
            if isinstance(value, float):
                assert got[policy][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (policy, key)
            else:
                assert got[policy][key] == value, (policy, key)


def test_sponge_decides_for_the_slo_minus_the_network_delay_requests_arrived_with(
    resnet: tuple[GraphSpec, dict[str, Profile]]
) -> None:
    """Sponge's cl_max: requests that spent 60 ms on the network leave the pipeline SLO − 60 ms."""
    spec, profiles = resnet
    trace = synthetic_trace("steady-low", 120, seed=0)
    arrivals = arrival_times(trace, seed=0)
    budgets = np.full(arrivals.shape, spec.slo_ms)
    budgets[::7] -= 60.0  # every seventh request arrives with 60 ms of its SLO spent
    run = simulate(spec, trace, "sponge", profiles=profiles, seed=0, arrivals=arrivals, budgets_ms=budgets)
    decided = [t.decision.slo_ms for t in run.ticks if t.t > 0]
    assert decided and all(math.isclose(s, spec.slo_ms - 60.0) for s in decided), decided


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "inference_graphs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_graph_is_simulated(path: Path) -> None:
    """Every shipped graph replays a light load (1 rps for a minute) with the joint policy on their measured
    profiles: every request is accounted for, and almost all are answered."""
    spec = load_spec(path, require_profiles=True)
    result = simulate(spec, np.full(60, 1.0), "joint", seed=0)
    frame = result.frame
    assert (frame["served"] + frame["dropped"] == frame["load"]).all()
    assert frame["served"].sum() >= 0.9 * frame["load"].sum(), result.drops
    assert {s.name for s in result.ticks[-1].decision.stages} == {s.name for s in spec.stages}
