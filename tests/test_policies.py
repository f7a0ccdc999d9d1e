"""Policies and guards: each policy keeps to its restriction, the guards apply to all, state is explicit."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError
from solver_fixtures import RESNET, YOLO, SyntheticProfile, make_spec, profiles_for, stage

from adapter.decision.model import Decision
from adapter.decision.policies import POLICIES, decide
from adapter.decision.policy_types import PolicyConfig, PolicyContext, PolicySettings, PolicyState
from adapter.decision.problem import ProblemError
from adapter.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def config(policy: str = "joint", spec_changes: dict | None = None, **settings: object) -> PolicyConfig:
    spec = make_spec(**(spec_changes or {}))
    return PolicyConfig.create(spec, profiles_for(spec), PolicySettings(policy=policy, **settings))


def ctx(load: float, **kw: object) -> PolicyContext:
    return PolicyContext(now=0.0, predicted_load_rps=load, **kw)  # type: ignore[arg-type]


def groups(d: Decision) -> dict[str, list[tuple[str, int, float, int]]]:
    return {s.name: [(g.variant, g.batch, g.cores, g.count) for g in s.replicas] for s in d.stages}


def test_registry_has_every_policy_of_the_issue() -> None:
    assert set(POLICIES) == {
        "joint",
        "ipa",
        "infadapter",
        "sponge",
        "fa2-low",
        "fa2-high",
        "rim",
        "model-switching",
        "vpa",
        "static",
    }


DEGRADED_AT_20_RPS = {"fa2-high", "sponge", "static", "vpa"}
"""Policies whose fixed choices cannot meet the SLO at 20 rps once queueing at the planned load counts: the most
accurate variants (fa2-high), replicas fixed at one (sponge), the spec's own configuration (static), and cores
from CPU use with the most accurate variant (vpa). Every other policy finds a feasible plan on 32 cores."""

DEGRADED_AT_5_RPS = DEGRADED_AT_20_RPS - {"sponge"}
"""At 5 rps on the video pipeline's 2 cores: sponge's one replica per stage (YOLOv5x and ResNet-152 at 1 core each)
carries it within 600 ms on the detector profile measured through the gRPC hop (16 rps at batch 1 on 2 cores); the
others' fixed choices still miss (static and vpa by 10 ms, fa2-high on the budget)."""


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_decides_every_stage(name: str) -> None:
    d, state = decide(ctx(20.0, cpu_usage={"detector": (0.4,), "classifier": (0.9,)}), config(name))
    assert d.policy == name
    assert [s.name for s in d.stages] == ["detector", "classifier"]
    assert d.status == ("degraded" if name in DEGRADED_AT_20_RPS else "optimal"), d.reason
    assert d.status != "degraded" or d.reason
    assert isinstance(state, PolicyState)
    assert d.cores <= 32.0 + 1e-9  # the budget guard holds for every policy


@pytest.mark.parametrize("load", [5.0, 20.0, 60.0])
def test_joint_is_at_least_as_good_as_the_policies_it_contains(load: float) -> None:
    best = decide(ctx(load), config("joint"))[0]
    assert best.status == "optimal"
    for name in ("ipa", "fa2-low", "fa2-high", "infadapter"):
        d = decide(ctx(load), config(name, max_variants=1))[0]
        # fa2-high's most accurate variants cannot carry 20 rps or more within the SLO: its decision is degraded
        # (and so not comparable); every other one is feasible and joint, which contains it, scores at least as well.
        expected = "degraded" if name == "fa2-high" and load >= 20.0 else "optimal"
        assert d.status == expected, (name, d.reason)
        if d.status == "optimal":
            assert best.objective.value >= d.objective.value - 1e-9, name


def test_ipa_fixes_cores_per_variant() -> None:
    cfg = config("ipa")
    for load in (5.0, 30.0, 80.0):
        d = decide(ctx(load), cfg)[0]
        for s in d.stages:
            spec_stage = cfg.spec.stage(s.name)
            share = cfg.spec.slo_ms / len(cfg.spec.stages)
            for g in s.replicas:
                fits = [
                    c
                    for c in spec_stage.cores
                    if cfg.catalog.option(spec_stage, g.variant, 1, c).p99_ms <= share
                ]
                assert g.cores == (fits[0] if fits else spec_stage.cores[-1])


def test_fa2_keeps_the_variant_and_scales_replicas() -> None:
    low = decide(ctx(40.0), config("fa2-low"))[0]
    high = decide(ctx(40.0), config("fa2-high"))[0]
    assert groups(low)["detector"][0][0] == "yolov5n" and groups(low)["classifier"][0][0] == "resnet18"
    assert groups(high)["detector"][0][0] == "yolov5m" and groups(high)["classifier"][0][0] == "resnet152"
    small = decide(ctx(5.0), config("fa2-high"))[0]
    assert high.stage("classifier").replica_count > small.stage("classifier").replica_count


def test_rim_switches_variants_on_fixed_resources() -> None:
    cfg = config("rim")
    quiet, busy = decide(ctx(2.0), cfg)[0], decide(ctx(60.0), cfg)[0]
    for d in (quiet, busy):
        for s in d.stages:
            fixed = cfg.spec.stage(s.name).static_config()
            assert [(g.cores, g.count, g.batch) for g in s.replicas] == [
                (fixed.cores, fixed.replicas, fixed.batch)
            ]
    acc = {v: a for v, (a, _) in {**RESNET, **YOLO}.items()}
    assert acc[groups(busy)["classifier"][0][0]] < acc[groups(quiet)["classifier"][0][0]]


def test_model_switching_runs_the_most_accurate_variant_that_sustains_the_load() -> None:
    cfg = config("model-switching")
    d = decide(ctx(30.0), cfg)[0]
    assert d.status == "optimal"
    for s in d.stages:
        spec_stage = cfg.spec.stage(s.name)
        fixed = spec_stage.static_config()
        chosen = spec_stage.variant(s.replicas[0].variant)
        for v in spec_stage.variants:
            if v.accuracy > chosen.accuracy:  # no more accurate variant carries the load within the SLO
                o = cfg.catalog.option(spec_stage, v.name, fixed.batch, fixed.cores)
                table = cfg.catalog.table(spec_stage)
                problem = cfg.catalog.problem(30.0)
                swapped = d.predicted_latency_ms - s.latency_ms + problem.latency_ms(table, o, fixed.replicas)
                assert fixed.replicas * o.throughput_rps < 30.0 or swapped > cfg.spec.slo_ms


def test_sponge_scales_cores_in_place_for_the_dynamic_slo() -> None:
    top = {
        "stages": [
            stage("detector", YOLO, static={"variant": "yolov5s", "replicas": 2}),
            stage("classifier", RESNET, static={"variant": "resnet50", "replicas": 2}),
        ]
    }
    cfg = config("sponge", spec_changes=top)
    calm = decide(ctx(20.0), cfg)[0]
    late = decide(ctx(20.0, network_delay_ms=480.0), cfg)[0]
    for d in (calm, late):
        assert d.status == "optimal"
        assert groups(d)["detector"][0][0] == "yolov5s" and groups(d)["classifier"][0][0] == "resnet50"
        assert all(s.replica_count == 2 for s in d.stages)
        assert all(math.isclose(g.cores / 0.25, round(g.cores / 0.25)) for s in d.stages for g in s.replicas)
    assert late.slo_ms == 600.0 - 480.0
    assert late.predicted_latency_ms <= 120.0 < calm.predicted_latency_ms
    assert late.cores > calm.cores  # less time left: more cores per replica


def test_infadapter_splits_the_load_over_variants() -> None:
    top = {
        "stages": [stage("classifier", RESNET, max_replicas=6)],
        "accuracy": "mean",
        "budget_cores": 6.0,
        "objective": {"alpha": 10.0, "beta": 0.05, "delta": 0.0},
    }
    cfg = config("infadapter", spec_changes=top)
    split = [decide(ctx(load), cfg)[0] for load in (10.0, 20.0, 30.0, 40.0, 50.0)]
    assert any(len(d.stages[0].replicas) == 2 for d in split)
    for d in split:
        assert math.isclose(sum(g.load_share for g in d.stages[0].replicas), 1.0)
        assert all(g.batch == 1 for g in d.stages[0].replicas)
        if d.status == "optimal":
            assert d.stages[0].capacity_rps >= d.load_rps * (1 - 1e-9)


def test_vpa_follows_the_recommender_over_the_intervals() -> None:
    """The detector sits at its limit (throttled): each interval its sample is recorded 20 % over the limit, the
    histogram's median passes the cores held and the updater raises them; the classifier uses a fifth of its
    cores: the short history's upper bound is still wide (VPA's confidence), so its request stays."""
    cfg = config("vpa", scale_down_intervals=0)
    spec = cfg.spec
    current, state = None, PolicyState()
    seen = []
    for k in range(6):
        held = {s.name: (current.stage(s.name).replicas[0].cores if current else s.static_config().cores)
                for s in spec.stages}
        usage = {"detector": (held["detector"],), "classifier": (0.2 * held["classifier"],)}
        current, state = decide(PolicyContext(now=60.0 * k, predicted_load_rps=10.0, cpu_usage=usage,
                                              current=current), cfg, state)
        seen.append(current.stage("detector").replicas[0].cores)
    start = spec.stage("detector").static_config().cores
    assert seen[-1] > start or start == spec.stage("detector").cores[-1]
    assert seen == sorted(seen)  # only ever up for a throttled stage
    assert current.stage("classifier").replicas[0].cores == spec.stage("classifier").static_config().cores
    assert state.cpu_histograms["detector"].samples == 6
    static = spec.stage("detector").static_config()
    detector = current.stage("detector").replicas[0]
    assert (detector.variant, detector.count) == (static.variant, static.replicas)


def test_static_is_the_spec() -> None:
    cfg = config("static")
    d = decide(ctx(1.0), cfg)[0]
    for s in d.stages:
        f = cfg.spec.stage(s.name).static_config()
        assert groups(d)[s.name] == [(f.variant, f.batch, f.cores, f.replicas)]


def test_scale_down_waits_for_the_lower_need_to_hold() -> None:
    cfg = config("joint", scale_down_intervals=3)
    high, state = decide(ctx(60.0), cfg)
    seen = []
    current = high
    for _ in range(4):
        d, state = decide(ctx(5.0, current=current), cfg, state)
        seen.append((d.cores, state.scale_down_streak))
        current = d
    assert [c for c, _ in seen[:2]] == [high.cores, high.cores]  # held twice
    assert [s for _, s in seen[:3]] == [1, 2, 0]
    assert seen[2][0] < high.cores  # the third interval of lower need scales down
    assert any("hysteresis" in n for n in decide(ctx(5.0, current=high), cfg)[0].notes)


def test_scale_up_is_immediate_and_resets_the_count() -> None:
    cfg = config("joint", scale_down_intervals=3)
    low, _ = decide(ctx(5.0), cfg)
    held, state = decide(ctx(60.0, current=low), cfg, PolicyState(scale_down_streak=2))
    assert held.cores > low.cores and state.scale_down_streak == 0


def test_a_held_decision_must_still_meet_the_constraints() -> None:
    cfg = config("joint", scale_down_intervals=5)
    fast, _ = decide(ctx(60.0), cfg)
    tighter = cfg.with_settings(slo_ms=100.0)  # the decision in force no longer fits: no holding
    d, state = decide(ctx(50.0, current=fast), tighter, PolicyState())
    assert state.scale_down_streak == 0
    assert d.predicted_latency_ms <= 100.0 or d.status == "degraded"


def test_budget_guard_trims_an_over_budget_configuration() -> None:
    top = {
        "budget_cores": 6.0,
        "stages": [
            stage("detector", YOLO, static={"variant": "yolov5m", "cores": 4.0, "replicas": 2}),
            stage("classifier", RESNET, static={"variant": "resnet50", "cores": 2.0}),
        ],
    }
    d = decide(ctx(5.0), config("static", spec_changes=top))[0]
    assert d.cores <= 6.0 + 1e-9
    assert any(n.startswith("budget:") for n in d.notes)


def test_budget_guard_takes_cpu_steps_when_no_stage_has_a_replica_to_spare() -> None:
    top = {
        "budget_cores": 5.0,
        "stages": [
            stage("detector", YOLO, static={"variant": "yolov5m", "cores": 4.0, "replicas": 1}),
            stage("classifier", RESNET, static={"variant": "resnet50", "cores": 2.0}),
        ],
    }
    d = decide(ctx(5.0), config("static", spec_changes=top))[0]
    # one replica per stage: the guard takes 0.25-core steps from the largest replica, 4 -> 3 cores
    assert [(g[0], g[2], g[3]) for g in groups(d)["detector"]] == [("yolov5m", 3.0, 1)]
    assert [(g[0], g[2], g[3]) for g in groups(d)["classifier"]] == [("resnet50", 2.0, 1)]
    assert "budget: 6 cores -> 5 (budget 5)" in d.notes


def test_cpu_step_rounding_and_bounds() -> None:
    top = {
        "stages": [
            stage("detector", YOLO, static={"variant": "yolov5n", "cores": 0.6, "replicas": 12}),
            stage("classifier", RESNET, static={"variant": "resnet18", "cores": 1.1}),
        ]
    }
    d = decide(ctx(5.0), config("static", spec_changes=top))[0]
    assert groups(d)["detector"] == [("yolov5n", 1, 0.75, 8)]  # 0.6 → 0.75 on the 0.25 grid; 12 → 8 replicas
    assert groups(d)["classifier"] == [("resnet18", 1, 1.25, 1)]
    assert any("replicas 12 -> 8" in n for n in d.notes)


def test_same_inputs_same_decision() -> None:
    cfg = config("joint")
    a = decide(ctx(33.0), cfg)[0]
    b = decide(ctx(33.0), cfg)[0]
    assert a.model_dump(exclude={"solve_time_ms"}) == b.model_dump(exclude={"solve_time_ms"})


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="unknown policy"):
        PolicySettings(policy="magic")
    with pytest.raises(ValidationError):
        PolicySettings(time_limit_s=0)
    cfg = config("joint").with_settings(alpha=2.0, slo_ms=250.0)
    assert cfg.weights.alpha == 2.0 and cfg.slo_ms == 250.0


def test_weights_and_slo_overrides_reach_the_decision() -> None:
    cheap = decide(ctx(30.0), config("joint", beta=1.0))[0]
    rich = decide(ctx(30.0), config("joint", beta=0.0001))[0]
    assert cheap.cores <= rich.cores
    assert cheap.objective.accuracy <= rich.objective.accuracy


def test_context_is_validated() -> None:
    with pytest.raises(ProblemError, match="predicted_load_rps"):
        ctx(-1.0)


def test_config_can_be_replaced_like_the_loop_does() -> None:
    cfg = config("joint")
    other = replace(cfg, settings=PolicySettings(policy="fa2-low"))
    assert decide(ctx(10.0), other)[0].policy == "fa2-low"


SHIPPED = sorted((ROOT / "inference_graphs").glob("*.yaml"))
LIGHT_RPS = {"audio-qa": 0.1, "audio-sent": 0.1, "sum-qa": 0.1, "nlp": 0.1}
"""A light load for the speech and text pipelines on their 2-core budget (each request costs 10-100x a vision one)."""


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_graph_is_loaded_and_solved(path: Path) -> None:
    """Every shipped graph has its profiles (measured here), and every policy decides for each."""
    spec = load_spec(path, require_profiles=True)
    cfg = PolicyConfig.create(spec)
    light = LIGHT_RPS.get(spec.name)
    for name in POLICIES:
        d, _ = decide(ctx(light or 5.0), cfg.with_settings(policy=name))
        assert len(d.stages) == len(spec.stages)
        if light is not None:  # a baseline's fixed choices (fa2-high's accurate variants, static) may not fit
            assert d.status == "optimal" or (d.status == "degraded" and d.reason), (name, d.reason)
            continue
        # 5 rps fits every vision graph, except the video pipeline for the policies whose fixed choices cannot
        # meet its 600 ms SLO with queueing counted (see DEGRADED_AT_5_RPS)
        fixed = spec.name == "video-monitoring" and name in DEGRADED_AT_5_RPS
        assert d.status == ("degraded" if fixed else "optimal"), (name, d.reason)
    for name in ("joint", "ipa", "fa2-low", "rim"):
        d = decide(ctx(light or 1.0), cfg.with_settings(policy=name))[0]
        assert d.status == "optimal", (name, d.reason)
        assert d.predicted_latency_ms <= spec.slo_ms


def test_an_equally_good_deployment_in_force_is_kept() -> None:
    """Two variants alike in accuracy and speed: whichever runs stays, with no reconfiguration."""
    spec = make_spec([stage("classifier", {"twin-a": (70.0, 20.0), "twin-b": (70.0, 20.0)})])
    cfg = PolicyConfig.create(spec, {"classifier": SyntheticProfile({"twin-a": 20.0, "twin-b": 20.0})},
                              PolicySettings(policy="joint"))
    fresh, _ = decide(ctx(40.0), cfg)
    chosen = fresh.stages[0].replicas[0].variant
    other = "twin-b" if chosen == "twin-a" else "twin-a"
    swapped = [g.model_copy(update={"variant": other}) for g in fresh.stages[0].replicas]
    current = fresh.model_copy(update={"stages": [fresh.stages[0].model_copy(update={"replicas": swapped})]})
    d, _ = decide(ctx(40.0, current=current), cfg)
    assert [g.variant for g in d.stages[0].replicas] == [other]
    assert any(n.startswith("tie:") for n in d.notes)
    # what another policy put in force is no alternative for this one (a switch of policy takes effect)
    d, _ = decide(ctx(40.0, current=current.model_copy(update={"policy": "static"})), cfg)
    assert [g.variant for g in d.stages[0].replicas] == [chosen]
    # a better deployment still replaces it: the accurate twin wins over a slower, less accurate one
    worse = make_spec([stage("classifier", {"twin-a": (70.0, 20.0), "twin-b": (60.0, 20.0)})])
    cfg = PolicyConfig.create(worse, {"classifier": SyntheticProfile({"twin-a": 20.0, "twin-b": 20.0})},
                              PolicySettings(policy="joint"))
    fresh, _ = decide(ctx(40.0), cfg)
    swapped = [g.model_copy(update={"variant": "twin-b"}) for g in fresh.stages[0].replicas]
    current = fresh.model_copy(update={"stages": [fresh.stages[0].model_copy(update={"replicas": swapped})]})
    d, _ = decide(ctx(40.0, current=current), cfg)
    assert [g.variant for g in d.stages[0].replicas] == ["twin-a"]
